"""entropyprune.anyres_tokens (LLaVA-1.6's visual tokens per image shape) against two references: the
runtime's splice count (llava.anyres.feature_layout, which tests/test_llava_next.py checks against
transformers' model) and transformers' own arithmetic (LlavaNextProcessor._get_number_of_features, the
count its processor expands <image> to, and image_size_to_num_patches for the views)."""

import types

import pytest

from entropyprune.anyres_tokens import (
    LLAVA_NEXT_PINPOINTS,
    anyres_tokens,
    parse_image_size,
    pinpoints_from_config,
)

# (width, height): square, 4:3, wide, tall, tiny (a tie between the 1x2 and 2x1 canvases), the maximum
SHAPES = [(672, 672), (1024, 768), (1280, 480), (336, 336), (640, 480), (1008, 336), (100, 50), (50, 100),
          (20, 300), (3000, 200), (800, 1200), (1, 1), (4032, 3024), (130, 16), (16, 130), (10000, 100)]


def _transformers_count(size, pinpoints):
    from transformers.models.llava_next.processing_llava_next import LlavaNextProcessor

    proc = LlavaNextProcessor.__new__(LlavaNextProcessor)  # the arithmetic only: no tokenizer needed
    # transformers reads a pinpoint as [height, width]: give it LLaVA's list in its own order
    proc.image_processor = types.SimpleNamespace(image_grid_pinpoints=[[h, w] for w, h in pinpoints])
    proc.patch_size, proc.num_additional_image_tokens = 14, 0  # "default" strategy: the CLS token dropped
    width, height = size
    return proc._get_number_of_features(height, width, 336, 336)


@pytest.mark.parametrize("size", SHAPES, ids=[f"{w}x{h}" for w, h in SHAPES])
def test_count_equals_the_splice_and_transformers(size):
    from transformers.models.llava_next.modeling_llava_next import image_size_to_num_patches

    from llava.anyres import anyres_num_tokens

    got = anyres_tokens(size)
    config = types.SimpleNamespace(image_grid_pinpoints=[list(p) for p in LLAVA_NEXT_PINPOINTS],
                                   mm_patch_merge_type="spatial_unpad")
    assert got.total == anyres_num_tokens(size, config, 24, 336)
    assert got.total == _transformers_count(size, LLAVA_NEXT_PINPOINTS)
    views = image_size_to_num_patches((size[1], size[0]), [[h, w] for w, h in LLAVA_NEXT_PINPOINTS], 336)
    assert got.views == views
    assert got.total == got.base + got.grid[0] * got.grid[1] + got.newlines and got.newlines == got.grid[0]


def test_published_counts():
    # 672x672: 5 views of 576 = 2880 before unpadding, plus 48 newlines; 4:3 and 3:1 by hand
    assert anyres_tokens((672, 672)).total == 576 + 48 * 48 + 48 == 2928
    assert anyres_tokens((640, 480)).total == 576 + 36 * 48 + 36 == 2340
    assert anyres_tokens((1008, 336)).total == 576 + 24 * 72 + 24 == 2328
    assert anyres_tokens((336, 336)).total == 576 + 24 * 24 + 24 == 1176
    # small and wide: a tie between the 1x2 and 2x1 canvases goes to 336x672 (first listed), whose 48 x 24 grid
    # unpads to int(16 * 24 / 130) = 2 rows: fewer tokens than a keep of 640
    assert anyres_tokens((130, 16)).total == 576 + 2 * 24 + 2 == 626


def test_tie_goes_to_the_first_listed_pinpoint():
    # 100x50 fits [336, 672] and [672, 336] equally (both hold all its pixels): the first listed wins
    assert anyres_tokens((100, 50), [(336, 672), (672, 336)]).crops == (2, 1)
    assert anyres_tokens((100, 50), [(672, 336), (336, 672)]).crops == (1, 2)


def test_pinpoints_from_config_and_errors():
    llava = {"image_aspect_ratio": "anyres", "image_grid_pinpoints": [[336, 672], [1008, 336]]}
    assert pinpoints_from_config(llava) == [(336, 672), (1008, 336)]
    hf = {"model_type": "llava_next", "image_grid_pinpoints": [[336, 672], [1008, 336]]}
    assert pinpoints_from_config(hf) == [(672, 336), (336, 1008)]  # [height, width] swapped
    assert pinpoints_from_config({"image_aspect_ratio": "pad"}) is None
    assert parse_image_size("1024x768") == (1024, 768)
    with pytest.raises(ValueError, match=r"^image size '1024': expected WIDTHxHEIGHT"):
        parse_image_size("1024")
    with pytest.raises(ValueError, match=r"^image size 0x5"):
        anyres_tokens((0, 5))
    with pytest.raises(ValueError, match=r"^grid pinpoints"):
        anyres_tokens((5, 5), [(300, 672)])
