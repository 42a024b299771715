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
            cfg = CLIPVisionConfig.from_pretrained(vision_tower, local_files_only=local)
        self.vision_tower = CLIPVisionModel(cfg)
        self.vision_tower.requires_grad_(False)
        self.image_processor = None
        self.is_loaded = False

    def load_model(self, dtype: torch.dtype | None = None) -> None:
        """Load the tower's pretrained weights and image processor from its folder or hub id."""
        from transformers import CLIPVisionModel

        local = os.path.isdir(self.vision_tower_name)
        model = CLIPVisionModel.from_pretrained(self.vision_tower_name, local_files_only=local)
        self.vision_tower = model.to(dtype) if dtype is not None else model
        self.vision_tower.requires_grad_(False)
        processor_cls = clip_image_processor_class()
        self.image_processor = processor_cls.from_pretrained(self.vision_tower_name, local_files_only=local)
        self.is_loaded = True

    def feature_select(self, hidden_states) -> torch.Tensor:
        feats = hidden_states[self.select_layer]
        return feats[:, 1:] if self.select_feature == "patch" else feats

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.vision_tower(images.to(device=self.device, dtype=self.dtype), output_hidden_states=True)
        return self.feature_select(out.hidden_states).to(images.dtype)

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
