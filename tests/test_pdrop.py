"""PyramidDrop (``pdrop``): its schedule arithmetic, and its kept sets and decoding against a reference.

The reference below is PDrop's rule written from the official code's description, run on transformers'
own ``LlamaForCausalLM`` loaded with the tiny model's language-model weights: at each stage layer l the
hidden states entering l go through transformers' layer-l norm, q/k projections and RoPE, the last token's
softmax row over the whole current sequence is averaged over heads, each image keeps its top tokens (ties
to the lower index, in original order), positions are renumbered 0..n-1 (or kept, for positions=keep),
then transformers' decoder layers run on. Nothing of it is shared with our model or framework.
"""

import math
from fractions import Fraction

import pytest
import torch

from entropyprune.config import PruneConfig, stages_average
from entropyprune.methods import Stage
from entropyprune.methods.pdrop import schedule
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt
from tests.references import transformers_llama

V = 576


def _stages(num_layers=32, num_visual=V, **cfg):
    return PruneConfig(method="pdrop", **cfg).schedule(num_layers, num_visual)


def _counts(stages):
    return [s.keep for s in stages]


# ------------------------------------------------------------------------------------------ schedule


def test_official_schedule_is_ratio_one_half():
    stages = _stages(ratio=0.5)
    assert stages == [Stage(8, 288), Stage(16, 144), Stage(24, 72)]
    assert stages_average(stages, 32, V) == 270  # (8*576 + 8*288 + 8*144 + 8*72) / 32


