"""LLaVA-1.6's "anyres" input: grid pinpoints, best resolution, resize-and-pad, crops, and the feature layout.

Sizes follow LLaVA's convention throughout: an image size is (width, height) as PIL gives it, and a pinpoint
is [width, height] (LlavaConfig stores transformers' (height, width) lists swapped, see its docstring).

Preprocessing (:func:`process_anyres_image`): the pinpoint that keeps most of the image's pixels (ties: the
one that wastes least) is the canvas; the image is resized into it keeping its aspect ratio (bicubic, the
side that does not fill the canvas rounded up) and centred on black; the canvas is cut into crops of the
tower's input size, row by row; the whole image resized to one crop's size comes first. Every view then goes
through the CLIP processor. This is LLaVA's ``process_anyres_image`` and what transformers'
``LlavaNextImageProcessor`` computes.

Features (:func:`feature_layout`): the base view's patches, then the crops' patches as one grid of
``rows x cols`` patches (rows of crops times patches per side), cut back to the image's own aspect ratio
("unpad") and read row by row, each row followed by the learned ``image_newline`` token. The order is that
of LLaVA's ``prepare_inputs_labels_for_multimodal`` (and transformers' ``pack_image_features``). The unpadded
extent uses transformers' rounding, ``int(round(x, 7))``; LLaVA's ``int(x)`` can lose a row when a product
such as 23.999999999 should be 24, and the two agree otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from PIL import Image

# The pure arithmetic (which canvas, which part of the grid the image fills) lives in entropyprune, so
# that the FLOPs tool counts LLaVA-1.6's tokens without this package; re-exported under LLaVA's names.
from entropyprune.anyres_tokens import select_best_resolution, unpadded_extent

__all__ = ["ImageLayout", "anyres_num_tokens", "divide_to_patches", "feature_layout", "get_anyres_image_grid_shape",
           "process_anyres_image", "resize_and_pad_image", "resized_size", "select_best_resolution",
           "unpadded_extent"]


def resized_size(image_size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the image inside the `target` canvas: the tighter side fills it, the other is
    scaled by the same factor and rounded up (never past the canvas)."""
    width, height = image_size
    tw, th = target
    sx, sy = tw / width, th / height
    if sx < sy:
        return tw, min(math.ceil(height * sx), th)
    return min(math.ceil(width * sy), tw), th


