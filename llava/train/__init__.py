"""LLaVA-1.5's training: projector pre-training (stage 1) and instruction tuning (stage 2); docs/Training.md."""
