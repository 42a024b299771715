"""SparseVLM (ICML'25, main @ 26a5f48 with USE_VERSION=1_0) against a reference written from the official rule.

The reference decoder re-runs the tiny model's layers by hand (own RoPE, causal softmax, attention
probabilities of the pruning layer), picks the raters from the input embeddings, scores, keeps, recycles
and clusters with its own loops, and assembles the sequence as the official code does: system prompt,
kept visual tokens, merged tokens, text, with contiguous positions.
"""

import math

import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import Stage
from entropyprune.methods.sparsevlm import dpc_knn_merge, raters, recycle_counts
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt
from tests.references import ref_layer

TINY = {"pruning_loc": "0,1,2", "token_list": "300,120,40"}  # stage layers 1, 2, 3 of the 4-layer model


def _cfg(**options):
    return PruneConfig(method="sparsevlm", avg_tokens=192, options=TINY | options)


def _inputs(loaded, question="What is it?", seed=0):
    tok, model, proc, _ = loaded
    ids = tokenizer_image_token(vicuna_prompt(question), tok, return_tensors="pt")[None]
    return ids, process_images([make_image(seed=seed)], proc, model.config)


# ------------------------------------------------------------------------------------------ schedule
def test_schedule_192_by_hand():
    # 576 -> keep 300, 276 deleted, int(82.8)+1 = 83 recycled, int(8.3)+1 = 9 clusters -> 309;
    # 309 -> 200, 109 deleted, 33 recycled, 4 clusters -> 204; 204 -> 110, 94, 29, 3 -> 113.
    stages = PruneConfig(method="sparsevlm", avg_tokens=192).schedule(32, 576)
    assert stages == [Stage(3, 300, 9), Stage(7, 200, 4), Stage(16, 110, 3)]
    assert [s.out for s in stages] == [309, 204, 113]
    assert recycle_counts(276, 0.3, 10) == (83, 9)
    assert recycle_counts(109, 0.3, 10) == (33, 4)
    assert recycle_counts(94, 0.3, 10) == (29, 3)


@pytest.mark.parametrize("budget, outs", [(128, [312, 117, 39]), (96, [249, 55, 27]), (64, [82, 32, 18])])
def test_schedule_official_budgets(budget, outs):
    stages = PruneConfig(method="sparsevlm", avg_tokens=budget).schedule(32, 576)
    assert [s.layer for s in stages] == [3, 7, 16]
    assert [s.out for s in stages] == outs


def test_recycle_counts_match_the_official_float_rule():
    for d in range(1, 1200):
        m, c = recycle_counts(d, 0.3, 10)
        assert m == int(d * 0.3) + 1 and c == int(m / 10) + 1
        assert 1 <= c <= m <= d


def test_keep_is_at_most_v_minus_one_and_token_list_overrides_the_budget():
    cfg = PruneConfig(method="sparsevlm", keep=5, options={"token_list": "600,600", "pruning_loc": "2,6"})
    # 576 -> 575 kept, 1 deleted, 1 recycled into 1 cluster -> 576 again.
    assert cfg.schedule(32, 576) == [Stage(3, 575, 1), Stage(7, 575, 1)]
    cfg = PruneConfig(method="sparsevlm", avg_tokens=64, options={"token_list": "10", "pruning_loc": "2",
                                                                  "recycle": "false"})
    assert cfg.schedule(32, 576) == [Stage(3, 10, 0)]


def test_budget_errors_name_the_flags():
    for kw in ({"keep": 100}, {"ratio": 0.25}, {"avg_tokens": 100}, {"avg_tokens": 192.5}):
        with pytest.raises(ValueError, match=r"--prune-avg-tokens 192, 128, 96, 64.*token_list=a,b,c"):
            PruneConfig(method="sparsevlm", **kw).schedule(32, 576)
    assert PruneConfig(method="sparsevlm", avg_tokens=192.0).schedule(32, 576)[0] == Stage(3, 300, 9)
    with pytest.raises(ValueError, match="pruning_loc=2,6.*token_list"):
        PruneConfig(method="sparsevlm", avg_tokens=192, options={"pruning_loc": "2,6"}).schedule(32, 576)
    with pytest.raises(ValueError, match="pruning_loc=2,6,15.*locations 0..2"):
        PruneConfig(method="sparsevlm", avg_tokens=192).schedule(4, 576)
    no_recycle = {"token_list": "1,5", "pruning_loc": "0,1", "recycle": "false"}
    with pytest.raises(ValueError, match="only 1 visual token"):
        PruneConfig(method="sparsevlm", avg_tokens=64, options=no_recycle).schedule(4, 576)


