"""The CLIP vision tower: transformers' CLIPVisionModel, features from `mm_vision_select_layer`."""

from __future__ import annotations

import os

import torch
from torch import nn


def clip_image_processor_class():
    """CLIP's PIL image processor: transformers 5 names it CLIPImageProcessorPil (its default class wants
    torchvision, which has no CPU build); older releases call it CLIPImageProcessor."""
    import transformers

    return getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor


class CLIPVisionTower(nn.Module):
    """Wraps `CLIPVisionModel` so that its weights are named `vision_tower.vision_model.*`, as in LLaVA."""

    def __init__(self, vision_tower: str, select_layer: int = -2, select_feature: str = "patch",
                 vision_config: dict | None = None):
        super().__init__()
        from transformers import CLIPVisionConfig, CLIPVisionModel

        if select_feature not in ("patch", "cls_patch"):
            raise ValueError(f"unknown mm_vision_select_feature {select_feature!r}; expected 'patch' or 'cls_patch'")
        self.vision_tower_name = vision_tower
        self.select_layer = select_layer
        self.select_feature = select_feature
        if vision_config is not None:
            cfg = CLIPVisionConfig(**vision_config)
        else:
            local = os.path.isdir(vision_tower)
            if local:
                from llava.model.checkpoint import read_json

                if not os.path.isfile(os.path.join(vision_tower, "config.json")):
                    raise FileNotFoundError(f"vision tower {vision_tower!r} has no config.json")
                read_json(os.path.join(vision_tower, "config.json"))
            cfg = CLIPVisionConfig.from_pretrained(vision_tower, local_files_only=local)
        self.vision_tower = CLIPVisionModel(cfg)
        self.vision_tower.requires_grad_(False)
        self.image_processor = None
        self.is_loaded = False

    def load_model(self, dtype: torch.dtype | None = None) -> None:
        """Load the tower's pretrained weights and image processor from its folder or hub id.

        Every weight of the tower must be in its checkpoint (transformers would initialise a missing one at
        random and carry on). Unused tensors are an error too, except those of the CLIP model around the
        vision half (openai's checkpoints hold the text tower as well) and position-id buffers.
        """
        from transformers import CLIPVisionModel

        from llava.model.checkpoint import read_json, weight_files

        name = self.vision_tower_name
        local = os.path.isdir(name)
        if local:
            if not os.path.isfile(os.path.join(name, "preprocessor_config.json")):
                raise FileNotFoundError(f"vision tower {name!r} has no preprocessor_config.json")
            read_json(os.path.join(name, "preprocessor_config.json"))
            weight_files(name)  # an error naming the folder when it holds no weights
        try:
            model, info = CLIPVisionModel.from_pretrained(name, local_files_only=local, output_loading_info=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # a corrupt weights file: transformers' message may not say which tower
            raise ValueError(f"cannot load the vision tower {name!r}: {type(err).__name__}: {err}") from err
        missing = sorted(info.get("missing_keys") or ())
        mismatched = sorted(str(k) for k in info.get("mismatched_keys") or ())
        unused = sorted(k for k in info.get("unexpected_keys") or () if not _clip_extra(k))
        if missing or mismatched or unused:
            parts = [f"{len(v)} {what}: {', '.join(v[:5])}" + (" ..." if len(v) > 5 else "")
                     for what, v in (("weight(s) missing from its weights", missing),
                                     ("weight(s) with another shape", mismatched),
                                     ("tensor(s) matching no weight", unused)) if v]
            raise ValueError(f"vision tower {name!r} does not fit its config.json: " + "; ".join(parts))
        self.vision_tower = model.to(dtype) if dtype is not None else model
        self.vision_tower.requires_grad_(False)
        processor_cls = clip_image_processor_class()
        self.image_processor = processor_cls.from_pretrained(name, local_files_only=local)
        self.is_loaded = True

    def feature_select(self, hidden_states) -> torch.Tensor:
        feats = hidden_states[self.select_layer]
        return feats[:, 1:] if self.select_feature == "patch" else feats

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out.hidden_states).to(images.dtype)

    @torch.no_grad()
    def hidden_states(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Every encoder layer's input and the last output, ``[N, 1+V, Dv]`` each (CLS first), in the
        images' dtype: what vision-stage pruning methods read (``forward`` takes its features from them)."""
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return tuple(h.to(images.dtype) for h in out.hidden_states)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.vision_tower.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.vision_tower.parameters()).device

    @property
    def config(self):
        return self.vision_tower.config

    @property
    def hidden_size(self) -> int:
        return self.config.hidden_size

    @property
    def num_patches_per_side(self) -> int:
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.num_patches_per_side ** 2


def _clip_extra(key: str) -> bool:
    """Tensors of a full CLIPModel checkpoint that CLIPVisionModel does not use, and position-id buffers."""
    return (key.startswith(("text_model.", "text_projection", "visual_projection", "logit_scale"))
            or key.endswith("position_ids"))

