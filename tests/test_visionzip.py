"""VisionZip: the dominant patches and the contextual tokens against a plain-loop float64 transcription of the
official rule (dvlab-research/VisionZip ``CLIPVisionTower_VisionZip.forward``), fed from transformers' own
``CLIPVisionModel`` (eager attention, ``output_attentions``, a hook on ``layers[-2]``'s ``k_proj``)."""

import os

import numpy as np
import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import Stage, get_method
from entropyprune.methods.visionzip import VisionZipOptions, contextual_tokens, split, target_positions
from entropyprune.vision_inputs import VisionInputs
from llava.mm_utils import process_images
from llava.tools.make_tiny_checkpoint import TOWER_DIR
from tests.conftest import make_image, prompt_batch


# ------------------------------------------------------------------------------------------------ reference
def official_visionzip(cls_row, keys, hidden, dominant, contextual):
    """The official rule for one image, in plain loops and float64.

    ``cls_row`` [h, 1+V]: the CLS row of ``attentions[-2]`` per head; ``keys`` [h, 1+V, d]: ``layers[-2]``'s
    k_proj output per head; ``hidden`` [1+V, Dv]: ``hidden_states[-2]``. ``dominant`` counts the CLS token.
    Returns (the dominant patches, ascending; the official output rows [CLS, dominant patches, contextual]).
    """
    cls_row, keys, hidden = (np.asarray(x, dtype=np.float64) for x in (cls_row, keys, hidden))
    heads, tokens = cls_row.shape
    v = tokens - 1
    score = [sum(cls_row[k, 1 + j] for k in range(heads)) for j in range(v)]
    ranked = sorted(range(v), key=lambda j: (-score[j], j))
    dom = sorted(ranked[: dominant - 1])
    rest = [j for j in range(v) if j not in dom]
    metric = []
    for j in rest:
        m = sum(keys[k, 1 + j] for k in range(heads)) / heads
        metric.append(m / np.sqrt(sum(x * x for x in m)))
    count = len(rest)
    step = max(1, count // contextual) if contextual else 1
    targets = list(range(0, count, step))[:contextual]
    joined = {t: [] for t in targets}
    for p in range(count):
        if p in targets or not targets:  # no targets (contextual=0, our extension): nothing is merged
            continue
        best, best_dot = None, -np.inf
        for t in targets:
            dot = sum(a * b for a, b in zip(metric[p], metric[t], strict=True))
            if dot > best_dot:  # strictly greater: the first target wins a tie (argmax)
                best, best_dot = t, dot
        joined[best].append(p)
    rows = [hidden[0]] + [hidden[1 + j] for j in dom]
    for t in targets:
        row = hidden[1 + rest[t]].copy()
        if joined[t]:
            row = row + sum(hidden[1 + rest[q]] for q in joined[t]) / len(joined[t])
        rows.append(row)
    return dom, np.stack(rows)


def transformers_quantities(tower, pixels):
    """What the official code reads, from transformers' CLIPVisionModel: the CLS rows of attentions[-2],
    layers[-2]'s keys (its k_proj output, per head) and hidden_states[-2]; plus every hidden state."""
    captured = {}
    attn = getattr(tower, "vision_model", tower).encoder.layers[-2].self_attn
    handle = attn.k_proj.register_forward_hook(lambda mod, args, out: captured.setdefault("k", out))
    try:
        with torch.no_grad():
            out = tower(pixels, output_attentions=True, output_hidden_states=True)
    finally:
        handle.remove()
    k = captured["k"]
    keys = k.view(k.shape[0], k.shape[1], attn.num_heads, -1).transpose(1, 2)
    return out.attentions[-2][:, :, 0], keys, out.hidden_states[-2], out.hidden_states


def _random_tower(seed, layers=3, heads=4, width=32, image=84, dtype=torch.float64):
    from transformers import CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
                           num_attention_heads=heads, image_size=image, patch_size=14, attn_implementation="eager")
    return CLIPVisionModel(cfg).eval().to(dtype)


