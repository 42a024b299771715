"""Reading checkpoint weights: sharded or single `.safetensors` / `.bin`, LLaVA or transformers key layout.

Weights are streamed shard by shard into a model built on the meta device, each tensor cast and moved to its
final device on the way, so a 7B checkpoint never needs two copies in memory.

Loading is all or nothing: every parameter must come from the checkpoint (for LLaVA-format checkpoints the
CLIP tower comes from its own checkpoint, `mm_vision_tower`, as in LLaVA) and every checkpoint tensor must
find its parameter, or :func:`check_complete` raises an error that lists what is missing and what was unused.
The only tensors dropped on purpose are the buffers in ``IGNORED_KEYS``, which the model recomputes.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

import torch

_WEIGHT_FILES = (
    ("model.safetensors.index.json", "model.safetensors"),
    ("pytorch_model.bin.index.json", "pytorch_model.bin"),
)

TOWER = "model.vision_tower.vision_tower."

# Checkpoint tensors that are buffers, not weights: the model recomputes them, so they are dropped by name.
IGNORED_KEYS = (
    re.compile(r"(^|\.)rotary_emb\.inv_freq$"),  # Llama's RoPE table (older transformers saved it)
    re.compile(r"vision_tower\.(.*\.)?embeddings\.position_ids$"),  # CLIP's position ids (idem)
)

# Every layout transformers' LlavaForConditionalGeneration reads (its `_checkpoint_conversion_mapping` and
# the `llava` / `LlavaModel` rules of transformers/conversion_mapping.py) -> our names; the first match wins.
# llava-hf's hub checkpoints (transformers < 4.52): language_model.model.*, language_model.lm_head.*,
# vision_tower.*, multi_modal_projector.*; save_pretrained since 4.52: model.language_model.*, lm_head.*,
# model.vision_tower.*, model.multi_modal_projector.*; a saved LlavaModel: language_model.* (no lm_head).
_HF_KEY_RULES = tuple((re.compile(p), r) for p, r in (
    (r"^language_model\.lm_head\.", "lm_head."),
    (r"^lm_head\.", "lm_head."),
    (r"^model\.language_model\.model\.", "model."),
    (r"^model\.language_model\.", "model."),
    (r"^language_model\.model\.", "model."),
    (r"^language_model\.", "model."),
    # LLaVA-1.6's learnt row separator (LlavaNext: image_newline, model.image_newline since 4.52).
    (r"^(model\.)?image_newline$", "model.image_newline"),
    (r"^(model\.)?multi_modal_projector\.linear_1\.", "model.mm_projector.0."),
    (r"^(model\.)?multi_modal_projector\.linear_2\.", "model.mm_projector.2."),
    # CLIP with or without CLIPVisionModel's `vision_model.` level: transformers reads both.
    (r"^(model\.)?vision_tower\.(vision_model\.)?", TOWER),
))
_LLAVA_TOWER_RULE = (re.compile(r"^model\.vision_tower\.vision_tower\.(vision_model\.)?"), TOWER)


@dataclass
class LoadReport:
    """What :func:`load_weights` did with the checkpoint's tensors."""

    loaded: dict[str, str] = field(default_factory=dict)  # our parameter name -> the checkpoint key it came from
    unused: list[str] = field(default_factory=list)  # checkpoint keys that matched no parameter
    ignored: list[str] = field(default_factory=list)  # IGNORED_KEYS: buffers, dropped on purpose
    tower_skipped: list[str] = field(default_factory=list)  # LLaVA format: tower keys, the tower comes from its own


def weight_files(path: str) -> list[str]:
    """The checkpoint's weight files, in shard order; an error naming the folder if there are none."""
    for index_name, single in _WEIGHT_FILES:
        index = os.path.join(path, index_name)
        if os.path.isfile(index):
            data = read_json(index)
            if not isinstance(data.get("weight_map"), dict) or not data["weight_map"]:
                raise ValueError(f"{index} has no 'weight_map' naming the shards")
            shards = sorted(set(data["weight_map"].values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(path, s))]
            if missing:
                raise FileNotFoundError(f"{index} lists shard(s) that are not in the folder: {', '.join(missing)}")
            return [os.path.join(path, s) for s in shards]
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    raise FileNotFoundError(
        f"no weights in {path!r}: expected model.safetensors(.index.json) or pytorch_model.bin(.index.json)"
    )


