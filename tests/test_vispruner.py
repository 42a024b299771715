"""VisPruner: the kept set against a plain-loop transcription of the official rule (float64) on random cases, the
CLS attention against transformers' eager ``output_attentions``, and the tiny model's kept tokens against the rule
recomputed in the test from transformers' CLIPVisionModel."""

import os

import numpy as np
import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods.vispruner import split_budget, vispruner_select
from entropyprune.vision_inputs import VisionInputs
from llava.mm_utils import process_images
from llava.tools.make_tiny_checkpoint import TOWER_DIR
from tests.conftest import make_image, prompt_batch


def official_kept(attention: np.ndarray, features: np.ndarray, n: int, ratio: float) -> list[int]:
    """The official VisPruner rule on one image, with Python lists and float64.

    ``attention``: ``[V]`` the head-averaged CLS attention; ``features``: ``[V, C]``. Important: the top
    ``int(n * ratio)`` by attention. Diverse: rounds that split the residual (attention order) into even and odd
    positions, drop the ``min(8, R - n_div)`` even ones most similar to some odd one, and put the remaining even
    ones first (most similar first), then the odd ones."""
    tokens = len(attention)
    n_imp = int(n * ratio)
    n_div = n - n_imp
    order = sorted(range(tokens), key=lambda j: -attention[j])
    important, residual = order[:n_imp], order[n_imp:]
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    while n_div > 0:
        drop = min(8, len(residual) - n_div)
        if drop <= 0:
            break
        even, odd = residual[0::2], residual[1::2]
        best = (unit[even] @ unit[odd].T).max(axis=1).tolist()
        ranked = sorted(range(len(even)), key=lambda i: -best[i])
        residual = [even[i] for i in ranked[drop:]] + odd
    return sorted(important + (residual if n_div > 0 else []))


@pytest.mark.parametrize("tokens,n,ratio", [(40, 10, 0.5), (40, 9, 0.5), (64, 16, 0.75), (37, 12, 0.5),
                                             (50, 20, 0.0), (50, 20, 1.0), (33, 33, 0.5), (60, 5, 0.29)])
def test_the_kept_set_follows_the_official_rule(tokens, n, ratio):
    gen = torch.Generator().manual_seed(tokens * 10 + n)
    attention = torch.rand(3, tokens, generator=gen, dtype=torch.float64)
    features = torch.randn(3, tokens, 8, generator=gen, dtype=torch.float64)
    kept = vispruner_select(attention, features, n, ratio)
    assert kept.shape == (3, n) and kept.dtype == torch.long
    for i in range(3):
        ref = official_kept(attention[i].numpy(), features[i].numpy(), n, ratio)
        assert kept[i].tolist() == ref
    # float32, as the tiny model's features: the same set.
    assert torch.equal(vispruner_select(attention.float(), features.float(), n, ratio), kept)


def test_the_diverse_rounds_are_not_a_plain_similarity_ranking():
    # The order of the residual matters: a one-shot "drop the most similar" rule would keep other tokens.
    gen = torch.Generator().manual_seed(1)
    attention = torch.rand(1, 48, generator=gen, dtype=torch.float64)
    features = torch.randn(1, 48, 4, generator=gen, dtype=torch.float64)
    kept = vispruner_select(attention, features, 12, 0.5)[0].tolist()
    order = attention[0].argsort(descending=True).tolist()
    unit = features[0] / features[0].norm(dim=-1, keepdim=True)
    sim = unit @ unit.T
    sim.fill_diagonal_(-2)
    rest = order[6:]
    one_shot = sorted(rest, key=lambda j: sim[j, rest].max().item())[:6]
    assert set(kept) >= set(order[:6])
    assert sorted(set(kept) - set(order[:6])) != sorted(one_shot)


def test_the_budget_split_truncates_like_the_official_int():
    assert split_budget(128, 0.5) == (64, 64)
    assert split_budget(64, 0.75) == (48, 16)  # the README's MME example
    assert split_budget(100, 0.29) == (28, 72)  # 100 * 0.29 = 28.999999999999996 in binary floats
    assert split_budget(7, 0.0) == (0, 7) and split_budget(7, 1.0) == (7, 0)