# ------------------------------------------------------------------------------------------------ splits
def test_the_official_splits_and_the_rule_for_other_budgets():
    none = VisionZipOptions()
    assert [split(n, none) for n in (64, 128, 192)] == [(54, 10), (108, 20), (162, 30)]
    assert split(160, none) == (135, 25)  # LLaVA-NeXT's 160 per crop (VisionZip issue #17), same proportion
    assert split(40, none) == (34, 6) and split(16, none) == (13, 3) and split(2, none) == (2, 0)
    for avg, stage in ((64, Stage(0, 53, 11)), (128, Stage(0, 107, 21)), (192, Stage(0, 161, 31))):
        assert PruneConfig(method="visionzip", avg_tokens=avg).schedule(32, 576) == [stage]
    # The official options: dominant counts the CLS token; one given, the other is the rest of the budget.
    assert split(64, VisionZipOptions(dominant=54, contextual=10)) == (54, 10)
    assert split(64, VisionZipOptions(dominant=60)) == (60, 4)
    assert split(64, VisionZipOptions(contextual=20)) == (44, 20)
    assert split(64, VisionZipOptions(dominant=64)) == (64, 0)
    assert PruneConfig(method="visionzip", keep=64, options={"dominant": 54}).schedule(32, 576) == [Stage(0, 53, 11)]
    with pytest.raises(ValueError, match="budget is 64"):
        split(64, VisionZipOptions(dominant=54, contextual=20))
    with pytest.raises(ValueError, match="more than the budget"):
        split(64, VisionZipOptions(dominant=70))
    with pytest.raises(ValueError, match="dominant >= 2"):
        PruneConfig(method="visionzip", keep=1).schedule(32, 576)
    with pytest.raises(ValueError, match="dominant"):
        PruneConfig(method="visionzip", keep=64, options={"dominant": 1})


def test_target_positions_are_the_official_uniform_step():
    for m, c in ((522, 10), (469, 20), (415, 30), (7, 3), (5, 4), (12, 1)):
        targets, others = target_positions(m, c)
        ref = list(range(0, m, max(1, m // c)))[:c]
        assert targets.tolist() == ref
        assert others.tolist() == [p for p in range(m) if p not in ref]


# ------------------------------------------------------------------------------------------------ merge
@pytest.mark.parametrize("m,c,dim", [(20, 4, 8), (31, 5, 3), (9, 8, 6), (50, 1, 4)])
def test_contextual_tokens_equal_the_official_merge(m, c, dim):
    gen = torch.Generator().manual_seed(m * 10 + c)
    metric = torch.randn(3, m, dim, generator=gen, dtype=torch.float64)
    hidden = torch.randn(3, m, 7, generator=gen, dtype=torch.float64)
    got = contextual_tokens(metric, hidden, c)
    assert got.shape == (3, c, 7)
    for i in range(3):
        # The reference on a fake image whose dominant set is empty: CLS only (dominant=1), all m remaining.
        cls_row = np.zeros((1, m + 1))
        keys = np.concatenate([np.zeros((1, 1, dim)), metric[i].numpy()[None]], axis=1)
        rows = np.concatenate([np.zeros((1, 7)), hidden[i].numpy()])
        _, ref = official_visionzip(cls_row, keys, rows, 1, c)
        np.testing.assert_allclose(got[i].numpy(), ref[1:], rtol=1e-12, atol=1e-12)


def test_a_tie_goes_to_the_first_target_and_a_lonely_target_passes_unchanged():
    # Targets at 0 and 2 (step 2); 1 and 3 are equally similar to both: both join target 0; target 2 is alone.
    metric = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 2.0]]], dtype=torch.float64)
    hidden = torch.tensor([[[1.0], [10.0], [100.0], [30.0]]], dtype=torch.float64)
    assert contextual_tokens(metric, hidden, 2)[0, :, 0].tolist() == [1.0 + 20.0, 100.0]


# ------------------------------------------------------------------------------------------------ whole rule
@pytest.mark.parametrize("seed,n,options", [(0, 30, {}), (1, 12, {}), (2, 9, {"dominant": 3}),
                                            (3, 10, {"dominant": 10}), (4, 15, {"contextual": 13})])