def test_ratio_and_keep_give_lambda_powers_exactly():
    # The authors' 64-token example (issue #29): lambda = 0.19 at layers 2, 8, 16 -> 109/20/3.
    early = {"layer_list": "2,8,16"}
    assert _counts(_stages(ratio=0.19, options=early)) == [109, 20, 3]
    # keep N: lambda = N / V, so n_s = floor(N^s / V^(s-1)).
    assert _counts(_stages(keep=109, options=early)) == [109, 109**2 // 576, 109**3 // 576**2] == [109, 20, 3]
    assert _counts(_stages(keep=288)) == [288, 144, 72]
    assert _counts(_stages(keep=576)) == [576, 576, 576]
    assert _counts(_stages(ratio=1.0)) == [576, 576, 576]
    # Exact arithmetic: 0.3 is 3/10, and 576 * 0.3^2 = 51.84 (floor 51), 576 * 0.3^3 = 15.552 (floor 15).
    assert _counts(_stages(ratio=0.3)) == [172, 51, 15]
    # V * lambda^s that is an integer is not floored one below by rounding: 0.75^2 * 576 = 324.
    assert _counts(_stages(ratio=0.75)) == [432, 324, 243]
    # One stage, two stages, and another V.
    assert _stages(ratio=0.5, options={"layer_list": "3"}) == [Stage(3, 288)]
    assert _counts(_stages(ratio=0.5, num_visual=100, options={"layer_list": "4,9"})) == [50, 25]


def _brute_force_avg(target, layers, num_layers=32, num_visual=V):
    """The largest n_1 whose schedule (every stage >= 1) averages at most target: tried one by one."""
    best = None
    for n1 in range(1, num_visual + 1):
        counts = [math.floor(Fraction(n1**s, num_visual ** (s - 1))) for s in range(1, len(layers) + 1)]
        if counts[-1] < 1:
            continue
        stages = [Stage(layer, n) for layer, n in zip(layers, counts, strict=True)]
        if stages_average(stages, num_layers, num_visual) <= Fraction(target):
            best = counts
    return best


@pytest.mark.parametrize(("target", "layers", "expected"), [
    (270, (8, 16, 24), [288, 144, 72]),  # the official schedule is the largest at 270 exactly
    (192, (8, 16, 24), [146, 37, 9]),  # averages exactly 192
    (192, (2, 8, 16), [322, 180, 100]),
    (128, (2, 8, 16), [242, 101, 42]),
    (64, (2, 8, 16), [110, 21, 4]),
])
def test_average_budget_takes_the_largest_first_stage_within_it(target, layers, expected):
    opts = {"layer_list": ",".join(map(str, layers))}
    stages = _stages(avg_tokens=target, options=opts)
    assert [s.layer for s in stages] == list(layers)
    assert _counts(stages) == expected == _brute_force_avg(target, layers)
    assert stages_average(stages, 32, V) <= target
    # one more first-stage token would exceed the budget
    n1 = expected[0] + 1
    more = [Stage(layer, math.floor(Fraction(n1**s, V ** (s - 1)))) for s, layer in enumerate(layers, 1)]
    assert stages_average(more, 32, V) > target


def test_average_budget_is_exact_for_decimals():
    # 163.75 is the smallest average the default layers reach (first stage 70: 70/8/1).
    assert _counts(_stages(avg_tokens=163.75)) == [70, 8, 1]
    with pytest.raises(ValueError, match="163.75"):
        _stages(avg_tokens=163.74)
    assert _counts(_stages(avg_tokens=576)) == [576, 576, 576]


def test_unreachable_average_suggests_earlier_layers():
    for target in (128, 64):
        with pytest.raises(ValueError, match=r"--prune-avg-tokens .*not reachable.*layer_list=8,16,24.*"
                                             r">= 163.75.*--prune-option layer_list=2,8,16"):
            _stages(avg_tokens=target)
    with pytest.raises(ValueError, match=r"--prune-avg-tokens 40 is not reachable.*>= 51.625$"):
        _stages(avg_tokens=40, options={"layer_list": "2,8,16"})  # already the suggestion: no hint
    assert _counts(_stages(avg_tokens=51.625, options={"layer_list": "2,8,16"})) == [70, 8, 1]
    with pytest.raises(ValueError, match="--prune-avg-tokens 600 is more than the 576"):
        _stages(avg_tokens=600)


def test_a_stage_keeping_no_token_is_an_error_naming_the_budget():
    with pytest.raises(ValueError, match=r"--prune-ratio 0.01 keeps 5/0/0 .*--prune-ratio >= 0.1202"):
        _stages(ratio=0.01)
    assert _counts(_stages(ratio=0.1202))[-1] >= 1
    with pytest.raises(ValueError, match="--prune-ratio >= 0.1202"):
        _stages(ratio=0.1201)
    with pytest.raises(ValueError, match=r"--prune-keep 60 keeps 60/6/0 .*--prune-keep >= 70"):
        _stages(keep=60)
    assert _counts(_stages(keep=70)) == [70, 8, 1]
    with pytest.raises(ValueError, match="--prune-keep 577 is more than the 576"):
        _stages(keep=577)


def test_prune_layer_is_ignored():
    opts = {"layer_list": "1,3"}
    a = PruneConfig(method="pdrop", layer=1, ratio=0.5, options=opts).schedule(4, V)
    b = PruneConfig(method="pdrop", layer=3, ratio=0.5, options=opts).schedule(4, V)
    assert a == b == [Stage(1, 288), Stage(3, 144)]
    # the schedule function reads only the budget, the options and the sizes
    cfg = PruneConfig(method="pdrop", keep=100, options=opts)
    assert schedule(cfg, cfg.method_options(), 4, V) == [Stage(1, 100), Stage(3, 17)]


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match="--prune-option layer_list=8,16,24: the layers must increase "
                                         r"within \[1, 3\]"):
        _stages(num_layers=4, ratio=0.5)  # the default layers do not fit a 4-layer model
    with pytest.raises(ValueError, match=r"layer_list=1,4.*\[1, 3\]"):
        _stages(num_layers=4, ratio=0.5, options={"layer_list": "1,4"})
    for bad in ("2,2", "3,1", "0,2"):
        with pytest.raises(ValueError, match="--prune-option for 'pdrop': layer_list must be increasing"):
            PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": bad})
    with pytest.raises(ValueError, match="layer_list needs at least one layer"):
        PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": ""})
    with pytest.raises(ValueError, match="--prune-option layer_list=a,b"):
        PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": "a,b"})
    with pytest.raises(ValueError, match="--prune-option positions=gapped.*renumber, keep"):
        PruneConfig(method="pdrop", ratio=0.5, options={"positions": "gapped"})
    with pytest.raises(ValueError, match="--prune-option: ratio_list is not an option of 'pdrop'.*layer_list=8,16,24"):
        PruneConfig(method="pdrop", ratio=0.5, options={"ratio_list": "0.5"})
    cfg = PruneConfig(method="pdrop", ratio=0.5)
    assert cfg.options == {"layer_list": [8, 16, 24], "positions": "renumber"}
    assert cfg.describe(32, V) == "pdrop keep=288@8/144@16/72@24 (avg 270)"


# ------------------------------------------------------------------------------------------ reference


