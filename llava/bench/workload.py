"""The efficiency benchmark's workload: the model (a checkpoint or random weights of a named architecture)
and the prompts (benchmark questions, or random text of the paper's length plus one image)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import torch

from entropyprune import flops as F

ARCHS = ("llava-1.5-7b", "llava-1.5-7b-cpu", "tiny")
# What a random prompt's instruction reads as, for methods that encode it (one CLIP text segment, like most
# benchmark questions).
RANDOM_INSTRUCTION = "What is shown in this image?"
# CLIP ViT-L/14-336's text half (openai/clip-vit-large-patch14-336), for random-weight runs of CDPruner.
CLIP_L_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                   max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=768,
                   vocab_size=49408, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)
DEFAULT_CPU_LAYERS = 6
CLIP_L_336 = dict(
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=336,
    patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5, num_channels=3,
)


# ------------------------------------------------------------------------------------------------ the model


def device_and_dtype(device: str | None, dtype: str, cpu_default: torch.dtype = torch.bfloat16):
    """The benchmarks' ``--device`` (default: cuda when available) and ``--dtype`` ("auto": float16 on CUDA,
    ``cpu_default`` on the CPU), checked."""
    from llava.model.builder import parse_dtype

    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available; use --device cpu")
    if dtype != "auto":
        return dev, parse_dtype(dtype)
    return dev, torch.float16 if dev.type == "cuda" else cpu_default


def _arch_config(arch: str, layers: int | None, with_vision: bool):
    from llava.model.language_model.configuration_llava import LlavaConfig

    if arch == "tiny":
        from llava.tools.make_tiny_checkpoint import TINY_VISION, tiny_text_config

        text = tiny_text_config(640)
        vision = dict(TINY_VISION)
    else:
        text = {}
        vision = dict(CLIP_L_336)
    if arch == "llava-1.5-7b-cpu":
        text["num_hidden_layers"] = layers or DEFAULT_CPU_LAYERS
    elif layers is not None:
        text["num_hidden_layers"] = layers
    extra: dict[str, Any] = {}
    if with_vision:
        extra = dict(mm_vision_tower=f"random-{arch}-tower", mm_hidden_size=vision["hidden_size"],
                     mm_projector_type="mlp2x_gelu", vision_config=vision)
    return LlavaConfig(**text, **extra)


def random_model(arch: str, layers: int | None, with_vision: bool, device: torch.device, dtype: torch.dtype,
                  seed: int):
    """Random weights of a named architecture, built on the meta device and filled in place.

    Building on meta and converting the dtype there means a 7B model never exists in float32 on the host.
    Weights are N(0, 1/fan_in) so activations stay O(1) through the stack (the timings do not depend on
    the values, but overflowing half-precision values would make the entropy scores meaningless).
    """
    from llava.model.language_model.llava_llama import LlavaLlamaForCausalLM
    from llava.model.multimodal_encoder.builder import build_vision_tower

    config = _arch_config(arch, layers, with_vision)
    with torch.device("meta"):
        model = LlavaLlamaForCausalLM(config)
    model.to(dtype)
    model.to_empty(device=device)
    gen = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)  # RMSNorm / LayerNorm gains
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0.0, 1.0, generator=gen)
            else:
                p.normal_(0.0, p.shape[-1] ** -0.5, generator=gen)
    model.model.rotary_emb.reset_parameters(device)
    if with_vision:
        # Built off the meta device (transformers' own init), so CLIP's non-persistent buffers are real.
        torch.manual_seed(seed)
        tower = build_vision_tower(config).to(device=device, dtype=dtype)
        tower.is_loaded = True
        model.model.vision_tower = tower
    model.eval()
    model.requires_grad_(False)
    return model


def attach_random_clip_text(model, arch: str, seed: int) -> None:
    """Random CLIP text tower and visual projection of the architecture's CLIP (CLIP-L's, or the tiny one's),
    as ``load_clip_text`` would give them, so that CDPruner runs on random weights too. The tokenizer is the
    tiny checkpoint's byte-level CLIP tokenizer: every instruction is padded to CLIP's 77-token context, so
    the text tower's cost does not depend on how the words split."""
    import tempfile

    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPTokenizer

    from llava.model.multimodal_encoder.clip_encoder import CLIPImageProjection, CLIPTextEncoder
    from llava.tools.make_tiny_checkpoint import TINY_CLIP_TEXT, _write_clip_tokenizer

    tower = model.get_vision_tower()
    with tempfile.TemporaryDirectory() as folder:
        ids = _write_clip_tokenizer(folder)
        tokenizer = CLIPTokenizer.from_pretrained(folder)
    text_config = {**TINY_CLIP_TEXT, **ids, "pad_token_id": ids["eos_token_id"]} if arch == "tiny" else CLIP_L_TEXT
    torch.manual_seed(seed + 2)
    text = CLIPTextModelWithProjection(CLIPTextConfig(**text_config)).eval().requires_grad_(False)
    projection = torch.nn.Linear(tower.hidden_size, text_config["projection_dim"], bias=False)
    device = tower.device
    model.model.clip_text = (CLIPTextEncoder(tokenizer, text.to(device)),
                             CLIPImageProjection(projection).requires_grad_(False).to(device))
    model.model.clip_text_name = tower.vision_tower_name  # what set_prune would load: already here


