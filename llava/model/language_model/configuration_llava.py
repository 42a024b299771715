"""LlavaConfig: the fields the model reads, from either checkpoint format.

Two layouts of config.json reach us: LLaVA's own (`model_type` "llava", "llava_llama" or "llava_mistral",
language-model fields at the top level plus `mm_*` keys) and transformers' `LlavaForConditionalGeneration` /
`LlavaNextForConditionalGeneration` (`text_config` and `vision_config`). Both become this one dataclass;
unknown keys are kept in `extra` and written back.

LLaVA-1.6 (LLaVA-NeXT) adds `image_aspect_ratio` "anyres", `image_grid_pinpoints` and `mm_patch_merge_type`
"spatial_unpad"; transformers' llava_next format implies all three. The pinpoints are stored here in LLaVA's
order, (width, height); transformers reads its list as (height, width), so a llava_next config's list is
swapped on the way in (the published lists are symmetric, so either reading selects the same grids).

A Mistral language model (LLaVA's "llava_mistral", transformers' text_config "mistral") is a Llama decoder
with a sliding attention window; see `sliding_window`.
"""

from __future__ import annotations

import ast
import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any

_VISION_DEFAULTS = dict(  # CLIP ViT-L/14-336, the LLaVA-1.5 tower
    hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
    image_size=336, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5,
)