@pytest.fixture(scope="module")
def hf_lm(loaded_tiny):
    """transformers' LlamaForCausalLM (eager) with the tiny LLaVA's language-model weights."""
    return transformers_llama(loaded_tiny[1])


def _stable_top(values, n):
    """Indices of the n largest values, ties to the lower index, in ascending order (plain Python)."""
    vals = values.tolist()
    return sorted(sorted(range(len(vals)), key=lambda i: (-vals[i], i))[:n])


@torch.no_grad()
def _reference(ref, embeds, spans, schedule_, renumber=True, n_prompt=None, fixed=None):
    """PDrop on one sequence: embeds [T, D], spans [(start, V)], schedule_ [(layer, keep)].

    Returns (last-token logits, per image per stage the kept original indices, per image per stage the
    scores). ``n_prompt``: the prompt's length (the scored token is its last; tokens after it are the
    answer so far). ``fixed``: the kept sets to use instead of ranking (decoding keeps the prefill's).
    Decoded tokens keep their original positions when ``renumber`` is False, and otherwise continue from
    each layer's own count.
    """
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    model = ref.model
    x = embeds[None]
    t = x.shape[1]
    n_prompt = t if n_prompt is None else n_prompt
    pos = torch.arange(t)
    current = [torch.arange(v) for _, v in spans]  # original indices of each image's current tokens
    kept_log = [[] for _ in spans]
    score_log = [[] for _ in spans]
    stage_of = {layer: s for s, (layer, _) in enumerate(schedule_)}
    for i, layer in enumerate(model.layers):
        if i in stage_of:
            s, keep = stage_of[i], schedule_[stage_of[i]][1]
            attn = layer.self_attn
            d = attn.head_dim
            a = layer.input_layernorm(x)
            q = attn.q_proj(a).view(1, -1, ref.config.num_attention_heads, d).transpose(1, 2)
            k = attn.k_proj(a).view(1, -1, ref.config.num_key_value_heads, d).transpose(1, 2)
            cos, sin = model.rotary_emb(x, pos[None])
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            # the last prompt token's row: every key before it (the whole current prompt)
            last = n_prompt - sum(v - len(c) for (_, v), c in zip(spans, current, strict=True)) - 1
            keys = k[0, :, : last + 1].repeat_interleave(q.shape[1] // k.shape[1], dim=0)  # [h, last+1, d]
            logits = torch.einsum("hd,htd->ht", q[0, :, last], keys) / math.sqrt(d)
            row = torch.softmax(logits.float(), dim=-1).mean(0)  # mean over heads
            pieces, cursor, new_current = [], 0, []
            for j, (start, _v) in enumerate(spans):
                first = start - sum(vv - len(c) for (_, vv), c in zip(spans[:j], current[:j], strict=True))
                cur = len(current[j])
                scores = row[first: first + cur]
                top = fixed[j][s] if fixed is not None else None
                if top is None:
                    top = _stable_top(scores, keep)
                else:
                    where = {int(o): p for p, o in enumerate(current[j])}
                    top = [where[int(o)] for o in top]
                pieces += list(range(cursor, first)) + [first + p for p in top]
                cursor = first + cur
                new_current.append(current[j][top])
                kept_log[j].append(current[j][top])
                score_log[j].append(scores)
            pieces += list(range(cursor, x.shape[1]))
            index = torch.tensor(pieces)
            x = x[:, index]
            current = new_current
            n_now = x.shape[1]
            pos = torch.arange(n_now) if renumber else pos[index]
        n_now = x.shape[1]
        mask = torch.full((n_now, n_now), float("-inf")).triu(1)[None, None]
        cos, sin = model.rotary_emb(x, pos[None])
        out = layer(x, attention_mask=mask, position_ids=pos[None], position_embeddings=(cos, sin))
        x = out[0] if isinstance(out, tuple) else out
    return ref.lm_head(model.norm(x))[0, -1], kept_log, score_log


def _prompt(loaded, question, seed=0, n_images=1):
    tok, model, proc, _ = loaded
    prompt = vicuna_prompt(question)
    if n_images == 2:
        prompt = prompt.replace("<image>\n", "<image>\nand\n<image>\n")
    ids = tokenizer_image_token(prompt, tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=seed + i) for i in range(n_images)], proc, model.config)
    return ids, pixels


def _sched(cfg, model):
    return [(s.layer, s.keep) for s in cfg.schedule(model.config.num_hidden_layers, V)]