@pytest.mark.parametrize("options, pattern", [
    ({"nope": 1}, "nope is not an option of 'sparsevlm'"),
    ({"positions": "original"}, "positions=original"),
    ({"positions": "keep"}, "positions=keep needs recycle=false"),
    ({"recycle_ratio": "1.0"}, "recycle_ratio must be in"),
    ({"cluster_divisor": "1"}, "cluster_divisor must be >= 2"),
    ({"pruning_loc": "6,2"}, "pruning_loc must be increasing"),
    ({"pruning_loc": ""}, "pruning_loc must be increasing"),
    ({"token_list": "300,0,10"}, "token_list must hold counts >= 1"),
    ({"token_list": "300,200"}, "one count per pruning location"),
    ({"recycle": "maybe"}, "recycle=maybe"),
])
def test_option_errors_name_the_option(options, pattern):
    with pytest.raises(ValueError, match=pattern):
        PruneConfig(method="sparsevlm", avg_tokens=192, options=options)


def test_positions_follow_the_option():
    from entropyprune.methods import get_spec

    spec = get_spec("sparsevlm")
    assert spec.positions(PruneConfig(method="sparsevlm", avg_tokens=192).method_options()) == "renumber"
    opts = PruneConfig(method="sparsevlm", avg_tokens=192, options={"recycle": "0", "positions": "keep"})
    assert spec.positions(opts.method_options()) == "keep"


# ------------------------------------------------------------------------------------------ raters
def _rater_inputs(embeds, image, text, last):
    """PruneInputs of one image in a one-row batch laid out as ``embeds`` [T, D] (no layer has run)."""
    from entropyprune.inputs import PruneInputs, StageContext

    t = embeds.shape[0]
    width = max(1, len(text))
    slots = torch.tensor([text + [0] * (width - len(text))])
    mask = torch.tensor([[True] * len(text) + [False] * (width - len(text))])
    ctx = StageContext(1, embeds[None], {}, torch.arange(t)[None], torch.ones(1, t, dtype=torch.bool),
                       torch.tensor([last]), slots, mask, None, embeds[None], slots)
    ctx.text_mask_original = mask
    image = torch.tensor([image])
    return PruneInputs(context=ctx, rows=torch.tensor([0]), slots=image, original_slots=image)


def test_raters_are_the_text_tokens_above_the_mean_relevance():
    # Image tokens (1, 0) twice; text (2, 0), (0, 0), (0, 1): softmax over the text of [2, 0, 0] per image
    # token gives (0.787, 0.106, 0.106); only the first text token is above the mean 1/3.
    e = torch.tensor([[9.0, 9.0], [1.0, 0.0], [1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 1.0]])
    slots, use = raters(_rater_inputs(e, [1, 2], [3, 4, 5], 5))
    assert slots.tolist() == [[3, 4, 5, 5]] and use.tolist() == [[True, False, False, False]]
    # Strictly above: equal relevance everywhere (one text token, or identical ones) picks none, and then
    # every text token rates (the official code would average over no rater).
    slots, use = raters(_rater_inputs(e, [1, 2], [4], 4))
    assert use.tolist() == [[True, False]]
    slots, use = raters(_rater_inputs(e, [1, 2], [4, 5], 5))
    assert use.tolist() == [[True, True, False]]
    # No text after the image: the last prompt token rates.
    slots, use = raters(_rater_inputs(e[:3], [1, 2], [], 2))
    assert slots.tolist() == [[0, 2]] and use.tolist() == [[False, True]]