def vision_shape(model) -> F.VisionShape | None:
    tower = model.get_vision_tower()
    if tower is None:
        return None
    c = tower.config
    kind = model.config.mm_projector_type
    m = re.match(r"^mlp(\d+)x_gelu$", kind)
    depth = int(m.group(1)) if m else 1
    return F.VisionShape(c.num_hidden_layers, c.hidden_size, c.intermediate_size, c.num_attention_heads,
                         c.image_size, c.patch_size, getattr(c, "num_channels", 3), depth)


def lm_shape(config) -> F.LMShape:
    return F.LMShape(config.num_hidden_layers, config.hidden_size, config.intermediate_size,
                     config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.vocab_size)


# ---------------------------------------------------------------------------------------------- the prompts


@dataclass
class Prompt:
    """One benchmark input: ids with one IMAGE_TOKEN_INDEX marker and either pixels or stand-in features."""

    input_ids: torch.Tensor  # [1, T] on the host
    images: torch.Tensor | None = None  # [1, 3, H, W] on the device, for a model with a vision tower
    features: torch.Tensor | None = None  # [V, D] on the device: projected image features, without a tower
    source: str = "random"
    text: str | None = None  # the instruction, for the vision-stage methods that read it (CDPruner)


def random_prompts(model, n_text: int, count: int, device, dtype, seed: int, num_visual: int = 576) -> list[Prompt]:
    """Random text around one image marker; without a tower, `num_visual` random projected features stand in
    for the image (576: LLaVA-1.5's view; LLaVA-1.6's count for an image shape, see --image-size)."""
    from llava.constants import IMAGE_TOKEN_INDEX

    g = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    tower = model.get_vision_tower()
    prompts = []
    for _ in range(count):
        ids = torch.randint(3, vocab, (n_text,), generator=g)
        ids[0] = model.config.bos_token_id
        cut = min(35, n_text)  # LLaVA-1.5's system prompt is 35 tokens long
        ids = torch.cat([ids[:cut], torch.tensor([IMAGE_TOKEN_INDEX]), ids[cut:]])[None]
        if tower is not None:
            side = tower.config.image_size
            pixels = torch.randn(1, 3, side, side, generator=g).to(device=device, dtype=dtype)
            prompts.append(Prompt(ids, images=pixels, text=RANDOM_INSTRUCTION))
        else:
            feats = torch.randn(num_visual, model.config.hidden_size, generator=g).to(device=device, dtype=dtype)
            prompts.append(Prompt(ids, features=feats))
    return prompts


def question_prompts(path: str, count: int, tokenizer, image_processor, model, image_folder: str | None,
                      conv_mode: str, device, dtype, seed: int) -> list[Prompt]:
    """The first ``count`` records of a LLaVA question file (``text`` and ``image`` keys, e.g. llava_mme.jsonl)."""
    import numpy as np
    from PIL import Image

    from llava.conversation import build_prompt, get_conv_template
    from llava.eval import read_jsonl
    from llava.eval.driver import instruction_text
    from llava.mm_utils import process_images, tokenizer_image_token

    get_conv_template(conv_mode)  # a bad --conv-mode fails before any work
    records = [rec for _line, rec in read_jsonl(path, "question file", required=("text",))][:count]
    if not records:
        raise ValueError(f"{path}: no questions")
    rng = np.random.default_rng(seed)
    prompts = []
    for rec in records:
        prompt = build_prompt(rec["text"], conv_mode, 1, getattr(model.config, "mm_use_im_start_end", False))
        ids = tokenizer_image_token(prompt, tokenizer, return_tensors="pt")[None]
        image_path = os.path.join(image_folder, rec["image"]) if image_folder and rec.get("image") else None
        if image_path and os.path.isfile(image_path):
            image, source = Image.open(image_path).convert("RGB"), image_path
        else:
            image = Image.fromarray(rng.integers(0, 256, size=(336, 336, 3), dtype=np.uint8))
            source = f"{rec.get('question_id', '?')} (random image)"
        pixels = process_images([image], image_processor, model.config).to(device=device, dtype=dtype)
        prompts.append(Prompt(ids, images=pixels, source=source, text=instruction_text(rec["text"])))
    return prompts


