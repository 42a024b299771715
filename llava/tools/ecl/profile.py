"""Profiling sampled prompts: entropy curves and spectra per layer, then per-dataset and pooled summaries."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from entropyprune.ecl import detect_collapse
from entropyprune.score import matrix_spectrum
from llava.tools.ecl.capture import entropy_profile, layer_states
from llava.tools.ecl.samples import Sample


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    t = torch.tensor(rows, dtype=torch.float64)
    # Sample standard deviation (n - 1); zero for a single sample rather than NaN.
    std = t.std(dim=0, correction=1) if t.shape[0] > 1 else torch.zeros(t.shape[1], dtype=torch.float64)
    return t.mean(dim=0).tolist(), std.tolist()


def profile_samples(model, tokenizer, image_processor, datasets_samples: dict[str, list[Sample]],
                    states: Sequence[str], alpha: float, spectra_layers: Sequence[int], conv_mode: str,
                    progress: bool = True) -> dict[str, Any]:
    """Run each sample once and collect its entropy curves and the spectra of ``spectra_layers``."""
    from tqdm import tqdm

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.conversation import build_prompt
    from llava.mm_utils import process_images, tokenizer_image_token

    total = sum(len(s) for s in datasets_samples.values())
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name in datasets_samples}
    spectra_sum: dict[str, dict[int, torch.Tensor]] = {s: {} for s in states}
    n_spectra = 0
    with tqdm(total=total, desc="ECL", unit="sample", disable=not progress) as bar, torch.inference_mode():
        for name, samples in datasets_samples.items():
            bar.set_postfix_str(name)
            for sample in samples:
                prompt = build_prompt(sample.text, conv_mode, 1, getattr(model.config, "mm_use_im_start_end", False))
                ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
                image = sample.load_image()
                pixels = process_images([image], image_processor, model.config)
                per_state, (_start, length) = layer_states(
                    model, ids.to(model.device), pixels.to(model.device, dtype=model.dtype), states,
                    image_sizes=[image.size])
                record: dict[str, Any] = {"question_id": sample.question_id, "visual_tokens": length}
                for state in states:
                    record[state] = entropy_profile(per_state[state], alpha)
                    for layer in spectra_layers:
                        spec = matrix_spectrum(per_state[state][layer]).cpu()
                        acc = spectra_sum[state].get(layer)
                        if acc is not None and acc.shape[0] != spec.shape[0]:
                            # Images with fewer tokens give shorter spectra; the missing eigenvalues are 0.
                            size = max(acc.shape[0], spec.shape[0])
                            acc = torch.nn.functional.pad(acc, (0, size - acc.shape[0]))
                            spec = torch.nn.functional.pad(spec, (0, size - spec.shape[0]))
                        spectra_sum[state][layer] = spec if acc is None else acc + spec
                n_spectra += 1
                curves[name].append(record)
                bar.update(1)
    spectra = {s: {str(k): (v / n_spectra).tolist() for k, v in by_layer.items()}
               for s, by_layer in spectra_sum.items()}
    return {"curves": curves, "spectra": spectra}


def summarize(curves: dict[str, list[dict[str, Any]]], states: Sequence[str], min_relative_drop: float,
              min_clarity: float) -> dict[str, Any]:
    """Per dataset and state: mean, std and detection; the pooled decision; per-sample agreement."""

    def detect(curve):
        return detect_collapse(curve, min_relative_drop, min_clarity)

    datasets: dict[str, Any] = {}
    for name, records in curves.items():
        if not records:
            continue
        entry: dict[str, Any] = {"samples": len(records)}
        for state in states:
            mean, std = _mean_std([r[state] for r in records])
            entry[state] = {"mean": mean, "std": std, "collapse": detect(mean).to_dict()}
        datasets[name] = entry
    if not datasets:
        raise ValueError("no sample had an image; nothing to profile")
    collapse: dict[str, Any] = {}
    for state in states:
        # Mean of the dataset means: every dataset counts the same however many samples it gave.
        pooled = torch.tensor([d[state]["mean"] for d in datasets.values()], dtype=torch.float64).mean(0).tolist()
        result = detect(pooled)
        per_sample = Counter(detect(r[state]).layer for recs in curves.values() for r in recs)
        sample_order = sorted(per_sample, key=lambda k: (k is None, k or 0))
        per_dataset = {n: d[state]["collapse"]["layer"] for n, d in datasets.items()}
        collapse[state] = {
            "pooled_mean": pooled,
            **result.to_dict(),
            "summary": result.describe(),
            # How many datasets' own mean curves give the same K (null when there is no K to agree on).
            "datasets_agreeing": (None if result.layer is None
                                  else sum(k == result.layer for k in per_dataset.values())),
            "per_dataset": per_dataset,
            # JSON keys are strings; "none" counts the samples whose own curve has no collapse.
            "per_sample": {("none" if k is None else str(k)): per_sample[k] for k in sample_order},
        }
    return {"datasets": datasets, "collapse": collapse}