# ------------------------------------------------------------------------------------------ clustering
def _ref_cluster(x, c):
    """DPC-kNN as utils.cluster_and_merge states it, token by token (float64); ties to the lower index."""
    x = x.double()
    m, dim = x.shape
    dist = [[float((x[i] - x[j]).norm()) / math.sqrt(dim) for j in range(m)] for i in range(m)]
    density = [math.exp(-sum(v * v for v in sorted(row)[:c]) / c) for row in dist]
    far = max(max(row) for row in dist)
    delta = [min([dist[i][j] for j in range(m) if density[j] > density[i]] or [far]) for i in range(m)]
    score = [delta[i] * density[i] for i in range(m)]
    centres = sorted(range(m), key=lambda i: (-score[i], i))[:c]
    groups = [[] for _ in range(c)]
    for i in range(m):
        if i in centres:
            groups[centres.index(i)].append(i)
        else:
            best = min(range(c), key=lambda r: (dist[centres[r]][i], r))
            groups[best].append(i)
    return torch.stack([x[g].sum(0) / (len(g) + 1e-6) for g in groups]).float(), groups


@pytest.mark.parametrize("m, c", [(83, 9), (33, 4), (29, 3), (7, 1), (5, 5), (1, 1)])
def test_dpc_knn_matches_the_reference(m, c):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(2, m, 64, generator=g) * torch.rand(2, m, 1, generator=g) * 3
    out = dpc_knn_merge(x, c)
    assert out.shape == (2, c, 64) and out.dtype == torch.float32
    for i in range(2):
        ref, _ = _ref_cluster(x[i], c)
        assert torch.allclose(out[i], ref, atol=1e-5)


def test_dpc_knn_three_groups_and_one_cluster():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    points = torch.cat([c + 0.5 * torch.randn(4, 2, generator=g) for c in centres])
    perm = torch.randperm(12, generator=g)
    x = points[perm][None]
    group = (perm // 4).tolist()
    out = dpc_knn_merge(x, 3)
    # One centre per group; the merged tokens come in the centres' rank order.
    means = {k: x[0, [i for i in range(12) if group[i] == k]].sum(0) / (4 + 1e-6) for k in range(3)}
    found = [min(range(3), key=lambda k: float((out[0, r] - means[k]).norm())) for r in range(3)]
    assert sorted(found) == [0, 1, 2]
    assert all(torch.allclose(out[0, r], means[k], atol=1e-5) for r, k in enumerate(found))
    _, ref_groups = _ref_cluster(x[0], 3)
    assert [sorted({group[i] for i in grp}) for grp in ref_groups] == [[k] for k in found]
    one = dpc_knn_merge(x, 1)
    assert torch.allclose(one[0, 0], x[0].sum(0) / (12 + 1e-6), atol=1e-5)


def test_dpc_knn_mutual_nearest_neighbours_tie():
    # With c = 2 the density only sees each token's nearest neighbour, so a mutual pair ties exactly:
    # neither is denser than the other, both get the largest distance as delta and become the two
    # centres (lower index first), and every other token joins the closer of the two.
    a = torch.tensor([[0.0, 0.0], [0.05, 0.0], [0.3, 0.0]])
    b = torch.tensor([[5.0, 5.0], [5.4, 5.0]])
    x = torch.cat([b, a])[None]
    _, groups = _ref_cluster(x[0], 2)
    assert groups == [[2], [0, 1, 3, 4]]
    out = dpc_knn_merge(x, 2)
    assert torch.allclose(out[0, 0], x[0, 2] / (1 + 1e-6))
    assert torch.allclose(out[0, 1], x[0, [0, 1, 3, 4]].sum(0) / (4 + 1e-6))


def test_dpc_knn_ties_go_to_the_lower_index():
    # Four corners of a square: equal densities, so no token is denser than another, every delta is the
    # largest distance and every score ties: the centres are tokens 0 and 1 (opposite corners), in that
    # order. Tokens 2 and 3 are equidistant from both centres and join the better-ranked one, token 0.
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    out = dpc_knn_merge(x, 2)
    _, groups = _ref_cluster(x[0], 2)
    assert groups == [[0, 2, 3], [1]]
    assert torch.allclose(out[0, 0], x[0, [0, 2, 3]].sum(0) / (3 + 1e-6))
    assert torch.allclose(out[0, 1], x[0, 1] / (1 + 1e-6))
    # One cluster of a duplicate pair and a far token: all densities are exp(0) = 1 (the one nearest
    # token is the token itself), so all scores tie and token 0 is the centre; everything joins it.
    y = torch.tensor([[[2.0, 0.0], [2.0, 0.0], [-3.0, 0.0]]])
    out = dpc_knn_merge(y, 1)
    assert torch.allclose(out[0, 0], y[0].mean(0), atol=1e-5)


def test_dpc_knn_each_token_its_own_cluster_when_c_equals_m():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 6, 8, generator=g)
    out = dpc_knn_merge(x, 6)
    _, groups = _ref_cluster(x[0], 6)
    order = [grp[0] for grp in groups]
    assert sorted(order) == list(range(6)) and all(len(grp) == 1 for grp in groups)
    assert torch.allclose(out[0], x[0, order] / (1 + 1e-6))
    with pytest.raises(ValueError, match="cannot make 7 clusters of 6"):
        dpc_knn_merge(x, 7)