@pytest.mark.parametrize(("layers", "budget"), [
    ("1,2,3", {"ratio": 0.5}),
    ("1,3", {"keep": 200}),
    ("2", {"ratio": 0.25}),
    ("1,2,3", {"avg_tokens": 300}),
])
def test_kept_sets_at_every_stage_equal_the_reference(loaded_tiny, hf_lm, layers, budget):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is in the picture?", seed=3)
    cfg = PruneConfig(method="pdrop", options={"layer_list": layers}, **budget)
    model.set_prune(cfg)
    with torch.no_grad():
        logits = model(ids, images=px).logits[0, -1]
    records = model.get_model().prune_trace[0][0]
    splice = model.splice_multimodal(ids, px)
    ref_logits, kept, scores = _reference(hf_lm, splice.inputs_embeds[0], splice.image_spans[0], _sched(cfg, model))
    assert [r.layer for r in records] == [int(x) for x in layers.split(",")]
    for s, rec in enumerate(records):
        assert rec.kept.tolist() == kept[0][s].tolist()
        assert rec.kept.tolist() == sorted(rec.kept.tolist())
        torch.testing.assert_close(rec.scores, scores[0][s], rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_first_stage_scores_are_the_layers_own_attention(loaded_tiny, hf_lm):
    """Before anything is dropped, the stage at layer l scores with exactly the attention layer l computes:
    transformers' eager ``output_attentions`` of layer l, last row, mean over heads."""
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "Is there a cat?", seed=4)
    for first in (1, 2, 3):
        model.set_prune(PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": str(first)}))
        with torch.no_grad():
            model(ids, images=px)
        rec = model.get_model().prune_trace[0][0][0]
        embeds = model.splice_multimodal(ids, px).inputs_embeds
        with torch.no_grad():
            out = hf_lm(inputs_embeds=embeds, output_attentions=True)
        row = out.attentions[first][0, :, -1].mean(0)[rec.start: rec.start + rec.length]
        torch.testing.assert_close(rec.scores, row, rtol=1e-4, atol=1e-7)
        assert rec.kept.tolist() == _stable_top(row, 288)


def test_two_images_are_ranked_each_from_the_same_row(loaded_tiny, hf_lm):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "Compare them.", seed=5, n_images=2)
    cfg = PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": "1,3"})
    model.set_prune(cfg)
    with torch.no_grad():
        logits = model(ids, images=px).logits[0, -1]
    trace = model.get_model().prune_trace[0]
    splice = model.splice_multimodal(ids, px)
    ref_logits, kept, _ = _reference(hf_lm, splice.inputs_embeds[0], splice.image_spans[0], _sched(cfg, model))
    assert len(trace) == 2
    for j in range(2):
        assert [r.kept.tolist() for r in trace[j]] == [k.tolist() for k in kept[j]]
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)


def test_keeping_every_token_reproduces_the_unpruned_model(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is it?")
    model.set_prune(None)
    with torch.no_grad():
        base = model(ids, images=px).logits
    for positions in ("renumber", "keep"):
        model.set_prune(PruneConfig(method="pdrop", ratio=1.0, options={"layer_list": "1,2,3",
                                                                        "positions": positions}))
        with torch.no_grad():
            full = model(ids, images=px).logits
        assert full.shape == base.shape and (full - base).abs().max() <= 1e-5
        assert all(r.kept.tolist() == list(range(V)) for r in model.get_model().prune_trace[0][0])


@pytest.mark.parametrize("positions", ["renumber", "keep"])
def test_greedy_decoding_equals_recomputation_and_the_reference(loaded_tiny, hf_lm, positions):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "Describe the picture.", seed=7)
    cfg = PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": "1,2,3", "positions": positions})
    model.set_prune(cfg)
    cached = model.generate(ids, images=px, max_new_tokens=6)
    trace = [r.kept for r in model.get_model().prune_trace[0][0]]
    recomputed = model.generate(ids, images=px, max_new_tokens=6, use_cache=False)
    assert cached.tolist() == recomputed.tolist()
    assert [r.kept.tolist() for r in model.get_model().prune_trace[0][0]] == [k.tolist() for k in trace]
    # The reference decoder: the prefill's kept sets stay; each step recomputes everything from scratch,
    # the new tokens' positions continuing from each layer's own count (renumber) or the original one.
    splice = model.splice_multimodal(ids, px)
    embeds, spans, n_prompt = splice.inputs_embeds[0], splice.image_spans[0], splice.inputs_embeds.shape[1]
    tokens, fixed = [], None
    with torch.no_grad():
        for _ in range(cached.shape[1]):
            logits, kept, _ = _reference(hf_lm, embeds, spans, _sched(cfg, model), positions == "renumber",
                                         n_prompt=n_prompt, fixed=fixed)
            if fixed is None:
                fixed = kept
                assert [k.tolist() for k in kept[0]] == [k.tolist() for k in trace]
            tokens.append(int(logits.argmax()))
            embeds = torch.cat([embeds, hf_lm.model.embed_tokens(torch.tensor([tokens[-1]]))])
    assert cached[0].tolist() == tokens
    # The cache holds only the kept tokens from each stage on; decoding continues from the original count.
    t = n_prompt
    with torch.no_grad():
        res = model(ids, images=px, use_cache=True)
    assert res.past_key_values.layer_lengths() == [t, t - 288, t - 432, t - 504]
    assert res.past_key_values.next_position.tolist() == [t]


