"""The hand-set colour tower (llava/tools/colour_tower.py): its features equal the rule written from the pixels."""

import math
import random

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

import llava.tools.make_synthetic_data as synthetic
from llava.tools.colour_tower import CHROMA_GAIN, CLIP_MEAN, CLIP_STD, set_colour_weights
from llava.tools.make_tiny_checkpoint import TINY_VISION


def _reference(img) -> np.ndarray:
    """[576, 32] float64 features from the raw pixels, written from the rule in the module docstring."""
    x = np.asarray(img, dtype=np.float64) / 255  # H, W, 3
    quad = x.reshape(24, 2, 7, 24, 2, 7, 3).mean(axis=(2, 5))  # row, qrow, col, qcol, ch
    quad = quad.transpose(0, 2, 1, 3, 4).reshape(576, 4, 3)  # patch, quadrant (tl, tr, bl, br), ch
    f = np.zeros((576, 32))
    f[:, 0:4] = CHROMA_GAIN * (quad[..., 0] - quad[..., 1])
    f[:, 4:8] = CHROMA_GAIN * (quad[..., 1] - quad[..., 2])
    f[:, 8:12] = quad.mean(axis=2) - 0.5
    for p in range(576):
        r, c = divmod(p, 24)
        for k in range(4):
            w = math.pi / 24 * 2 ** k
            f[p, 12 + 4 * k: 16 + 4 * k] = 0.5 * np.array([math.sin(w * r), math.cos(w * r),
                                                            math.sin(w * c), math.cos(w * c)])
    f = (f - f.mean(axis=1, keepdims=True)) / np.sqrt(f.var(axis=1, keepdims=True) + TINY_VISION["layer_norm_eps"])
    return f


@pytest.fixture(scope="module")
def tower():
    torch.manual_seed(0)
    model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION)).eval()
    set_colour_weights(model)
    return model.double()


def _pixels(img):
    from llava.model.multimodal_encoder.clip_encoder import clip_image_processor_class

    proc = clip_image_processor_class()(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD),
                                        resample=3)
    return proc(images=img, return_tensors="pt")["pixel_values"].double()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_equal_the_rule_from_pixels(tower, seed):
    img = synthetic.render(synthetic.make_scene(random.Random(seed)))
    with torch.no_grad():
        out = tower(_pixels(img), output_hidden_states=True)
    # LLaVA's select layer -2 (the features the projector reads), CLS dropped; every layer is an identity
    feats = out.hidden_states[-2][0, 1:].numpy()
    np.testing.assert_allclose(feats, _reference(img), atol=1e-3)
    for h in out.hidden_states[2:]:
        torch.testing.assert_close(h, out.hidden_states[1])


def test_a_coloured_patch_stands_out_and_grey_is_neutral(tower):
    scene = synthetic.make_scene(random.Random(3), n_objects=1)
    shape, colour, _cell, cx, cy, r = scene.objects[0]
    img = synthetic.render(scene)
    with torch.no_grad():
        feats = tower(_pixels(img), output_hidden_states=True).hidden_states[-2][0, 1:]
    centre = (cy // 14) * 24 + cx // 14
    x = np.asarray(img)
    patches = x.reshape(24, 14, 24, 14, 3).transpose(0, 2, 1, 3, 4).reshape(576, -1)
    corner = int(np.flatnonzero((patches == scene.background[0]).all(axis=1))[0])  # a patch of background only
    rg, gb = feats[:, 0:4].mean(1), feats[:, 4:8].mean(1)
    # before the LayerNorm grey has R-G = G-B = 0; after it both stay equal to each other on a grey patch
    assert abs(float(rg[corner] - gb[corner])) < 1e-4  # the processor's float32 pixels
    expect = {"red": (1, 0), "green": (-1, 1), "blue": (0, -1), "yellow": (0, 1)}[colour]
    signs = (float(torch.sign(rg[centre] - rg[corner])), float(torch.sign(gb[centre] - gb[corner])))
    for got, want in zip(signs, expect, strict=True):
        if want:
            assert got == want, (colour, signs)


def test_refuses_a_tower_it_cannot_set():
    model = CLIPVisionModel(CLIPVisionConfig(**{**TINY_VISION, "hidden_size": 64}))
    with pytest.raises(ValueError, match="hidden_size 32"):
        set_colour_weights(model)


def test_checkpoint_tool_writes_it_and_the_runtime_reads_it(tmp_path):
    from llava.model.builder import load_pretrained_model
    from llava.tools.make_tiny_checkpoint import build

    path = build(str(tmp_path / "ckpt"), tower_kind="colour")
    _tok, model, processor, _ctx = load_pretrained_model(path, device="cpu")
    img = synthetic.render(synthetic.make_scene(random.Random(5)))
    pixels = processor(images=img, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = model.get_model().get_vision_tower()(pixels)[0].double().numpy()
    np.testing.assert_allclose(feats, _reference(img), atol=1e-3)
    with pytest.raises(ValueError, match="--tower"):
        build(str(tmp_path / "bad"), tower_kind="learned")