# config.json's model_type for LLaVA with a Llama (or Mistral) language model: LLaVA's own ("llava",
# "llava_llama", "llava_mistral") and transformers' ("llava", "llava_next", with text_config.model_type "llama"
# or "mistral"). Others (llava_mpt, llava_onevision, ...) differ.
LLAMA_LLAVA_TYPES = ("llava", "llava_llama", "llava_mistral", "llava_next")
TEXT_MODEL_TYPES = ("llama", "mistral")
# MistralConfig's default window (transformers 4.37, LLaVA's pin, and 5.x): what a config without the key gets.
MISTRAL_DEFAULT_SLIDING_WINDOW = 4096
ASPECT_RATIOS = ("pad", "square", "anyres")
PATCH_MERGE_TYPES = ("flat", "spatial", "spatial_unpad")


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
    # Mistral's attention window; None: full attention (Llama). A window W is the same as full attention for
    # sequences of at most W tokens, so such a model runs sequences up to W tokens and refuses longer ones.
    sliding_window: int | None = None
    # the vision side (LLaVA's names)
    mm_vision_tower: str | None = None
    mm_hidden_size: int | None = None
    mm_projector_type: str = "linear"
    mm_vision_select_layer: int = -2
    mm_vision_select_feature: str = "patch"
    image_aspect_ratio: str = "pad"
    # LLaVA-1.6 (anyres): candidate resolutions as [width, height] pairs (LLaVA's order) and the merge of crops
    image_grid_pinpoints: list | None = None
    mm_patch_merge_type: str = "flat"
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
        if self.image_aspect_ratio not in ASPECT_RATIOS:
            raise ValueError(f"image_aspect_ratio {self.image_aspect_ratio!r} is not supported; "
                             f"expected one of {', '.join(ASPECT_RATIOS)}")
        if self.mm_patch_merge_type not in PATCH_MERGE_TYPES:
            raise ValueError(f"mm_patch_merge_type {self.mm_patch_merge_type!r} is not supported; "
                             f"expected one of {', '.join(PATCH_MERGE_TYPES)}")
        if isinstance(self.image_grid_pinpoints, str):  # LLaVA accepts the list written as a string
            try:
                self.image_grid_pinpoints = ast.literal_eval(self.image_grid_pinpoints)
            except (ValueError, SyntaxError) as err:
                raise ValueError(f"image_grid_pinpoints {self.image_grid_pinpoints!r} is not a list: {err}") from None
        if self.image_grid_pinpoints is not None:
            pins = self.image_grid_pinpoints
            if (not isinstance(pins, (list, tuple)) or not pins or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2
                    and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in p) for p in pins)):
                raise ValueError(f"image_grid_pinpoints must be a non-empty list of [width, height] pairs of "
                                 f"positive integers, got {pins!r}")
            self.image_grid_pinpoints = [list(p) for p in pins]
        if self.image_aspect_ratio == "anyres" and self.image_grid_pinpoints is None:
            raise ValueError("image_aspect_ratio 'anyres' needs image_grid_pinpoints (e.g. [[336, 672], [672, 336], "
                             "[672, 672], [1008, 336], [336, 1008]] for LLaVA-1.6)")
        if self.sliding_window is not None and self.sliding_window < 1:
            raise ValueError(f"sliding_window must be >= 1 or null, got {self.sliding_window!r}")
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
        _rope_from_parameters(known, raw)
        if raw.get("model_type") == "llava_mistral" and "sliding_window" not in known:
            known["sliding_window"] = MISTRAL_DEFAULT_SLIDING_WINDOW
        return cls(**known, checkpoint_format="llava", extra=raw)

    @classmethod
    def _from_hf_dict(cls, raw: dict, names: set[str]) -> LlavaConfig:
        text = dict(raw.pop("text_config") or {})
        vision = {**_VISION_DEFAULTS, **(raw.pop("vision_config") or {})}
        known = {k: v for k, v in text.items() if k in names and k != "vision_config"}
        _rope_from_parameters(known, text)
        if text.get("model_type") == "mistral" and "sliding_window" not in text:
            known["sliding_window"] = MISTRAL_DEFAULT_SLIDING_WINDOW
        strategy = raw.get("vision_feature_select_strategy", "default")
        next_ = raw.get("model_type") == "llava_next"
        known.update(
            mm_vision_tower=raw.get("_name_or_path") or "vision_tower",
            mm_hidden_size=vision["hidden_size"],
            mm_projector_type="mlp2x_gelu",
            mm_vision_select_layer=raw.get("vision_feature_layer", -2),
            mm_vision_select_feature="patch" if strategy == "default" else "cls_patch",
            image_aspect_ratio="anyres" if next_ else "pad",
            vision_config=vision,
            image_token_index=raw.get("image_token_index"),
        )
        if next_:
            if strategy != "default":
                raise ValueError(f"vision_feature_select_strategy {strategy!r} is not supported for llava_next "
                                 "(the anyres grid needs the patch tokens alone: 'default')")
            if not raw.get("multimodal_projector_bias", True):
                raise ValueError("multimodal_projector_bias false is not supported (the projector has biases)")
            pins = raw.get("image_grid_pinpoints") or [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]
            if isinstance(pins, (list, tuple)):  # transformers reads (height, width): stored as (width, height)
                pins = [list(p)[::-1] if isinstance(p, (list, tuple)) else p for p in pins]
            known.update(image_grid_pinpoints=pins, mm_patch_merge_type="spatial_unpad")
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
        model_type = raw.get("model_type")
        text = raw.get("text_config")
        text_type = text.get("model_type") if isinstance(text, dict) else None
        if model_type not in (None, *LLAMA_LLAVA_TYPES) or text_type not in (None, *TEXT_MODEL_TYPES):
            what = f"model_type {model_type!r}" + (f" with a {text_type!r} language model" if text_type else "")
            raise NotImplementedError(
                f"{cfg_path}: {what} is not supported; this runtime runs LLaVA-1.5 and LLaVA-1.6 checkpoints with "
                f"a Llama or Mistral language model (model_type {', '.join(LLAMA_LLAVA_TYPES)})"
            )
        aspect = raw.get("image_aspect_ratio")
        if isinstance(aspect, str) and aspect.startswith("anyres") and aspect != "anyres":
            raise NotImplementedError(f"{cfg_path}: image_aspect_ratio {aspect!r} (LLaVA-OneVision's) is not "
                                      "supported; LLaVA-1.6's is 'anyres'")
        try:
            return cls.from_dict(raw)
        except (TypeError, ValueError, KeyError, AttributeError, ZeroDivisionError) as err:
            raise ValueError(f"{cfg_path}: {err}") from err

    @property
    def is_anyres(self) -> bool:
        """LLaVA-1.6's multi-crop input: each image is its base view plus a grid of crops."""
        return self.image_aspect_ratio == "anyres"

    def to_dict(self) -> dict:
        """config.json in LLaVA's layout (what `make_tiny_checkpoint --format llava` writes)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("extra", "checkpoint_format", "attn_implementation", "vision_config",
                                 "image_token_index")}
        # LLaVA-1.6's fields only when set, so a LLaVA-1.5 config is written as it always was (a Mistral one keeps
        # its null window: without the key it would read as MistralConfig's default)
        unset = {"image_grid_pinpoints": None, "mm_patch_merge_type": "flat"}
        if self.extra.get("model_type") != "llava_mistral":
            unset["sliding_window"] = None
        for name, value in unset.items():
            if out[name] == value:
                del out[name]
        out.update(self.extra)
        out.setdefault("architectures", ["LlavaLlamaForCausalLM"])
        out.setdefault("model_type", "llava_llama")
        return out


def _rope_from_parameters(known: dict, raw: dict) -> None:
    """transformers 5 writes RoPE as `rope_parameters` {rope_theta, rope_type, ...} instead of rope_theta /
    rope_scaling; read it into our two fields when they are not given."""
    rp = raw.get("rope_parameters")
    if not isinstance(rp, dict):
        return
    if "rope_theta" in rp and "rope_theta" not in known:
        known["rope_theta"] = rp["rope_theta"]
    kind = rp.get("rope_type", rp.get("type", "default"))
    if kind != "default" and known.get("rope_scaling") is None:
        known["rope_scaling"] = {k: v for k, v in rp.items() if k != "rope_theta"}
