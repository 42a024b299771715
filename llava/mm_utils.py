"""Image and prompt helpers with LLaVA's names and behaviour (LLaVA-1.5's `pad`, LLaVA-1.6's `anyres`)."""

from __future__ import annotations

import base64
import os
from io import BytesIO

import torch
from PIL import Image, UnidentifiedImageError

from entropyprune.ecl import model_name_from_path as get_model_name_from_path  # noqa: F401  (LLaVA's name)
from llava.anyres import (  # noqa: F401  (LLaVA's names, from llava/mm_utils.py)
    divide_to_patches,
    get_anyres_image_grid_shape,
    process_anyres_image,
    resize_and_pad_image,
    select_best_resolution,
)
from llava.constants import IMAGE_TOKEN_INDEX
from llava.decoding import decode_ids


def load_image(path_or_url: str) -> Image.Image:
    """Open an image file as RGB, or fail with an error that names the file."""
    if path_or_url.startswith(("http://", "https://")):
        import urllib.request

        with urllib.request.urlopen(path_or_url) as resp:  # noqa: S310 - user-supplied URL, as in LLaVA
            data = resp.read()
        return Image.open(BytesIO(data)).convert("RGB")
    if not os.path.isfile(path_or_url):
        raise FileNotFoundError(f"image file not found: {path_or_url}")
    try:
        with Image.open(path_or_url) as img:
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise ValueError(f"cannot read image {path_or_url}: {err}; is it a valid PNG/JPEG file?") from err


def load_image_from_base64(image: str) -> Image.Image:
    return Image.open(BytesIO(base64.b64decode(image)))


def expand2square(pil_img: Image.Image, background_color) -> Image.Image:
    """Pad to a square canvas of side max(w, h), centring the image on the short axis (LLaVA's placement)."""
    width, height = pil_img.size
    if width == height:
        return pil_img
    side = max(width, height)
    canvas = Image.new(pil_img.mode, (side, side), background_color)
    canvas.paste(pil_img, ((side - width) // 2, (side - height) // 2))
    return canvas


# The padded square is built for real only when the exact replay cannot stand in for it (another resampling
# filter, a non-RGB image, a processor without a plain square resize); up to this many pixels.
MAX_CANVAS_PIXELS = 8192 * 8192


def _size_field(size, name):
    return size.get(name) if isinstance(size, dict) else getattr(size, name, None)


def _square_target(image_processor) -> tuple[int, int] | None:
    """(width, height) that the processor resizes a square to, when it is one plain PIL resize."""
    from llava.square_resize import FILTERS

    size = getattr(image_processor, "size", None)
    resample = getattr(image_processor, "resample", None)
    if not getattr(image_processor, "do_resize", False) or size is None or resample is None:
        return None
    if int(resample) not in FILTERS:
        return None
    edge, longest = _size_field(size, "shortest_edge"), _size_field(size, "longest_edge")
    if edge and not longest and not _size_field(size, "height"):
        return int(edge), int(edge)  # a square's shortest edge to `edge`: edge x edge
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if height and width and not edge:
        return int(width), int(height)
    return None


def pad_to_square_for(image: Image.Image, background_color, image_processor) -> Image.Image:
    """What the processor gets in LLaVA's `pad` mode: `expand2square(image, background_color)`, or, without
    building that square, the square already resized as the processor would resize it (bit for bit the same;
    the processor's own resize then changes nothing). Memory grows with the image, not with the square."""
    from llava.square_resize import exact_here, resize_padded_square

    width, height = image.size
    if width == height:
        return image
    target = _square_target(image_processor)
    if target is not None and image.mode == "RGB" and exact_here():
        return resize_padded_square(image, tuple(background_color), target, int(image_processor.resample))
    side = max(width, height)
    if side * side > MAX_CANVAS_PIXELS:
        raise ValueError(
            f"image of {width}x{height} pixels: padding it to a {side}x{side} square would need "
            f"{side * side * 4 / 2**30:.1f} GiB; convert it to RGB (or use a bicubic/bilinear CLIP processor) so "
            "that it is resized without the square"
        )
    return expand2square(image, background_color)


def _pixel_values(image_processor, image) -> torch.Tensor:
    out = image_processor(images=image, return_tensors="pt")
    return out["pixel_values"][0]


def process_images(images, image_processor, model_cfg) -> torch.Tensor | list[torch.Tensor]:
    """Preprocess PIL images as LLaVA does: `pad` (LLaVA-1.5) pads to a square with the CLIP mean colour, then
    CLIP resize/crop; `anyres` (LLaVA-1.6) gives each image its ``[1 + crops, 3, S, S]`` views
    (:func:`process_anyres_image`). As in LLaVA, the per-image tensors are stacked when their shapes agree
    (``[N, 1 + crops, 3, S, S]`` for anyres) and returned as a list otherwise.

    The `pad` result is LLaVA's to the bit; the square itself is not built (see `pad_to_square_for`), so a
    20000 x 1 image costs what its pixels cost, not a 20000 x 20000 canvas.
    """
    aspect = getattr(model_cfg, "image_aspect_ratio", None)
    new_images = []
    for image in images:
        if aspect == "anyres":
            new_images.append(process_anyres_image(image, image_processor, model_cfg.image_grid_pinpoints))
            continue
        if aspect == "pad":
            fill = tuple(int(x * 255) for x in image_processor.image_mean)
            image = pad_to_square_for(image, fill, image_processor)
        new_images.append(_pixel_values(image_processor, image))
    if all(x.shape == new_images[0].shape for x in new_images):
        return torch.stack(new_images, dim=0)
    return new_images


def tokenizer_image_token(prompt: str, tokenizer, image_token_index=IMAGE_TOKEN_INDEX, return_tensors=None):
    """Tokenize `prompt` with each "<image>" replaced by `image_token_index`.

    Each text chunk is tokenized on its own (so the chunk after an image gets SentencePiece's leading "▁",
    exactly as in LLaVA); one BOS is kept at the start and the chunks' own BOS tokens are dropped.
    """
    chunks = [tokenizer(chunk).input_ids for chunk in prompt.split("<image>")]
    bos = tokenizer.bos_token_id
    input_ids: list[int] = []
    offset = 0
    if chunks and chunks[0] and bos is not None and chunks[0][0] == bos:
        offset = 1
        input_ids.append(bos)
    for i, chunk in enumerate(chunks):
        if i > 0:
            input_ids.append(image_token_index)
        input_ids.extend(chunk[offset:])
    if return_tensors is None:
        return input_ids
    if return_tensors == "pt":
        return torch.tensor(input_ids, dtype=torch.long)
    raise ValueError(f"unsupported return_tensors {return_tensors!r}; use 'pt' or None")


class KeywordsStoppingCriteria:
    """Stop when any keyword appears at the end of every sequence's generated text (LLaVA's demo helper)."""

    def __init__(self, keywords, tokenizer, input_ids):
        self.keywords = keywords
        self.tokenizer = tokenizer
        self.start_len = input_ids.shape[1]

    def __call__(self, output_ids: torch.Tensor, scores=None, **kwargs) -> bool:
        texts = [decode_ids(self.tokenizer, row) for row in output_ids[:, -8:]]
        return all(any(k in t for k in self.keywords) for t in texts)
