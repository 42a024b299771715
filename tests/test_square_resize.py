"""LLaVA's pad-to-square preprocessing, computed without the square, is LLaVA's to the bit; a 20000 x 1 image
costs what its pixels cost."""

import time
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from llava.mm_utils import load_image, process_images
from llava.square_resize import exact_here, resize_padded_square


def llava_pixels(image, processor):
    """LLaVA-1.5's own rule, written out: pad to a square of side max(w, h) with the mean colour
    (int(255 * mean) per channel), the image centred at ((side - w) // 2, (side - h) // 2), then the CLIP
    processor (shortest edge to 336 bicubic, centre crop 336, rescale, normalise)."""
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), tuple(int(255 * m) for m in processor.image_mean))
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return processor(images=canvas, return_tensors="pt")["pixel_values"][0]


def _random(w, h, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8), "RGB")


def _canvas(image, fill):
    w, h = image.size
    side = max(w, h)
    canvas = Image.new("RGB", (side, side), fill)
    canvas.paste(image, ((side - w) // 2, (side - h) // 2))
    return canvas


# Ordinary photos, both orientations, odd and even padding, shrinking and enlarging, up to 4000 px and 10:1.
SHAPES = [(640, 480), (480, 640), (500, 375), (375, 500), (1024, 768), (612, 612), (336, 335), (335, 336),
          (337, 100), (100, 337), (33, 17), (17, 33), (1, 2), (2, 1), (4000, 3000), (3000, 4000), (4000, 400),
          (400, 4000), (3999, 1001), (1001, 3999), (2048, 205), (205, 2048), (1366, 768), (768, 1366)]


@pytest.mark.parametrize("w,h", SHAPES)
def test_process_images_is_llava_pipeline_bit_for_bit(loaded_tiny, w, h):
    _, model, proc, _ = loaded_tiny
    image = _random(w, h, seed=w * 7 + h)
    got = process_images([image], proc, model.config)[0]
    assert got.shape == (3, 336, 336)
    assert torch.equal(got, llava_pixels(image, proc))


def test_random_shapes_and_both_tall_strategies():
    """The resized square, pixel for pixel, over random shapes; for tall images both ways of the padded pass."""
    rng = np.random.default_rng(0)
    fill = (122, 116, 104)
    shapes = [tuple(int(v) for v in rng.integers(1, 1000, size=2)) for _ in range(24)]
    for i, (w, h) in enumerate(shapes + [(4000, 1), (1, 4000), (4000, 3), (3, 4000), (9000, 10), (10, 9000)]):
        image = _random(w, h, seed=i)
        expected = np.asarray(_canvas(image, fill).resize((336, 336), Image.Resampling.BICUBIC))
        for replay in (None, True, False):
            got = np.asarray(resize_padded_square(image, fill, (336, 336), replay=replay))
            assert np.array_equal(got, expected), (w, h, replay)


@pytest.mark.parametrize("resample", [Image.Resampling.BICUBIC, Image.Resampling.BILINEAR])
@pytest.mark.parametrize("size", [(224, 224), (336, 200), (120, 500)])
def test_other_filters_and_sizes(resample, size):
    fill = (0, 128, 255)
    for w, h in [(800, 300), (300, 800), (150, 41), (41, 150)]:
        image = _random(w, h, seed=w + h)
        expected = np.asarray(_canvas(image, fill).resize(size, resample))
        assert np.array_equal(np.asarray(resize_padded_square(image, fill, size, resample)), expected)


def test_exact_here():
    assert exact_here()


@pytest.mark.parametrize("size", [(20000, 1), (1, 20000)])
def test_huge_thin_png_in_bounded_memory_and_time(tmp_path, monkeypatch, loaded_tiny, size):
    """A ~100-byte PNG of 20000 x 1: LLaVA's square would be 20000 x 20000 (1.6 GB as a PIL image, 47 s
    through the processor). Here no image larger than the input is allocated, numpy's peak stays at a few
    MB, and it takes well under 2 s."""
    _, model, proc, _ = loaded_tiny
    file = tmp_path / "thin.png"
    Image.new("RGB", size, (250, 10, 10)).save(file)
    assert file.stat().st_size < 1000
    image = load_image(str(file))
    process_images([_random(7, 3, 0)], proc, model.config)  # the one-off exactness check, outside the budget

    made = []  # every PIL image created on the way (PIL's pixel memory is invisible to tracemalloc)
    new, fromarray = Image.new, Image.fromarray
    monkeypatch.setattr(Image, "new", lambda mode, sz, *a, **k: made.append(tuple(sz)) or new(mode, sz, *a, **k))
    monkeypatch.setattr(Image, "fromarray",
                        lambda arr, *a, **k: made.append(arr.shape[1::-1]) or fromarray(arr, *a, **k))
    tracemalloc.start()
    start = time.perf_counter()
    pixels = process_images([image], proc, model.config)
    elapsed = time.perf_counter() - start
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert pixels.shape == (1, 3, 336, 336)
    assert elapsed < 2.0, elapsed
    assert peak < 64 * 2**20, peak
    assert made and max(w * h for w, h in made) <= 20000 * 336, made  # never the 20000 x 20000 square
    monkeypatch.undo()
    assert torch.equal(pixels[0], _thin_line_reference(size, (250, 10, 10), proc))


def _thin_line_reference(size, colour, proc):
    """LLaVA's pixels for a one-pixel line of one colour, from Pillow alone and without the 20000^2 square.

    Pillow resizes horizontally, then vertically. In the padded square of a 20000 x 1 line every column is
    the same, so the horizontal pass gives two distinct rows (padding, line), computed on one row each; the
    vertical pass then runs on the 20000 x 336 result. For 1 x 20000, transposed: every row is the same.
    """
    w, h = size
    side = max(w, h)
    fill = tuple(int(255 * m) for m in proc.image_mean)
    bicubic = Image.Resampling.BICUBIC

    def row_through(pixels):  # one canvas row of `side` pixels through the horizontal pass
        return np.asarray(Image.fromarray(np.asarray(pixels, np.uint8)[None], "RGB").resize((336, 1), bicubic))[0]

    if h == 1:
        rows = np.empty((side, 336, 3), np.uint8)
        rows[:] = row_through([fill] * side)
        rows[(side - 1) // 2] = row_through([colour] * side)
    else:
        line = [fill] * side
        line[(side - 1) // 2] = colour
        rows = np.empty((side, 336, 3), np.uint8)
        rows[:] = row_through(line)
    square = Image.fromarray(rows, "RGB").resize((336, 336), bicubic)  # the vertical pass alone
    return proc(images=square, return_tensors="pt")["pixel_values"][0]


def test_canvas_fallback_refuses_a_huge_square(monkeypatch, loaded_tiny):
    """Where the exact replay cannot stand in (not on this Pillow, say), the square is built as LLaVA does,
    up to MAX_CANVAS_PIXELS; beyond, one clear error rather than gigabytes."""
    import llava.square_resize

    _, model, proc, _ = loaded_tiny
    monkeypatch.setattr(llava.square_resize, "exact_here", lambda: False)
    small = _random(50, 20, 0)
    assert torch.equal(process_images([small], proc, model.config)[0], llava_pixels(small, proc))
    with pytest.raises(ValueError, match=r"20000x1 pixels: padding it to a 20000x20000 square"):
        process_images([Image.new("RGB", (20000, 1))], proc, model.config)


@pytest.mark.parametrize("size", [(2000, 1), (1, 2000), (1999, 1), (1, 1999)])
def test_thin_line_reference_is_llava_pipeline(loaded_tiny, size):
    """The reference above equals the real square's pixels where the square can be built."""
    proc = loaded_tiny[2]
    image = Image.new("RGB", size, (250, 10, 10))
    assert torch.equal(_thin_line_reference(size, (250, 10, 10), proc), llava_pixels(image, proc))
