"""CPU time of one prefill (vision tower + language model to the first token) of the tiny checkpoint.

    python -m llava.bench.prefill_tiny [--repeats 20]

Builds the tiny checkpoint in a temporary folder when `--model-path` is not given. Medians after warm-up,
vanilla and EntropyPrune (keep 166 after layer 2) interleaved.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from entropyprune.config import PruneConfig


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default=None)
    ap.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args(argv)

    from llava.conversation import build_prompt
    from llava.mm_utils import process_images, tokenizer_image_token
    from llava.model.builder import load_pretrained_model
    from llava.tools.demo import demo_image
    from llava.tools.make_tiny_checkpoint import build

    if args.model_path:
        from llava.bench.efficiency import refuse_anyres

        refuse_anyres(args.model_path, "python -m llava.bench.prefill_tiny --model-path")
    with tempfile.TemporaryDirectory() as tmp:
        path = args.model_path or build(f"{tmp}/llava-v1.5-tiny", "llava", seed=0)
        tok, model, proc, _ = load_pretrained_model(path, device="cpu")
        ids = tokenizer_image_token(build_prompt("What shapes are in the image?", "vicuna_v1"), tok,
                                    return_tensors="pt")[None]
        pixels = process_images([demo_image()], proc, model.config)
        configs = {"vanilla": None, "entropy keep 166": PruneConfig(layer=2, keep=166)}
        times: dict[str, list[float]] = {k: [] for k in configs}
        with torch.inference_mode():
            for _ in range(2):  # warm-up
                for cfg in configs.values():
                    model.set_prune(cfg)
                    model.generate(ids, images=pixels, max_new_tokens=1)
            for _ in range(args.repeats):
                for name, cfg in configs.items():
                    model.set_prune(cfg)
                    t0 = time.perf_counter()
                    model.generate(ids, images=pixels, max_new_tokens=1)
                    times[name].append(time.perf_counter() - t0)
    print(f"tiny checkpoint, {ids.shape[1] - 1 + 576} tokens, cpu, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}")
    for name, ts in times.items():
        print(f"{name:<18} median prefill {statistics.median(ts) * 1e3:7.2f} ms over {len(ts)} runs")


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
