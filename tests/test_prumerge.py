"""PruMerge / PruMerge+: the single-head CLS attention, the IQR outlier count, the uniform supplement and the
merge, each against a reference written in the test from the official code (42Shawn/LLaVA-PruMerge
clip_encoder.py), and end to end against transformers' CLIPVisionModel with the official forward hooks on
the layer's q_proj/k_proj."""

import os

import numpy as np
import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import Stage
from entropyprune.methods.prumerge import (
    adaptive_plan,
    merge,
    outlier_counts,
    pruned_sum,
    spread,
    top_mask,
    uniform_mask,
)
from entropyprune.vision_inputs import VisionInputs
from llava.mm_utils import process_images
from llava.tools.make_tiny_checkpoint import TOWER_DIR
from tests.conftest import make_image, prompt_batch

# ---------------------------------------------------------------- references from the official code


def ref_outliers(attn: np.ndarray) -> int:
    """``outlier_dectection``: values strictly above Q3 + 1.5 IQR, np.percentile's default quartiles."""
    q1, q3 = np.percentile(attn, 25), np.percentile(attn, 75)
    return int(np.sum(attn > q3 + 1.5 * (q3 - q1)))


def ref_kept(attn: np.ndarray, plus: bool) -> tuple[list[int], list[int]]:
    """The official kept indices in the official order (topk, then PruMerge+'s filtered uniform positions),
    and the same sorted."""
    tokens = len(attn)
    ratio = ref_outliers(attn) / tokens
    idx = list(np.argsort(-attn, kind="stable")[: int(tokens * ratio)])
    if plus:
        step_length = int(1 / ratio)
        idx += [x for x in range(0, tokens - 1, int(step_length / 3)) if x not in idx]
    return idx, sorted(int(i) for i in idx)


def ref_merge(x: np.ndarray, keys: np.ndarray, attn: np.ndarray, kept: list[int], k: int = 32):
    """The official loop: for each kept patch, the other patches (kept ones first, then the complement) and
    their normalised keys; the k most similar by cosine; ``x_i + sum(cluster * attn)``; and the extra token
    ``sum(non_topk * attn)``."""
    unit = keys / np.maximum(np.linalg.norm(keys, axis=-1, keepdims=True), 1e-12)
    compl = [v for v in range(len(x)) if v not in kept]
    out = []
    for i, j in enumerate(kept):
        rest = kept[:i] + kept[i + 1:] + compl
        cos = unit[rest] @ unit[j]
        cluster = [rest[c] for c in np.argsort(-cos, kind="stable")[:k]]
        out.append(x[j] + (x[cluster] * attn[cluster, None]).sum(0))
    extra = (x[compl] * attn[compl, None]).sum(0)
    return np.array(out).reshape(len(kept), x.shape[1]), extra


# ---------------------------------------------------------------- pieces


def test_outlier_count_is_the_official_iqr_rule():
    # Q1 = 1, Q3 = 2 (linear interpolation over 5 values): the fence is 3.5, and a value on it is no outlier.
    on_fence = torch.tensor([[0.0, 1.0, 1.5, 2.0, 3.5], [0.0, 1.0, 1.5, 2.0, 3.625]])
    assert outlier_counts(on_fence).tolist() == [0, 1]
    gen = torch.Generator().manual_seed(0)
    cases = [torch.randn(6, 576, generator=gen).mul(3).softmax(-1), torch.rand(4, 37, generator=gen) ** 6,
             torch.randint(0, 5, (5, 23), generator=gen).float() ** 3]  # the last with many ties
    for attn in cases:
        got = outlier_counts(attn)
        assert got.dtype == torch.long
        assert got.tolist() == [ref_outliers(row.double().numpy()) for row in attn]
    assert sum(outlier_counts(cases[0]).tolist()) > 0


def _with_outliers(tokens: int, counts: list[int]) -> torch.Tensor:
    """One row per count: ``tokens - c`` spread values in [0, 1] and c values far above them."""
    rows = []
    for c in counts:
        base = torch.linspace(0, 1, tokens - c)
        rows.append(torch.cat([base, torch.full((c,), 50.0) + torch.arange(c)])[torch.randperm(tokens)])
    return torch.stack(rows)


