"""Build the vision tower named by the config (`mm_vision_tower`)."""

from __future__ import annotations

from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower


def build_vision_tower(config, vision_tower: str | None = None) -> CLIPVisionTower:
    name = vision_tower or config.mm_vision_tower
    if not name:
        raise ValueError("the model config has no 'mm_vision_tower': this is not a LLaVA checkpoint")
    return CLIPVisionTower(
        name,
        select_layer=config.mm_vision_select_layer,
        select_feature=config.mm_vision_select_feature,
        vision_config=config.vision_config,
    )