def resize_and_pad_image(image: Image.Image, target: tuple[int, int]) -> Image.Image:
    """`image` resized into the `target` (width, height) canvas keeping its aspect ratio, centred on black."""
    new_w, new_h = resized_size(image.size, target)
    canvas = Image.new("RGB", target, (0, 0, 0))
    canvas.paste(image.resize((new_w, new_h), Image.Resampling.BICUBIC), ((target[0] - new_w) // 2,
                                                                          (target[1] - new_h) // 2))
    return canvas


def divide_to_patches(image: Image.Image, size: int) -> list[Image.Image]:
    """Square crops of side `size`, row by row (PIL's crop pads any overhang with black)."""
    width, height = image.size
    return [image.crop((left, top, left + size, top + size))
            for top in range(0, height, size) for left in range(0, width, size)]


def get_anyres_image_grid_shape(image_size: tuple[int, int], pinpoints, crop_size: int) -> tuple[int, int]:
    """(columns, rows) of crops for an image of `image_size` (width, height), as LLaVA returns them."""
    width, height = select_best_resolution(image_size, pinpoints)
    return width // crop_size, height // crop_size


def _processor_side(image_processor, field: str) -> int:
    size = getattr(image_processor, field, None)
    get = size.get if isinstance(size, dict) else (lambda k, s=size: getattr(s, k, None))
    side = get("shortest_edge") if field == "size" else get("height")
    if not side:
        side = get("height")
    if not side:
        raise ValueError(f"the image processor's {field} {size!r} gives no square side; anyres needs "
                         "size.shortest_edge and crop_size.height (CLIP's processor)")
    return int(side)


def process_anyres_image(image: Image.Image, image_processor, pinpoints) -> torch.Tensor:
    """``[1 + crops, 3, S, S]``: the whole image resized to S x S, then the crops of its best-fit canvas."""
    canvas = resize_and_pad_image(image, select_best_resolution(image.size, pinpoints))
    crops = divide_to_patches(canvas, _processor_side(image_processor, "crop_size"))
    side = _processor_side(image_processor, "size")
    base = image.resize((side, side), Image.Resampling.BICUBIC)
    return image_processor(images=[base, *crops], return_tensors="pt")["pixel_values"]


@dataclass
class ImageLayout:
    """Where each visual token of one LLaVA-1.6 image came from; index i is the image's i-th token in its
    span of the splice (the span includes the newline tokens). Tensors on the host.

    Pruning methods read it to tell the learned row separators apart (``newline``) and to place tokens in
    the crop grid (``crop`` and ``patch``; with ``grid`` the unpadded grid's row of a crop token is
    ``(i - base_tokens) // (cols + 1)`` when ``newline_rows`` is true, i.e. for spatial_unpad).
    """

    newline: torch.Tensor  # [V] bool: the learned image_newline closing a row of the crop grid
    crop: torch.Tensor  # [V] long: 0 the base (whole-image) view, 1..N a crop (row-major in the grid), -1 newline
    patch: torch.Tensor  # [V] long: the patch's index inside its view (row-major), -1 for a newline
    grid: tuple[int, int]  # (rows, cols) of the crop grid in patches after unpadding, newlines excluded
    crops: tuple[int, int]  # (rows, cols) of crops
    base_tokens: int  # tokens of the base view at the start of the span
    newline_rows: bool = True  # each grid row ends with a newline token (spatial_unpad)

    @property
    def num_tokens(self) -> int:
        return int(self.newline.numel())

    @property
    def num_newlines(self) -> int:
        return int(self.newline.sum())

    def truncated(self, n: int) -> ImageLayout:
        """The first `n` tokens' record (the splice cut the span at the context length)."""
        return ImageLayout(self.newline[:n], self.crop[:n], self.patch[:n], self.grid, self.crops,
                           self.base_tokens, self.newline_rows)


def feature_layout(image_size: tuple[int, int] | None, views: int, per_side: int, merge: str, pinpoints,
                   crop_size: int) -> tuple[torch.Tensor, ImageLayout]:
    """How LLaVA orders the features of one image of `views` tower inputs (base + crops).

    Returns the source of every output token as an index into the image's features flattened to
    ``[views * per_side**2 + 1, D]`` (the last row is ``image_newline``), and the layout. ``merge`` is
    mm_patch_merge_type: flat (every view's patches in turn), spatial (base, then the crop grid row by row),
    spatial_unpad (the grid cut to the image, a newline after each row).
    """
    per_view = per_side * per_side
    newline_src = views * per_view
    base = torch.arange(per_view)
    if merge == "flat" or (views == 1 and merge == "spatial"):
        src = torch.arange(views * per_view)
        return src, ImageLayout(torch.zeros(src.numel(), dtype=torch.bool), src // per_view, src % per_view,
                                (0, 0), (0, 0), per_view, False)
    if views == 1:  # spatial_unpad on a single view: its patches, then one newline (LLaVA's branch for it)
        src = torch.cat([base, torch.tensor([newline_src])])
        newline = src == newline_src
        return src, ImageLayout(newline, torch.where(newline, -1, 0), torch.where(newline, -1, src), (0, 0),
                                (0, 0), per_view, False)
    if image_size is None:
        raise ValueError("image_sizes are needed for LLaVA-1.6 multi-crop images: pass generate(..., "
                         "image_sizes=[image.size for image in images]) as LLaVA's scripts do")
    crop_cols, crop_rows = get_anyres_image_grid_shape(image_size, pinpoints, crop_size)
    if crop_cols * crop_rows != views - 1:
        raise ValueError(f"an image of {image_size[0]}x{image_size[1]} pixels gives {crop_rows}x{crop_cols} crops "
                         f"with image_grid_pinpoints {pinpoints}, but its pixels hold {views - 1} crops: "
                         "image_sizes (width, height per image, in marker order) do not match the images")
    rows, cols = crop_rows * per_side, crop_cols * per_side
    r0, nr, c0, nc = (0, rows, 0, cols)
    unpad = merge == "spatial_unpad"
    if unpad:
        r0, nr, c0, nc = unpadded_extent(image_size, rows, cols)
    r = torch.arange(r0, r0 + nr)[:, None]
    c = torch.arange(c0, c0 + nc)[None, :]
    crop = 1 + (r // per_side) * crop_cols + c // per_side  # [nr, nc]
    patch = (r % per_side) * per_side + c % per_side
    grid_src = (crop * per_view + patch)
    grid_crop, grid_patch = crop, patch
    if unpad:
        grid_src = torch.cat([grid_src, torch.full((nr, 1), newline_src)], dim=1)
        grid_crop = torch.cat([crop, torch.full((nr, 1), -1)], dim=1)
        grid_patch = torch.cat([patch, torch.full((nr, 1), -1)], dim=1)
    src = torch.cat([base, grid_src.reshape(-1)])
    crop_of = torch.cat([torch.zeros(per_view, dtype=torch.long), grid_crop.reshape(-1)])
    patch_of = torch.cat([base, grid_patch.reshape(-1)])
    return src, ImageLayout(src == newline_src, crop_of, patch_of, (nr, nc), (crop_rows, crop_cols), per_view,
                            unpad)


def anyres_num_tokens(image_size: tuple[int, int], config, per_side: int, crop_size: int) -> int:
    """Visual tokens one image of `image_size` (width, height) takes in the splice of an anyres model."""
    cols, rows = get_anyres_image_grid_shape(image_size, config.image_grid_pinpoints, crop_size)
    src, _ = feature_layout(image_size, 1 + rows * cols, per_side, config.mm_patch_merge_type,
                            config.image_grid_pinpoints, crop_size)
    return int(src.numel())


def anyres_max_tokens(config, per_side: int, crop_size: int) -> int:
    """The largest V an image can take on an anyres model: that of an image filling a pinpoint exactly (its
    whole crop grid, nothing unpadded; a smaller image on the same canvas only loses rows or columns)."""
    return max(anyres_num_tokens((int(w), int(h)), config, per_side, crop_size)
               for w, h in config.image_grid_pinpoints)