@pytest.mark.parametrize("tokens", [576, 49, 300])
def test_adaptive_plan_reproduces_the_official_int_arithmetic(tokens):
    counts = list(range(tokens // 6 + 1))
    attn = _with_outliers(tokens, counts)
    assert outlier_counts(attn).tolist() == counts
    keep, stride = adaptive_plan(attn)
    ratios = [c / tokens for c in counts]
    assert keep.tolist() == [int(tokens * r) for r in ratios]
    # Where there is no outlier the official 1 / ratio divides by zero; ours then has stride V (only patch 0).
    assert stride.tolist() == [tokens] + [int(int(1 / r) / 3) for r in ratios[1:]]
    for s in stride.tolist():
        assert torch.nonzero(uniform_mask(tokens, torch.tensor([s]))[0]).flatten().tolist() == list(
            range(0, tokens - 1, s))


def test_kept_sets_equal_the_official_topk_and_filtered_uniform_positions():
    gen = torch.Generator().manual_seed(1)
    attn = torch.randn(5, 576, generator=gen).mul(2.5).softmax(-1)
    keep, stride = adaptive_plan(attn)
    top = top_mask(attn, keep)
    plus = top | uniform_mask(576, stride)
    for i in range(5):
        row = attn[i].double().numpy()
        assert torch.nonzero(top[i]).flatten().tolist() == ref_kept(row, plus=False)[1]
        assert torch.nonzero(plus[i]).flatten().tolist() == ref_kept(row, plus=True)[1]
    assert (plus.sum(-1) > top.sum(-1)).all()


def test_top_mask_breaks_ties_toward_the_lower_index():
    attn = torch.tensor([[1.0, 3.0, 3.0, 3.0, 0.0]])
    assert top_mask(attn, torch.tensor([2])).tolist() == [[False, True, True, False, False]]


@pytest.mark.parametrize("tokens,dim,keys_dim,n,k", [(40, 6, 8, 7, 32), (50, 5, 3, 12, 4), (33, 4, 4, 1, 32)])
def test_merge_and_extra_token_equal_the_official_loop(tokens, dim, keys_dim, n, k):
    gen = torch.Generator().manual_seed(tokens)
    x = torch.randn(3, tokens, dim, generator=gen, dtype=torch.float64)
    keys = torch.randn(3, tokens, keys_dim, generator=gen, dtype=torch.float64)
    attn = torch.rand(3, tokens, generator=gen, dtype=torch.float64).softmax(-1)
    kept = torch.stack([torch.randperm(tokens, generator=gen)[:n] for _ in range(3)])
    mask = torch.zeros(3, tokens, dtype=torch.bool).scatter_(-1, kept, True)
    got = merge(x, keys, attn, kept, neighbours=k)
    extra = pruned_sum(x, attn, mask)
    assert got.shape == (3, n, dim) and extra.shape == (3, 1, dim)
    for i in range(3):
        ref, ref_extra = ref_merge(x[i].numpy(), keys[i].numpy(), attn[i].numpy(), kept[i].tolist(), k)
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(extra[i, 0].numpy(), ref_extra, rtol=1e-5, atol=1e-6)


def test_fixed_uniform_positions_are_the_official_fixed_ratio_grid():
    # if_adaptive=False with reduction_ratio=1/8: step 8, arange(4, 575, 8), 72 positions.
    assert spread(576, 72).tolist() == list(range(4, 575, 8))
    assert spread(576, 64).tolist() == list(range(4, 575, 9))
    grid = spread(576, 95).tolist()
    assert len(set(grid)) == 95 and grid == sorted(grid) and grid[-1] < 576


def test_options_budget_and_schedule():
    for name in ("prumerge", "prumerge_plus"):
        assert PruneConfig(method=name).adaptive and PruneConfig(method=name).stage == "vision"
        with pytest.raises(ValueError, match="adaptive"):
            PruneConfig(method=name, keep=64)
        fixed = PruneConfig(method=name, avg_tokens=192, options={"adaptive": False})
        assert not fixed.adaptive
        assert fixed.schedule(32, 576) == [Stage(0, 191, 1)]
        with pytest.raises(ValueError, match="at least 2"):
            PruneConfig(method=name, keep=1, options={"adaptive": False}).schedule(32, 576)


# ---------------------------------------------------------------- the tiny model against transformers' CLIP


@pytest.fixture(scope="module")
def clip_vision(tiny_llava):
    from transformers import CLIPVisionModel

    # Eager attention, so that output_attentions returns the per-head weights.
    return CLIPVisionModel.from_pretrained(os.path.join(tiny_llava, TOWER_DIR), attn_implementation="eager").eval()


def _hooked(clip_vision, px, layer):
    """The official capture: forward hooks on the layer's q_proj / k_proj, full width ``[N, 1+V, C]``."""
    captured = {}
    attn = getattr(clip_vision, "vision_model", clip_vision).encoder.layers[layer].self_attn
    handles = [attn.q_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("q", o)),
               attn.k_proj.register_forward_hook(lambda m, i, o: captured.__setitem__("k", o))]
    try:
        with torch.no_grad():
            out = clip_vision(px, output_hidden_states=True, output_attentions=True)
    finally:
        for h in handles:
            h.remove()
    return out, captured["q"].double(), captured["k"].double()


def _ref_attention(q, k):
    """``softmax(q k^T * C**-0.5)`` of the full width, the CLS row without its own column (float64)."""
    width = q.shape[-1]
    return ((q @ k.transpose(-1, -2)) * width ** -0.5).softmax(-1)[:, 0, 1:]


def test_single_head_cls_attention_equals_the_hooked_q_k_reference(loaded_tiny, clip_vision):
    _, model, proc, _ = loaded_tiny
    px = process_images([make_image(seed=3), make_image(seed=4)], proc, model.config)
    out, q, k = _hooked(clip_vision, px, layer=2)
    inputs = VisionInputs(hidden_states=out.hidden_states, select_layer=-2, tower=clip_vision)
    assert inputs.select_layer == 2
    got = inputs.cls_attention_full(2)
    ref = _ref_attention(q, k)
    assert got.shape == (2, 576) and got.dtype == torch.float32
    assert torch.allclose(got.double(), ref, rtol=1e-4, atol=1e-7)
    # It is not the mean of the per-head attentions (which equal transformers' own weights).
    per_head = out.attentions[2][:, :, 0, 1:]
    assert torch.allclose(inputs.cls_attention(2), per_head, atol=1e-6)
    assert not torch.allclose(got, per_head.mean(1), rtol=1e-2, atol=1e-5)


def _reference(loaded_tiny, clip_vision, images, plus):
    """Per image: the official kept indices (sorted) and the projected merged tokens then the extra one."""
    _, model, proc, _ = loaded_tiny
    px = process_images(images, proc, model.config)
    out, q, k = _hooked(clip_vision, px, layer=2)
    attn = _ref_attention(q, k).numpy()
    feats = out.hidden_states[-2][:, 1:].double().numpy()
    keys = k[:, 1:].numpy()
    refs = []
    for i in range(len(images)):
        order, kept = ref_kept(attn[i], plus)
        merged, extra = ref_merge(feats[i], keys[i], attn[i], [int(v) for v in order])
        by_position = merged[np.argsort(order)]  # ours are in patch order
        tokens = torch.from_numpy(np.concatenate([by_position, extra[None]])).float()
        with torch.no_grad():
            refs.append((kept, model.get_model().mm_projector(tokens), attn[i]))
    return refs


@pytest.mark.parametrize("name", ["prumerge", "prumerge_plus"])
def test_the_model_keeps_and_merges_the_reference_tokens_for_each_image_of_a_batch(loaded_tiny, clip_vision, name):
    tok, model, proc, _ = loaded_tiny
    images = [make_image(seed=5), make_image(seed=6)]
    refs = _reference(loaded_tiny, clip_vision, images, plus=name == "prumerge_plus")
    model.set_prune(PruneConfig(method=name))
    ids, mask = prompt_batch(tok, ["What is in the picture?", "Is there a red square on the left side?"])
    px = process_images(images, proc, model.config)
    sp = model.splice_multimodal(ids, px, attention_mask=mask)
    for row, (kept, tokens, attn) in enumerate(refs):
        (rec,) = sp.vision_trace[row][0]
        assert rec.layer == 0 and rec.length == 576 and rec.merged == 1
        assert rec.kept.tolist() == kept
        np.testing.assert_allclose(rec.scores.double().numpy(), attn, rtol=1e-4, atol=1e-7)
        ((start, count),) = sp.image_spans[row]
        assert count == len(kept) + 1
        assert torch.allclose(sp.inputs_embeds[row, start:start + count], tokens, rtol=1e-4, atol=1e-5)
    # The trace of a full forward records the same.
    model(ids, attention_mask=mask, images=px)
    assert [model.get_model().prune_trace[row][0][0].kept.tolist() for row in range(2)] == [r[0] for r in refs]
    if name == "prumerge_plus":  # the uniform supplement is there
        assert all(len(kept) > 3 * ref_outliers(attn) for kept, _, attn in refs)


@pytest.mark.parametrize("name", ["prumerge", "prumerge_plus"])
def test_fixed_budget_keeps_exactly_n_tokens(loaded_tiny, clip_vision, name):
    tok, model, proc, _ = loaded_tiny
    n = 40
    images = [make_image(seed=7), make_image(seed=8)]
    _, model, proc, _ = loaded_tiny
    px = process_images(images, proc, model.config)
    out, q, k = _hooked(clip_vision, px, layer=2)
    attn = _ref_attention(q, k).numpy()
    feats = out.hidden_states[-2][:, 1:].double().numpy()
    model.set_prune(PruneConfig(method=name, keep=n, options={"adaptive": False}))
    ids, mask = prompt_batch(tok, ["What is it?", "Describe the image."])
    sp = model.splice_multimodal(ids, px, attention_mask=mask)
    for row in range(2):
        (rec,) = sp.vision_trace[row][0]
        ((start, count),) = sp.image_spans[row]
        assert count == n and len(rec.kept) == n - 1 and rec.merged == 1
        if name == "prumerge":
            kept = sorted(np.argsort(-attn[row], kind="stable")[: n - 1].tolist())
        else:  # 19 uniform positions, then the 20 of highest attention among the others
            grid = [(2 * j + 1) * 576 // 38 for j in range(19)]
            others = [v for v in np.argsort(-attn[row], kind="stable") if v not in grid]
            kept = sorted(grid + [int(v) for v in others[:20]])
        assert rec.kept.tolist() == kept
        merged, extra = ref_merge(feats[row], k[row, 1:].numpy(), attn[row], kept)
        with torch.no_grad():
            ref = model.get_model().mm_projector(torch.from_numpy(np.concatenate([merged, extra[None]])).float())
        assert torch.allclose(sp.inputs_embeds[row, start:start + count], ref, rtol=1e-4, atol=1e-5)