def test_renumbered_prefill_equals_a_fresh_forward_of_the_pruned_sequence(loaded_tiny, hf_lm):
    """After the last stage the positions are contiguous: the last stage's layers see the pruned sequence as
    if it had been the prompt. With one stage at layer 1, layer 0 is the only one that saw every token, so
    running layers 1.. on its pruned output at positions 0..n-1 gives the logits."""
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What color?", seed=8)
    model.set_prune(PruneConfig(method="pdrop", keep=100, options={"layer_list": "1"}))
    with torch.no_grad():
        logits = model(ids, images=px).logits[0]
    rec = model.get_model().prune_trace[0][0][0]
    embeds = model.splice_multimodal(ids, px).inputs_embeds
    with torch.no_grad():
        h1 = hf_lm(inputs_embeds=embeds, output_hidden_states=True).hidden_states[1][0]  # entering layer 1
        t = h1.shape[0]
        keep = torch.cat([torch.arange(rec.start), rec.start + rec.kept, torch.arange(rec.start + rec.length, t)])
        x = h1[keep][None]
        pos = torch.arange(x.shape[1])[None]
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf")).triu(1)[None, None]
        cos, sin = hf_lm.model.rotary_emb(x, pos)
        for layer in hf_lm.model.layers[1:]:
            out = layer(x, attention_mask=mask, position_ids=pos, position_embeddings=(cos, sin))
            x = out[0] if isinstance(out, tuple) else out
        ref = hf_lm.lm_head(hf_lm.model.norm(x))[0]
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-4)


def test_padded_batch_equals_each_row_alone(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="pdrop", ratio=0.5, options={"layer_list": "1,2,3"}))
    prompts = [vicuna_prompt("Is there a dog in this picture? Please answer yes or no."), vicuna_prompt("Color?"),
               vicuna_prompt("Tell me a story.", image=False)]
    ids = [tokenizer_image_token(p, tok, return_tensors="pt") for p in prompts]
    width = max(len(x) for x in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)], mask[i, : len(x)] = x, 1
    px = process_images([make_image(seed=11), make_image(seed=12)], proc, model.config)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=8)
    trace = model.get_model().prune_trace
    assert [len(row) for row in trace] == [1, 1, 0]
    for i, x in enumerate(ids):
        images = px[i: i + 1] if i < 2 else None
        alone = model.generate(x[None], images=images, max_new_tokens=8)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist()
        if i < 2:
            mine = model.get_model().prune_trace[0][0]
            assert [r.kept.tolist() for r in mine] == [r.kept.tolist() for r in trace[i][0]]
            assert [r.kept.numel() for r in mine] == [288, 144, 72]


def test_eager_and_sdpa_select_alike(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is it?", seed=9)
    model.set_prune(PruneConfig(method="pdrop", keep=150, options={"layer_list": "1,2,3"}))
    outs = {}
    for impl in ("sdpa", "eager"):
        model.get_model().set_attn_implementation(impl)
        tokens = model.generate(ids, images=px, max_new_tokens=6)
        outs[impl] = (tokens.tolist(), [r.kept.tolist() for r in model.get_model().prune_trace[0][0]])
    assert outs["sdpa"] == outs["eager"]


def test_set_prune_rejects_layers_outside_the_model(loaded_tiny):
    _, model, _, _ = loaded_tiny
    with pytest.raises(ValueError, match="--prune-option layer_list=8,16,24"):
        model.set_prune(PruneConfig(method="pdrop", ratio=0.5))  # the tiny model has 4 layers
    model.set_prune(None)
