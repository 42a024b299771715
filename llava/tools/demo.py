"""The embedded default job: answer one question about one generated image, with and without EntropyPrune.

    python -m llava.tools.demo --model-path checkpoints/llava-v1.5-tiny

With the tiny random-weight checkpoint the answers are gibberish; what the demo shows is the whole path
(tokenizer, CLIP tower, projector, splice, pruning at layer K, cached decoding) running end to end.
"""

from __future__ import annotations

import argparse
import time

import torch
from PIL import Image, ImageDraw

from entropyprune.config import PruneConfig
from llava.conversation import build_prompt
from llava.decoding import decode_answer
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model


def demo_image() -> Image.Image:
    img = Image.new("RGB", (480, 320), (235, 235, 230))
    draw = ImageDraw.Draw(img)
    draw.rectangle((40, 60, 200, 260), fill=(200, 30, 30))
    draw.ellipse((260, 80, 420, 240), fill=(30, 80, 200))
    return img


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-path", default="checkpoints/llava-v1.5-tiny")
    ap.add_argument("--query", default="What shapes are in the image?")
    # 166 kept after layer 2 is what "average 192 tokens" means on LLaVA-1.5-7B (32 layers); the tiny
    # checkpoint has 4 layers, where that average would be unreachable, so the demo gives N directly.
    ap.add_argument("--keep", type=int, default=166, help="visual tokens kept per image after layer 2")
    ap.add_argument("--max-new-tokens", type=int, default=16)
    args = ap.parse_args(argv)

    tokenizer, model, processor, _ = load_pretrained_model(args.model_path)
    prompt = build_prompt(args.query, "vicuna_v1")
    ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None].to(model.device)
    image = demo_image()
    pixels = process_images([image], processor, model.config).to(model.device, model.dtype)
    print(f"model: {args.model_path} ({model.config.num_hidden_layers} layers) on {model.device}")
    print(f"question: {args.query}")
    for label, cfg in (("vanilla", None), ("entropyprune", PruneConfig(layer=2, keep=args.keep))):
        model.set_prune(cfg)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=args.max_new_tokens)
        dt = time.perf_counter() - t0
        answer = decode_answer(tokenizer, out[0])
        note = ""
        trace = model.get_model().prune_trace
        if cfg is not None and trace and trace[0]:
            rec = trace[0][0][-1]
            note = f" [kept {rec.kept.numel()} of {rec.length} visual tokens after layer {rec.layer}]"
        print(f"{label:>13}: {answer!r} ({dt:.2f} s){note}")


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