# ------------------------------------------------------------------------------------------ reference decoder
def _ref_run(model, embeds, start, prompt_len, loc, counts, recycle=True, renumber=True):
    """The official forward for one prompt (+ generated tokens after prompt_len). Returns the last token's
    logits and, per stage, (kept tokens as original indices, -1 for an earlier merged one; merged count)."""
    n_img = 576
    text = embeds[start + n_img: prompt_len]
    rel = (embeds[start: start + n_img] @ text.T).softmax(dim=1).mean(0)  # [Nt]
    raters = [i for i in range(len(text)) if rel[i] > rel.mean()]
    assert 0 < len(raters) < len(text)  # the rule picks a proper subset on these prompts
    x, pos = embeds, torch.arange(embeds.shape[0])
    ids = list(range(n_img))  # original index of each current visual token
    v_num, records = n_img, []
    for li, layer in enumerate(model.model.layers):
        x, probs = ref_layer(layer, x, pos)
        if li not in loc:
            continue
        avg = probs.mean(0)
        text_start = start + v_num
        r = avg[[text_start + i for i in raters]][:, start: start + v_num].mean(0)
        keep_n = min(counts[loc.index(li)], v_num - 1)
        by_score = sorted(range(v_num), key=lambda j: (-float(r[j]), j))
        kept = sorted(by_score[:keep_n])
        vis = x[start: start + v_num]
        parts = [x[:start], vis[kept]]
        new_ids = [ids[j] for j in kept]
        records.append((list(new_ids), 0))
        if recycle:
            deleted = [j for j in by_score if j not in kept]  # descending score
            m = int(len(deleted) * 0.3) + 1
            merged, _ = _ref_cluster(vis[deleted[:m]], int(m / 10) + 1)
            parts.append(merged)
            new_ids += [-1] * len(merged)
            records[-1] = (records[-1][0], len(merged))
        keep_slots = torch.tensor([start + j for j in kept], dtype=torch.long)
        pos_kept = torch.cat([pos[:start], pos[keep_slots], pos[text_start:]])
        x = torch.cat(parts + [x[text_start:]])
        pos = torch.arange(x.shape[0]) if renumber else pos_kept
        ids, v_num = new_ids, len(new_ids)
    n = model.model.norm
    x = n.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))
    return x[-1] @ model.lm_head.weight.T, records


def _kept(model):
    return [(r.kept.tolist(), r.merged) for r in model.get_model().prune_trace[0][0]]


@pytest.mark.parametrize("options", [{}, {"recycle": "false"}, {"recycle": "false", "positions": "keep"},
                                     {"token_list": "200,40,12"}])
