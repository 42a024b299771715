"""How many visual tokens one image takes in LLaVA-1.6 ("anyres", spatial_unpad): pure arithmetic.

The count is a function of the image's (width, height), the grid pinpoints, the tower's input side (336)
and its patch size (14) only, so it needs neither the model nor the image's pixels:

1. :func:`select_best_resolution`: the pinpoint canvas that shows most of the image (its downscaled area,
   capped at its own; ties: the least unused area, then the first listed).
2. The canvas holds ``cols x rows`` crops of ``crop_size``; their features form one grid of
   ``(rows * s) x (cols * s)`` patches, ``s = crop_size // patch_size`` (24).
3. :func:`unpadded_extent`: the grid cut to the image's aspect ratio (transformers' ``unpad_image``
   rounding, ``int(round(x, 7))``).
4. V = ``s * s`` (the base view, the whole image at ``crop_size``) + the unpadded grid + one newline
   token per grid row.

Pinpoints and sizes are in LLaVA's order, [width, height]; a transformers llava_next config lists its
pinpoints as [height, width] (:func:`pinpoints_from_config` swaps them). ``llava.anyres`` uses these
functions for the real splice, so the count here is the runtime's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["LLAVA_NEXT_PINPOINTS", "AnyresTokens", "anyres_tokens", "parse_image_size", "pinpoints_from_config",
           "select_best_resolution", "unpadded_extent"]

# The grid pinpoints of the published LLaVA-1.6 checkpoints ([width, height]; the list is symmetric).
LLAVA_NEXT_PINPOINTS = ((336, 672), (672, 336), (672, 672), (1008, 336), (336, 1008))


def select_best_resolution(image_size: tuple[int, int], pinpoints) -> tuple[int, int]:
    """The (width, height) of `pinpoints` that shows most of an image of `image_size` (width, height): the
    largest downscaled area (capped at the image's own), then the least unused area; the first wins ties."""
    width, height = image_size
    best, best_effective, best_wasted = None, 0, math.inf
    for pw, ph in pinpoints:
        scale = min(pw / width, ph / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        wasted = pw * ph - effective
        if effective > best_effective or (effective == best_effective and wasted < best_wasted):
            best, best_effective, best_wasted = (pw, ph), effective, wasted
    return best


def unpadded_extent(image_size: tuple[int, int], rows: int, cols: int) -> tuple[int, int, int, int]:
    """(first row, row count, first column, column count) of a `rows x cols` feature grid that hold the image
    of `image_size` (width, height) once the canvas's black bands are cut off, as transformers' unpad_image."""
    width, height = image_size
    if width / height > cols / rows:  # wider than the grid: bands above and below
        new_rows = int(round(height * (cols / width), 7))
        pad = (rows - new_rows) // 2
        return pad, rows - 2 * pad, 0, cols
    new_cols = int(round(width * (rows / height), 7))
    pad = (cols - new_cols) // 2
    return 0, rows, pad, cols - 2 * pad


@dataclass(frozen=True)
class AnyresTokens:
    """The visual tokens of one image: ``total = base + grid[0] * grid[1] + newlines``."""

    total: int
    base: int  # the whole-image view's patches
    grid: tuple[int, int]  # (rows, cols) of patches after unpadding, newlines excluded
    newlines: int  # one per grid row
    crops: tuple[int, int]  # (rows, cols) of crops
    canvas: tuple[int, int]  # the chosen pinpoint (width, height)

    @property
    def views(self) -> int:
        """Tower inputs of the image: the base view and every crop (what the vision tower runs on)."""
        return 1 + self.crops[0] * self.crops[1]


def anyres_tokens(image_size: tuple[int, int], pinpoints=LLAVA_NEXT_PINPOINTS, crop_size: int = 336,
                  patch_size: int = 14) -> AnyresTokens:
    """The visual tokens LLaVA-1.6 (spatial_unpad) gives an image of `image_size` (width, height)."""
    width, height = (int(x) for x in image_size)
    if width < 1 or height < 1:
        raise ValueError(f"image size {width}x{height}: width and height must be >= 1 pixel")
    if crop_size < 1 or patch_size < 1 or crop_size % patch_size:
        raise ValueError(f"crop size {crop_size} must be a positive multiple of the patch size {patch_size}")
    pinpoints = [tuple(int(x) for x in p) for p in pinpoints]
    if not pinpoints or any(len(p) != 2 or min(p) < crop_size or p[0] % crop_size or p[1] % crop_size
                            for p in pinpoints):
        raise ValueError(f"grid pinpoints {pinpoints}: each must be [width, height], multiples of the crop size "
                         f"{crop_size}")
    side = crop_size // patch_size
    canvas = select_best_resolution((width, height), pinpoints)
    crop_cols, crop_rows = canvas[0] // crop_size, canvas[1] // crop_size
    _, rows, _, cols = unpadded_extent((width, height), crop_rows * side, crop_cols * side)
    return AnyresTokens(side * side + rows * cols + rows, side * side, (rows, cols), rows, (crop_rows, crop_cols),
                        canvas)


def pinpoints_from_config(cfg: Mapping[str, Any]) -> list[tuple[int, int]] | None:
    """A config.json's grid pinpoints as [width, height] (a llava_next config's [height, width] swapped),
    or None when the model does not use anyres."""
    points = cfg.get("image_grid_pinpoints")
    anyres = cfg.get("model_type") == "llava_next" or str(cfg.get("image_aspect_ratio", "")).startswith("anyres")
    if not anyres or not points:
        return None
    if cfg.get("model_type") == "llava_next":
        return [(int(p[1]), int(p[0])) for p in points]
    return [(int(p[0]), int(p[1])) for p in points]


def parse_image_size(text: str) -> tuple[int, int]:
    """``"1024x768"`` -> (1024, 768): width x height in pixels."""
    parts = text.lower().split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(f"image size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 1024x768") from None
    if width < 1 or height < 1:
        raise ValueError(f"image size {text!r}: width and height must be >= 1 pixel")
    return width, height