def test_options_default_to_the_official_half_and_are_checked():
    assert PruneConfig(method="vispruner", keep=64).method_options().important_ratio == 0.5
    assert PruneConfig(method="vispruner", keep=64).stage == "vision"
    cfg = PruneConfig(method="vispruner", keep=64, options={"important_ratio": "0.75"})
    assert cfg.method_options().important_ratio == 0.75
    with pytest.raises(ValueError, match="important_ratio must be in"):
        PruneConfig(method="vispruner", keep=64, options={"important_ratio": 1.5})


@pytest.fixture(scope="module")
def tower(tiny_llava):
    from transformers import CLIPVisionModel

    folder = os.path.join(tiny_llava, TOWER_DIR)
    return CLIPVisionModel.from_pretrained(folder, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def float64(tiny_llava):
    """The tiny LLaVA and transformers' CLIP tower in float64.

    Each duplicate-removal round orders the kept even-position tokens by similarity, and that order sets the
    next round's pairs, so a swap of two near-equal similarities changes later picks. The tiny model's
    similarities have gaps near 1e-7, where float32 rounding decides; in float64 the model and the reference
    agree on every order, so the test compares the rule, not the rounding."""
    from transformers import CLIPVisionModel

    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(tiny_llava, device="cpu", torch_dtype=torch.float64)
    folder = os.path.join(tiny_llava, TOWER_DIR)
    tower = CLIPVisionModel.from_pretrained(folder, attn_implementation="eager", dtype=torch.float64).eval()
    return tok, model, proc, tower


def test_cls_attention_equals_transformers_output_attentions_of_the_select_layer(loaded_tiny, tower):
    proc, config = loaded_tiny[2], loaded_tiny[1].config
    px = process_images([make_image(seed=3), make_image(seed=4)], proc, config)
    with torch.no_grad():
        out = tower(px, output_hidden_states=True, output_attentions=True)
        inputs = VisionInputs(hidden_states=out.hidden_states, select_layer=-2, tower=tower)
        layer = inputs.select_attention_layer()
        got = inputs.cls_attention(layer)
    assert layer == 1 == len(out.attentions) - 2  # attentions[-2] of the tiny 3-layer tower
    official = out.attentions[-2][:, :, 0, 1:]  # the official feature_select: CLS row, CLS column dropped
    assert got.shape == official.shape == (2, 2, 576)
    torch.testing.assert_close(got, official, atol=1e-7, rtol=1e-5)
    # A non-negative select layer k indexes attentions[k] (the layer whose input is the features).
    assert VisionInputs(hidden_states=out.hidden_states, select_layer=2, tower=tower).select_attention_layer() == 2
    with pytest.raises(ValueError, match="no attention entry"):
        VisionInputs(hidden_states=out.hidden_states, select_layer=3, tower=tower).select_attention_layer()


@pytest.mark.parametrize("keep,ratio", [(64, 0.5), (42, 0.5), (40, 0.75)])
def test_the_model_keeps_the_official_tokens_for_each_image_of_a_batch(float64, keep, ratio):
    tok, model, proc, tower = float64
    questions = ["What is in the picture?", "Describe the image."]
    images = [make_image(seed=9), make_image(w=300, h=420, seed=10)]
    px = process_images(images, proc, model.config).double()
    model.set_prune(PruneConfig(method="vispruner", keep=keep, options={"important_ratio": ratio}))
    ids, mask = prompt_batch(tok, questions)
    model(ids, attention_mask=mask, images=px)
    trace = model.get_model().prune_trace
    # Reference: transformers' eager CLIP, attentions[-2] (CLS row, patches) averaged over heads, and LLaVA's
    # features hidden_states[-2] without CLS.
    with torch.no_grad():
        out = tower(px, output_hidden_states=True, output_attentions=True)
    attention = out.attentions[-2][:, :, 0, 1:].mean(dim=1).numpy()
    features = out.hidden_states[-2][:, 1:].numpy()
    for row in range(2):
        (rec,) = trace[row][0]
        assert rec.layer == 0 and rec.length == 576
        assert rec.kept.tolist() == official_kept(attention[row], features[row], keep, ratio)
        np.testing.assert_allclose(rec.scores.double().numpy(), attention[row], rtol=1e-5, atol=1e-9)
