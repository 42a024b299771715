"""LLaVA's pad-to-square then resize, computed without the square.

LLaVA-1.5 pads each image to a square of side max(w, h) with the CLIP mean colour (`expand2square`) and then
resizes the square to 336 x 336 (bicubic). The square of a 20000 x 1 image is 20000 x 20000 pixels
(1.6 GB in PIL, more in the processor's copies) for an image of 60 kB. :func:`resize_padded_square` returns
the same 336 x 336 pixels, bit for bit, from the image alone: it replays Pillow's own resampling (the
coefficients of ``Resample.c``, in the same float64 operations, then its 22-bit fixed-point sums) over a
virtual canvas, so the padding is never stored. Memory and time grow with the image and with max(w, h),
never with the square.

Pillow resizes in two passes, horizontal then vertical, rounding to 8 bits in between. The pass along the
image's long side has no padding: Pillow itself does it, on the image. The pass along the short side crosses
the padding; there each output pixel is ``clip8((2**21 + sum_i k_i * p_i) >> 22)`` over the canvas pixels
``p_i`` its filter reaches, and the fill pixels' share is one constant per output pixel.
:func:`exact_here` checks the result against Pillow on the real canvas once per process.
"""

from __future__ import annotations

import functools
import math

import numpy as np
from PIL import Image

_PRECISION_BITS = 32 - 8 - 2  # Resample.c
_HALF = 1 << (_PRECISION_BITS - 1)