def read_json(file: str) -> dict:
    """A JSON object from `file`; a ValueError naming the file when it is not one."""
    try:
        with open(file, encoding="utf-8") as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{file} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{file} must hold a JSON object, not {type(data).__name__}")
    return data


def read_shard(file: str, device="cpu") -> dict[str, torch.Tensor]:
    """One weight file's tensors; a ValueError naming the file when it is truncated or not a weight file."""
    try:
        if file.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(file, device=str(device))
        return torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except OSError:
        raise
    except Exception as err:  # SafetensorError, UnpicklingError, RuntimeError ("PytorchStreamReader failed")...
        size = os.path.getsize(file) if os.path.exists(file) else 0
        raise ValueError(f"cannot read weights file {file} ({size} bytes; truncated or corrupt?): "
                         f"{type(err).__name__}: {err}") from err


def map_key(key: str, checkpoint_format: str) -> str:
    """Our parameter name for a checkpoint key; the CLIP tower's names without the `vision_model.` level."""
    rules = _HF_KEY_RULES if checkpoint_format == "hf" else (_LLAVA_TOWER_RULE,)
    for pattern, repl in rules:
        new, n = pattern.subn(repl, key, count=1)
        if n:
            return new
    return key


def is_ignored(key: str) -> bool:
    return any(p.search(key) for p in IGNORED_KEYS)


def load_weights(model: torch.nn.Module, files: list[str], checkpoint_format: str, device, dtype,
                 tower_from_checkpoint: bool = True) -> LoadReport:
    """Assign checkpoint tensors to `model`'s parameters (built on the meta device); see :class:`LoadReport`.

    tower_from_checkpoint=False (LLaVA format): the CLIP tower's keys are skipped, as LLaVA does; the tower
    is loaded from `mm_vision_tower`. Raises on two keys giving one parameter and on a shape that is not the
    config's.
    """
    params = dict(model.named_parameters())
    # transformers 4's CLIPVisionModel has the `vision_model.` level, transformers 5's has not.
    tower_level = "vision_model." if any(n.startswith(TOWER + "vision_model.") for n in params) else ""
    report = LoadReport()
    for file in files:
        shard = read_shard(file)
        state = {}
        for key, tensor in shard.items():
            if is_ignored(key):
                report.ignored.append(key)
                continue
            name = map_key(key, checkpoint_format)
            if name.startswith(TOWER):
                if not tower_from_checkpoint:
                    report.tower_skipped.append(key)
                    continue
                name = TOWER + tower_level + name[len(TOWER):]
            if name not in params:
                report.unused.append(key)
                continue
            if name in report.loaded:
                raise ValueError(f"checkpoint keys {report.loaded[name]!r} and {key!r} both give parameter {name}")
            if tuple(tensor.shape) != tuple(params[name].shape):
                raise ValueError(
                    f"{file}: {key} has shape {tuple(tensor.shape)} but the config gives {tuple(params[name].shape)}"
                )
            if params[name].is_floating_point() and not tensor.is_floating_point():
                raise ValueError(f"{file}: {key} holds {tensor.dtype} values but {name} is a floating-point "
                                 "weight; the file is not a checkpoint of this model (or was converted wrongly)")
            state[name] = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else tensor.dtype)
            report.loaded[name] = key
        model.load_state_dict(state, strict=False, assign=True)
        del shard, state
    return report


def _few(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def check_complete(model: torch.nn.Module, report: LoadReport, path: str, expected: list[str]) -> None:
    """Raise unless every name in `expected` was loaded and every checkpoint tensor found its parameter."""
    missing = [n for n in expected if n not in report.loaded]
    if not missing and not report.unused:
        return
    parts = []
    if missing:
        parts.append(f"{len(missing)} parameter(s) the config needs are not in the weights: {_few(missing)}")
    if report.unused:
        parts.append(f"{len(report.unused)} checkpoint tensor(s) match no parameter: {_few(report.unused)}")
    raise ValueError(
        f"checkpoint {path} does not fit its config.json ({len(report.loaded)} tensor(s) matched); "
        + "; ".join(parts)
        + ". Is it a LLaVA-1.5 or LLaVA-1.6 checkpoint in LLaVA's or transformers' layout, with its own config.json?"
    )


def meta_parameters(model: torch.nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if p.is_meta]