def test_prefill_and_greedy_tokens_equal_the_reference(loaded_tiny, options):
    tok, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, "Describe the picture in detail.", seed=5)
    cfg = _cfg(**options)
    opts = cfg.method_options()
    model.set_prune(cfg)
    out = model.generate(ids, images=px, max_new_tokens=5)[0]
    ours = _kept(model)
    embeds = model.splice_multimodal(ids, px).inputs_embeds[0]
    start = ids[0].tolist().index(-200)
    prompt_len = embeds.shape[0]
    loc = list(opts.pruning_loc)
    kw = dict(recycle=opts.recycle, renumber=opts.positions == "renumber")
    tokens = []
    with torch.no_grad():
        logits, records = _ref_run(model, embeds, start, prompt_len, loc, opts.token_list, **kw)
        assert ours == records
        for step in range(out.shape[0]):
            if step:
                logits, again = _ref_run(model, embeds, start, prompt_len, loc, opts.token_list, **kw)
                assert again == records  # generated tokens do not change the selection
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, model.model.embed_tokens(torch.tensor([tokens[-1]]))])
        res = model(ids, images=px)
    assert out.tolist() == tokens
    full_logits, _ = _ref_run(model, model.splice_multimodal(ids, px).inputs_embeds[0], start, prompt_len, loc,
                              opts.token_list, **kw)
    assert torch.allclose(res.logits[0, -1], full_logits, atol=1e-4)


def test_trace_and_cache_layout(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, seed=2)
    model.set_prune(None)
    t = model(ids, images=px).logits.shape[1]
    model.set_prune(_cfg())
    res = model(ids, images=px, use_cache=True)
    recs = model.get_model().prune_trace[0][0]
    # 576 -> 300 + 9 (276 deleted, 83 recycled); 309 -> 120 + 6 (189, 57); 126 -> 40 + 3 (86, 26).
    assert [(r.layer, r.kept.numel(), r.merged, r.scores.numel()) for r in recs] == [
        (1, 300, 9, 576), (2, 120, 6, 309), (3, 40, 3, 126)]
    assert res.past_key_values.layer_lengths() == [t, t - 267, t - 267 - 183, t - 267 - 183 - 83]
    assert res.logits.shape[1] == t - 533
    assert all(torch.isfinite(r.scores).all() for r in recs)
    # Merged tokens are visual tokens of the next stage: some survive it (kept as -1).
    assert (recs[1].kept < 0).any() or (recs[2].kept < 0).any()


def test_cached_greedy_equals_recomputation(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, "What color is the car?", seed=4)
    model.set_prune(_cfg())
    cached = model.generate(ids, images=px, max_new_tokens=8)
    kept = _kept(model)
    again = model.generate(ids, images=px, max_new_tokens=8, use_cache=False)
    assert cached.tolist() == again.tolist()
    assert _kept(model) == kept


def test_eager_and_sdpa_select_alike(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, seed=9)
    model.set_prune(_cfg())
    outs = {}
    for impl in ("sdpa", "eager"):
        model.model.set_attn_implementation(impl)
        tokens = model.generate(ids, images=px, max_new_tokens=6)
        outs[impl] = (tokens.tolist(), _kept(model))
    assert outs["sdpa"] == outs["eager"]


def test_padded_batch_equals_rows_alone(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(_cfg())
    prompts = [vicuna_prompt("Is there a dog in this picture? Please answer yes or no."), vicuna_prompt("Color?"),
               vicuna_prompt("Tell me a story.", image=False)]
    ids = [tokenizer_image_token(p, tok, return_tensors="pt") for p in prompts]
    width = max(len(x) for x in ids)
    batch = torch.zeros(3, width, dtype=torch.long)
    mask = torch.zeros(3, width, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)], mask[i, : len(x)] = x, 1
    px = process_images([make_image(seed=11), make_image(seed=12)], proc, model.config)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=6)
    trace = model.get_model().prune_trace
    assert [len(row) for row in trace] == [1, 1, 0]
    for i, x in enumerate(ids):
        alone = model.generate(x[None], images=px[i:i + 1] if i < 2 else None, max_new_tokens=6)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist()
        if i < 2:
            assert [(r.kept.tolist(), r.merged) for r in trace[i][0]] == _kept(model)
            for a, b in zip(trace[i][0], model.get_model().prune_trace[0][0], strict=True):
                assert torch.allclose(a.scores, b.scores, atol=1e-6)


def test_text_only_prompt_is_not_pruned(loaded_tiny):
    tok, model, _, _ = loaded_tiny
    ids = tokenizer_image_token(vicuna_prompt("Say hi.", image=False), tok, return_tensors="pt")[None]
    model.set_prune(None)
    base = model(ids).logits
    model.set_prune(_cfg())
    assert torch.equal(model(ids).logits, base)
