"""Answer one question about one or more images, as LLaVA's `llava.eval.run_llava`.

    python -m llava.eval.run_llava --model-path liuhaotian/llava-v1.5-7b --image-file view.jpg \
        --query "What is in the image?" [--prune-method entropy --prune-avg-tokens 192]
"""

from __future__ import annotations

import argparse

import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.conversation import build_prompt, get_conv_template
from llava.decoding import decode_answer
from llava.eval.flag_types import add_decoding_args
from llava.eval.prune_args import add_prune_args, prune_config_from_args
from llava.mm_utils import get_model_name_from_path, load_image, process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from llava.utils import run_cli


def infer_conv_mode(model_name: str) -> str:
    name = model_name.lower()
    if "llama-2" in name:
        return "llava_llama_2"
    if "mistral" in name:  # llava-v1.6-mistral-7b, as LLaVA's run_llava picks it
        return "mistral_instruct"
    if "v1.6-34b" in name:
        return "chatml_direct"
    if "mpt" in name:
        return "mpt"
    return "llava_v1"


def eval_model(args) -> str:
    prune = prune_config_from_args(args)  # flags are checked before any file is read or model loaded
    model_name = args.model_name or get_model_name_from_path(args.model_path)
    conv_mode = args.conv_mode or infer_conv_mode(model_name)
    get_conv_template(conv_mode)  # fail before loading the model on a bad --conv-mode
    image_files = [f for f in args.image_file.split(args.sep) if f]
    images = [load_image(f) for f in image_files]
    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, args.model_base, model_name, device=args.device, torch_dtype=args.dtype,
        attn_implementation=args.attn_implementation, vision_tower=args.vision_tower,
        prune=prune,
    )
    prompt = build_prompt(args.query, conv_mode, len(images), getattr(model.config, "mm_use_im_start_end", False))
    input_ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None].to(model.device)
    pixels = process_images(images, image_processor, model.config)
    if isinstance(pixels, list):  # anyres images with different crop counts
        pixels = [p.to(model.device, dtype=model.dtype) for p in pixels]
    else:
        pixels = pixels.to(model.device, dtype=model.dtype)
    with torch.inference_mode():
        out = model.generate(input_ids, images=pixels, image_sizes=[image.size for image in images],
                             do_sample=args.temperature > 0, temperature=args.temperature, top_p=args.top_p,
                             num_beams=args.num_beams, max_new_tokens=args.max_new_tokens)
    return decode_answer(tokenizer, out[0])


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Answer a question about an image with LLaVA-1.5.")
    ap.add_argument("--model-path", required=True)
    ap.add_argument("--model-base", default=None)
    ap.add_argument("--model-name", default=None)
    ap.add_argument("--image-file", required=True, help="image path or URL; several joined by --sep")
    ap.add_argument("--query", required=True)
    ap.add_argument("--conv-mode", default=None)
    ap.add_argument("--sep", default=",")
    add_decoding_args(ap, max_new_tokens=512)
    ap.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    ap.add_argument("--dtype", default=None, help="float16, bfloat16 or float32")
    ap.add_argument("--attn-implementation", default="sdpa", choices=["sdpa", "eager", "flash_attention_2"])
    ap.add_argument("--vision-tower", default=None, help="override mm_vision_tower (a local CLIP folder)")
    add_prune_args(ap)
    return ap


def main(argv=None) -> None:
    args = build_parser().parse_args(argv)
    print(eval_model(args))


if __name__ == "__main__":
    run_cli(main)