def _bicubic(x: np.ndarray) -> np.ndarray:
    # Resample.c bicubic_filter, a = -0.5, the same operations in the same order.
    a = -0.5
    x = np.abs(x)
    inner = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    outer = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, inner, np.where(x < 2.0, outer, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


# Pillow's filters whose kernels are polynomials (computed here exactly as in C), with their supports.
FILTERS = {int(Image.Resampling.BICUBIC): (_bicubic, 2.0), int(Image.Resampling.BILINEAR): (_bilinear, 1.0)}


@functools.lru_cache(maxsize=64)
def coefficients(in_size: int, out_size: int, resample: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pillow's ``precompute_coeffs`` + ``normalize_coeffs_8bpc`` for the box (0, in_size):
    per output pixel the first input pixel, the number of taps, and the int32 weights [out, ksize]."""
    if in_size >= 1 << 24:
        raise ValueError(f"image side {in_size} is beyond what Pillow resamples exactly (2**24)")
    filt, filter_support = FILTERS[resample]
    scale = float(in_size) / out_size
    filterscale = max(scale, 1.0)
    support = filter_support * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale  # in0 + (xx + 0.5) * scale with in0 = 0
    ss = 1.0 / filterscale
    xmin = np.maximum(np.trunc(center - support + 0.5).astype(np.int64), 0)
    xmax = np.minimum(np.trunc(center + support + 0.5).astype(np.int64), in_size) - xmin
    taps = np.arange(ksize)
    valid = taps[None, :] < xmax[:, None]
    w = np.where(valid, filt(((taps[None, :] + xmin[:, None]).astype(np.float64) - center[:, None] + 0.5) * ss), 0.0)
    ww = np.zeros(out_size)
    for j in range(ksize):  # sequential sum, as the C loop (numpy's sum is pairwise)
        ww = ww + w[:, j]
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    fixed = w * (1 << _PRECISION_BITS)
    k = np.where(w < 0, np.trunc(-0.5 + fixed), np.trunc(0.5 + fixed)).astype(np.int64)
    return xmin, xmax, k


def _clip8(acc: np.ndarray) -> np.ndarray:
    return np.clip(acc >> _PRECISION_BITS, 0, 255).astype(np.uint8)


def padded_pass(a: np.ndarray, axis: int, side: int, offset: int, fill: np.ndarray, out_size: int,
                resample: int, positions: slice | None = None) -> np.ndarray:
    """One of Pillow's resampling passes along `axis`, over a line of `side` pixels that holds `a` at
    [offset, offset + n) and `fill` elsewhere (`fill`: `a`'s shape without `axis`, or broadcastable to it).

    Returns the output pixels `positions` (default: all `out_size`) along `axis`, uint8, exactly as Pillow
    computes them on the padded line.
    """
    xmin, xmax, k = coefficients(side, out_size, resample)
    sel = range(out_size)[positions] if positions is not None else range(out_size)
    idx = np.arange(sel.start, sel.stop, sel.step)
    xmin, xmax, k = xmin[idx], xmax[idx], k[idx]
    n = a.shape[axis]
    others = a.shape[:axis] + a.shape[axis + 1:]
    lines = np.moveaxis(a, axis, 0).reshape(n, -1)  # one row per position along `axis`
    fill = np.broadcast_to(np.asarray(fill, dtype=np.int32), others).reshape(-1)
    # The taps that fall on the image, per output pixel: [lo, hi) in canvas coordinates.
    lo = np.clip(xmin, offset, offset + n)
    count = np.clip(xmin + xmax, offset, offset + n) - lo
    rows = np.arange(len(idx))
    on_image = np.zeros(len(idx), dtype=np.int64)
    # int32 sums, as Resample.c's: they stay below 2**31 for 8-bit pixels.
    acc = np.zeros((len(idx), lines.shape[1]), dtype=np.int32)
    for j in range(int(count.max(initial=0))):
        live = j < count
        tap = np.where(live, lo + j, offset)  # canvas position of each output pixel's j-th image tap
        weight = np.where(live, k[rows, np.clip(tap - xmin, 0, k.shape[1] - 1)], 0).astype(np.int32)
        on_image += weight
        acc += lines[tap - offset] * weight[:, None]
    acc += (_HALF + fill[None, :] * (k.sum(axis=1) - on_image)[:, None].astype(np.int32)).astype(np.int32)
    out = _clip8(acc).reshape(len(idx), *others)
    return np.moveaxis(out, 0, axis)


_STRIP_PIXELS = 1 << 22


def _padded_rows_in_pillow(a: np.ndarray, ox: int, side: int, fill: np.ndarray, out_w: int,
                           resample: int) -> np.ndarray:
    """Pillow's horizontal pass over the rows of `a` padded to `side` at `ox`, a strip of rows at a time."""
    h, w = a.shape[:2]
    if out_w == side:  # no horizontal pass: the padded rows themselves
        out = np.empty((h, side, 3), dtype=np.uint8)
        out[:] = fill
        out[:, ox:ox + w] = a
        return out
    out = np.empty((h, out_w, 3), dtype=np.uint8)
    step = max(1, _STRIP_PIXELS // side)
    strip = np.empty((min(step, h), side, 3), dtype=np.uint8)
    strip[:] = fill
    for r in range(0, h, step):
        n = min(step, h - r)
        strip[:n, ox:ox + w] = a[r:r + n]
        out[r:r + n] = np.asarray(Image.fromarray(strip[:n], "RGB").resize((out_w, n), resample))
    return out


def resize_padded_square(image: Image.Image, fill: tuple[int, ...], size: tuple[int, int],
                         resample: int = Image.Resampling.BICUBIC, replay: bool | None = None) -> Image.Image:
    """``expand2square(image, fill).resize(size, resample)``, bit for bit, without building the square.

    image: RGB. size: (width, height) of the result. The square is never allocated: the pass along the long
    side runs in Pillow on the image, the pass across the padding in :func:`padded_pass` (for tall images,
    or in Pillow on strips of padded rows when that is cheaper; replay=True/False forces either).
    """
    if image.mode != "RGB":
        raise ValueError(f"resize_padded_square needs an RGB image, got mode {image.mode}")
    if int(resample) not in FILTERS:
        raise ValueError(f"resample {resample} has no exact replay here; use bicubic or bilinear")
    w, h = image.size
    side = max(w, h)
    out_w, out_h = size
    fill_px = np.asarray(fill, dtype=np.uint8)
    if w >= h:  # padded above and below: the horizontal pass is Pillow's own, on the image
        oy = (side - h) // 2
        rows = np.asarray(image.resize((out_w, h), resample))  # [h, out_w, 3]
        fill_row = np.asarray(Image.new("RGB", (side, 1), tuple(fill)).resize((out_w, 1), resample))[0]
        if out_h == side:  # Pillow skips a pass that changes nothing; so does the padding
            out = np.empty((side, out_w, 3), dtype=np.uint8)
            out[:] = fill_row
            out[oy:oy + h] = rows
        else:
            out = padded_pass(rows, 0, side, oy, fill_row, out_h, resample)
        return Image.fromarray(out, "RGB")
    # Padded left and right: the horizontal pass crosses the padding. Either Pillow runs it on strips of
    # padded rows (a few MB at a time), or it is replayed here on the output columns that reach the image
    # (the others are the fill colour's on every row), whichever is cheaper: the replay for narrow images.
    ox = (side - w) // 2
    a = np.asarray(image)
    xmin, xmax, k = coefficients(side, out_w, resample)
    if replay is None:  # the cheaper of the two, by a rough count of nanoseconds per row
        reached = int(((xmin < ox + w) & (xmin + xmax > ox)).sum())
        replay = 9 * reached * min(k.shape[1], w) < side + 1.5 * out_w * k.shape[1]
    if out_w == side or not replay:
        cols = _padded_rows_in_pillow(a, ox, side, fill_px, out_w, resample)
        first, last = 0, out_w
    else:
        reach = np.flatnonzero((xmin < ox + w) & (xmin + xmax > ox))
        first, last = int(reach[0]), int(reach[-1]) + 1
        cols = padded_pass(a, 1, side, ox, fill_px, out_w, resample, slice(first, last))
    # The vertical pass has no padding (the image is the canvas's full height): Pillow's own.
    mixed = np.asarray(Image.fromarray(np.ascontiguousarray(cols), "RGB").resize((last - first, out_h), resample))
    out = np.empty((out_h, out_w, 3), dtype=np.uint8)
    if first > 0 or last < out_w:
        # The columns that reach only fill pixels (the image at `side`, off the line), then each distinct
        # value of theirs as a constant column through Pillow's vertical pass.
        pure = padded_pass(np.zeros((1, 1, 3), np.uint8), 1, side, side, fill_px, out_w, resample)[0]
        values, inverse = np.unique(pure.reshape(-1, 3), axis=0, return_inverse=True)
        column = np.broadcast_to(values[None, :, :], (h, len(values), 3))
        through = np.asarray(Image.fromarray(np.ascontiguousarray(column), "RGB").resize((len(values), out_h),
                                                                                          resample))
        out[:] = through[:, inverse.reshape(-1), :]
    out[:, first:last] = mixed
    return Image.fromarray(out, "RGB")


@functools.lru_cache(maxsize=1)
def exact_here() -> bool:
    """Whether :func:`resize_padded_square` matches this Pillow on the real canvas (checked once, on small
    random images of both orientations, shrunk and enlarged)."""
    rng = np.random.default_rng(0)
    fill = (122, 116, 104)
    for w, h, out in ((701, 250, 336), (250, 701, 336), (90, 41, 336), (41, 90, 336), (5, 900, 224)):
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")
        side = max(w, h)
        canvas = Image.new("RGB", (side, side), fill)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        for resample in FILTERS:
            expected = np.asarray(canvas.resize((out, out), resample))
            for replay in (True, False):
                got = resize_padded_square(img, fill, (out, out), resample, replay=replay)
                if not np.array_equal(np.asarray(got), expected):
                    return False
    return True
