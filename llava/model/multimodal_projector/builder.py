"""The vision-to-language projector: `linear`, `mlp{N}x_gelu` or `identity`, named as in LLaVA."""

from __future__ import annotations

import re

from torch import nn


class IdentityMap(nn.Module):
    def forward(self, x, *args, **kwargs):
        return x


def build_vision_projector(config) -> nn.Module:
    kind = getattr(config, "mm_projector_type", "linear")
    if kind == "linear":
        return nn.Linear(config.mm_hidden_size, config.hidden_size)
    match = re.match(r"^mlp(\d+)x_gelu$", kind)
    if match:
        # Linear, GELU, Linear, ...: the state-dict keys are mm_projector.0, .2, .4, ...
        layers: list[nn.Module] = [nn.Linear(config.mm_hidden_size, config.hidden_size)]
        for _ in range(1, int(match.group(1))):
            layers += [nn.GELU(), nn.Linear(config.hidden_size, config.hidden_size)]
        return nn.Sequential(*layers)
    if kind == "identity":
        return IdentityMap()
    raise ValueError(f"unknown mm_projector_type {kind!r}; expected 'linear', 'mlpNx_gelu' or 'identity'")
