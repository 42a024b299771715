"""LlavaConfig: the fields the model reads, from either checkpoint format.

Two layouts of config.json reach us: LLaVA's own (`model_type` "llava" or "llava_llama", Llama fields at the
top level plus `mm_*` keys) and transformers' `LlavaForConditionalGeneration` (`text_config` and
`vision_config`). Both become this one dataclass; unknown keys are kept in `extra` and written back.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

_VISION_DEFAULTS = dict(  # CLIP ViT-L/14-336, the LLaVA-1.5 tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)


# config.json's model_type for LLaVA with a Llama language model: LLaVA's own ("llava", "llava_llama") and
# transformers' ("llava", with text_config.model_type "llama"). Others (llava_mistral, llava_mpt, ...) differ.
LLAMA_LLAVA_TYPES = ("llava", "llava_llama")


_FIELD_TYPES = {  # annotation -> (accepted types, in words) for the fields read from config.json
    "int": (int, "an integer"), "int | None": (int, "an integer"),
    "float": ((int, float), "a number"), "bool": (bool, "true or false"),
    "str": (str, "a string"), "str | None": (str, "a string"),
}


@dataclass
class LlavaConfig:
    # the Llama language model
    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 4096
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    hidden_act: str = "silu"
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    pad_token_id: int | None = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    # the vision side (LLaVA's names)
    mm_vision_tower: str | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    mm_use_im_start_end: bool = False
    mm_use_im_patch_token: bool = False
    tokenizer_padding_side: str = "right"
    tokenizer_model_max_length: int | None = None
    max_sequence_length: int | None = None
    # set for transformers-format checkpoints: the tower is part of the checkpoint, built from this config
    vision_config: dict | None = None
    image_token_index: int | None = None
    # runtime choices, not read from config.json
    attn_implementation: str = "sdpa"
    checkpoint_format: str = "llava"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # a wrong type fails here, by name, not deep in the model
            want = _FIELD_TYPES.get(str(f.type))
            value = getattr(self, f.name)
            if want is None or value is None:  # null: what the model does with it decides
                continue
            if not isinstance(value, want[0]) or (want[0] is not bool and isinstance(value, bool)):
                raise ValueError(f"{f.name!r} must be {want[1]}, got {value!r}")
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads})"
            )

    @classmethod
    def from_dict(cls, raw: dict) -> LlavaConfig:
        raw = dict(raw)
        names = {f.name for f in dataclasses.fields(cls)} - {"extra", "checkpoint_format", "attn_implementation"}
        if "text_config" in raw:
            return cls._from_hf_dict(raw, names)
        known = {k: raw.pop(k) for k in list(raw) if k in names}
        if isinstance(known.get("eos_token_id"), list):
            known["eos_token_id"] = known["eos_token_id"][0]
        return cls(**known, checkpoint_format="llava", extra=raw)

    @classmethod
    def _from_hf_dict(cls, raw: dict, names: set[str]) -> LlavaConfig:
        text = dict(raw.pop("text_config") or {})
        vision = {**_VISION_DEFAULTS, **(raw.pop("vision_config") or {})}
        known = {k: v for k, v in text.items() if k in names and k != "vision_config"}
        strategy = raw.get("vision_feature_select_strategy", "default")
        known.update(
            mm_vision_tower=raw.get("_name_or_path") or "vision_tower",
            mm_hidden_size=vision["hidden_size"],
            mm_projector_type="mlp2x_gelu",
            mm_vision_select_layer=raw.get("vision_feature_layer", -2),
            mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
            image_aspect_ratio="pad",
            vision_config=vision,
            image_token_index=raw.get("image_token_index"),
        )
        if raw.get("projector_hidden_act", "gelu") != "gelu":
            raise ValueError(f"projector_hidden_act {raw['projector_hidden_act']!r} is not supported (expected 'gelu')")
        if raw.get("pad_token_id") is not None:
            known["pad_token_id"] = raw["pad_token_id"]
        return cls(**known, checkpoint_format="hf", extra={"hf_config": raw})

    @classmethod
    def from_pretrained(cls, path: str) -> LlavaConfig:
        """config.json of the folder `path`; every error with it names the file."""
        cfg_path = os.path.join(path, "config.json")
        if not os.path.isfile(cfg_path):
            raise FileNotFoundError(f"no config.json in model folder {path!r}")
        from llava.model.checkpoint import read_json

        raw = read_json(cfg_path)
        if str(raw.get("model_type", "")).startswith(("llava_next", "llava_onevision")) or str(
                raw.get("image_aspect_ratio", "")).startswith("anyres"):
            raise NotImplementedError(
                f"{cfg_path} describes a LLaVA-1.6 (LLaVA-NeXT, anyres) model, which is not supported; "
                "use a LLaVA-1.5 checkpoint"
            )
        model_type = raw.get("model_type")
        text = raw.get("text_config")
        text_type = text.get("model_type") if isinstance(text, dict) else None
        if model_type not in (None, *LLAMA_LLAVA_TYPES) or text_type not in (None, "llama"):
            what = f"model_type {model_type!r}" + (f" with a {text_type!r} language model" if text_type else "")
            raise NotImplementedError(
                f"{cfg_path}: {what} is not supported; this runtime runs LLaVA-1.5 checkpoints with a Llama "
                f"language model (model_type {' or '.join(LLAMA_LLAVA_TYPES)})"
            )
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as err:
            raise ValueError(f"{cfg_path}: {err}") from err

    def to_dict(self) -> dict:
        """config.json in LLaVA's layout (what `make_tiny_checkpoint --format llava` writes)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "checkpoint_format", "attn_implementation", "vision_config",
                                 "image_token_index")}
        out.update(self.extra)
        out.setdefault("architectures", ["LlavaLlamaForCausalLM"])
        out.setdefault("model_type", "llava_llama")
        return out
