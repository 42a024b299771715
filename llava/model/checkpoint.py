"""Reading checkpoint weights: sharded or single `.safetensors` / `.bin`, LLaVA or transformers key layout.

Weights are streamed shard by shard into a model built on the meta device, each tensor cast and moved to its
final device on the way, so a 7B checkpoint never needs two copies in memory.
"""

from __future__ import annotations

import json
import os
import re

import torch

_WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)

# transformers' LlavaForConditionalGeneration keys -> ours. Old layout (before ~4.52) then new layout.
_HF_KEY_RULES = (
    (r"^language_model\.model\.", "model."),
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^model\.language_model\.", "model."),
    (r"^multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^model\.multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^model\.multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    (r"^vision_tower\.", "model.vision_tower.vision_tower."),
    (r"^model\.vision_tower\.(?!vision_tower\.)", "model.vision_tower.vision_tower."),
)


_TOWER = "model.vision_tower.vision_tower."


def _tower_alias(name: str, params) -> str:
    """`name` with CLIPVisionModel's `vision_model.` level added or removed, when that is the model's name.

    Checkpoints name CLIP weights `vision_model.*` (openai's, llava-hf's, ours); transformers 5's CLIPVisionModel
    has no such level, transformers 4's has. Tiny checkpoints written before the prefix was kept lack it.
    """
    if not name.startswith(_TOWER):
        return name
    rest = name[len(_TOWER):]
    rest = rest[len("vision_model."):] if rest.startswith("vision_model.") else "vision_model." + rest
    return _TOWER + rest if _TOWER + rest in params else name


def weight_files(path: str) -> list[str]:
    """The checkpoint's weight files, in shard order; an error naming the folder if there are none."""
    for index_name, single in _WEIGHT_FILES:
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            with open(index) as f:
                shards = sorted(set(json.load(f)["weight_map"].values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
            if missing:
                raise FileNotFoundError(f"{index} lists shard(s) that are not in the folder: {', '.join(missing)}")
            return [os.path.join(path, s) for s in shards]
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    raise FileNotFoundError(
        f"no weights in {path!r}: expected model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    )


def read_shard(file: str, device="cpu") -> dict[str, torch.Tensor]:
    if file.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(file, device=str(device))
    return torch.load(file, map_location="cpu", weights_only=True, mmap=True)


def map_key(key: str, checkpoint_format: str) -> str | None:
    """Our parameter name for a checkpoint key, or None for keys we do not keep (RoPE tables)."""
    if key.endswith("rotary_emb.inv_freq"):
        return None
    if checkpoint_format == "hf":
        for pattern, repl in _HF_KEY_RULES:
            new, n = re.subn(pattern, repl, key)
            if n:
                return new
    return key


def load_weights(model: torch.nn.Module, files: list[str], checkpoint_format: str, device, dtype,
                 skip_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Assign checkpoint tensors to `model`'s parameters; returns the checkpoint keys that matched nothing."""
    params = dict(model.named_parameters())
    unexpected = []
    for file in files:
        shard = read_shard(file)
        state = {}
        for key, tensor in shard.items():
            name = map_key(key, checkpoint_format)
            if name is None or name.startswith(skip_prefixes):
                continue
            if name not in params:
                name = _tower_alias(name, params)
            if name not in params:
                unexpected.append(key)
                continue
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"{file}: {key} has shape {tuple(tensor.shape)} but the config gives {tuple(params[name].shape)}"
                )
            state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
        model.load_state_dict(state, strict=False, assign=True)
        del shard, state
    return unexpected


def meta_parameters(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.is_meta]