def test_random_towers_keep_and_merge_what_the_official_rule_does(seed, n, options):
    tower = _random_tower(seed)
    pixels = torch.randn(2, 3, 84, 84, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cls_rows, keys, feats, states = transformers_quantities(tower, pixels)
    config = PruneConfig(method="visionzip", keep=n, options=options)
    opts = config.method_options()
    d, c = split(n, opts)
    inputs = VisionInputs(config=config, options=opts, hidden_states=states, select_layer=-2, tower=tower,
                          project=lambda x: x)
    (stage,) = config.schedule(32, 36)  # 6 x 6 patches
    assert (stage.keep, stage.merged) == (d - 1, c + 1)
    with torch.no_grad():
        sel = get_method("visionzip")(inputs, stage.keep)
    assert sel.merged.shape == (2, c + 1, 32)
    for i in range(2):
        dom, rows = official_visionzip(cls_rows[i], keys[i], feats[i], d, c)
        assert sel.kept[i].tolist() == dom
        np.testing.assert_allclose(sel.scores[i].double().numpy(), cls_rows[i, :, 1:].sum(0).numpy(), atol=1e-6)
        # merged = [CLS, contextual]: the official rows without the dominant patches.
        np.testing.assert_allclose(sel.merged[i].numpy(), np.concatenate([rows[:1], rows[d:]]), rtol=1e-10,
                                   atol=1e-10)


# ------------------------------------------------------------------------------------------------ tiny model
@pytest.fixture(scope="module")
def hf_tower(tiny_llava):
    from transformers import CLIPVisionModel

    folder = os.path.join(tiny_llava, TOWER_DIR)
    return CLIPVisionModel.from_pretrained(folder, attn_implementation="eager").eval()


def test_the_cls_attention_and_keys_used_are_transformers_attentions_and_keys_of_layer_minus_2(loaded_tiny, hf_tower):
    _, model, proc, _ = loaded_tiny
    px = process_images([make_image(seed=7), make_image(seed=8)], proc, model.config)
    tower = model.get_vision_tower()
    with torch.no_grad():
        inputs = VisionInputs(hidden_states=tower.hidden_states(px), select_layer=tower.select_layer,
                              tower=tower.vision_tower)
        layer = inputs.select_layer - 1  # what visionzip reads
        cls_rows, keys, feats, _ = transformers_quantities(hf_tower, px)
        # attentions[-2] and layers[-2] of transformers' tower:
        assert layer == len(getattr(hf_tower, "vision_model", hf_tower).encoder.layers) - 2
        assert torch.allclose(inputs.cls_attention(layer), cls_rows[:, :, 1:], atol=1e-6)
        assert torch.allclose(inputs.patch_keys(layer), keys[:, :, 1:], atol=1e-5)
        assert torch.allclose(inputs.features, feats[:, 1:], atol=1e-5)


def test_the_model_keeps_and_splices_the_official_tokens_for_a_batch_of_two(loaded_tiny, hf_tower):
    tok, model, proc, _ = loaded_tiny
    n, d, c = 40, 34, 6
    model.set_prune(PruneConfig(method="visionzip", keep=n))
    ids, mask = prompt_batch(tok, ["What is in the picture?", "Describe the colours."])
    px = process_images([make_image(seed=5), make_image(seed=6)], proc, model.config)
    cls_rows, keys, feats, _ = transformers_quantities(hf_tower, px)
    refs = [official_visionzip(cls_rows[i], keys[i], feats[i], d, c) for i in range(2)]

    model(ids, attention_mask=mask, images=px)
    trace = model.get_model().prune_trace
    with torch.no_grad():
        sp = model.splice_multimodal(ids, px, attention_mask=mask)
        projector = model.get_model().mm_projector
        for row, (dom, rows) in enumerate(refs):
            (rec,) = trace[row][0]
            assert rec.layer == 0 and rec.length == 576 and rec.merged == c + 1
            assert rec.kept.tolist() == dom and len(dom) == d - 1
            ((start, count),) = sp.image_spans[row]
            assert count == n
            # Our layout: the dominant patches, then CLS and the contextual tokens (official: CLS first).
            ours = np.concatenate([rows[1:d], rows[:1], rows[d:]])
            expected = projector(torch.tensor(ours, dtype=torch.float32))
            assert torch.allclose(sp.inputs_embeds[row, start:start + n], expected, atol=1e-5)
