"""DART (``dart``): CPython's set order on the device, the schedule, and the kept sets against a reference.

The reference below is DART's rule written from the official ``get_retained_image_token`` (batch 1), run on
transformers' own ``LlamaForCausalLM`` loaded with the tiny model's language-model weights: layer K-1's
post-RoPE keys are recomputed from transformers' hidden states with its norm, k_proj and RoPE, heads
concatenated; pivots by L1 norm; a real Python ``set`` of absolute sequence positions gives the pivot
order; cosine similarities after transformers' final norm of the hidden states entering layer K; each
pivot takes the least similar remaining candidates (ties to the lower index). Nothing of it is shared with
our model or framework.
"""

import random

import pytest
import torch
import torch.nn.functional as F

from entropyprune.config import PruneConfig
from entropyprune.inputs import PruneInputs, StageContext
from entropyprune.methods import Stage, get_method
from entropyprune.methods.dart import Options, cpython_set_order, schedule
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt
from tests.references import transformers_llama

V = 576


# ------------------------------------------------------------------------------------ CPython set order


def _emulated(lists):
    values = torch.tensor(lists, dtype=torch.long)
    return values.gather(1, cpython_set_order(values)).tolist()


def _random_lists(rng, n, count):
    out = []
    for _ in range(count):
        kind = rng.random()
        if kind < 0.4:
            xs = rng.sample(range(3001), n)
        elif kind < 0.55:  # all in one residue class mod 32: every key collides in the 32-slot table
            base = rng.randrange(3000)
            xs = [base + 32 * k for k in rng.sample(range(80), n)]
        elif kind < 0.7:  # mod 8: collisions in the first, 8-slot table
            base = rng.randrange(3000)
            xs = [base + 8 * k for k in rng.sample(range(300), n)]
        elif kind < 0.85:  # consecutive values, shuffled
            base = rng.randrange(3000)
            xs = rng.sample(range(base, base + n), n)
        else:  # DART-like: 4 image pivots in a 576-token span, 4 text pivots after it
            start = rng.randrange(0, 60)
            xs = [start + i for i in rng.sample(range(576), min(n, 4))]
            xs += [start + 576 + i for i in rng.sample(range(60), n - len(xs))]
        out.append(xs)
    return out


@pytest.mark.parametrize("n", [8, 1, 2, 4, 5, 6, 7, 9, 12, 16, 19, 20, 32])
def test_set_order_equals_python_sets(n):
    rng = random.Random(n)
    lists = _random_lists(rng, n, 400)
    assert _emulated(lists) == [list(set(xs)) for xs in lists]


def test_set_order_edge_cases():
    cases = [
        [600, 40, 100, 37, 650, 700, 612, 615],  # the note's example
        [0, 32, 64, 96, 128, 160, 192, 224],  # one slot mod 32, then linear probing
        [31, 63, 95, 127, 159, 191, 223, 255],  # the last slot: no room for linear probes, perturbation
        [7, 15, 23, 31, 39, 47, 55, 63],  # the last slot of the 8-slot table
        [35, 36, 37, 38, 611, 612, 613, 614],
        [614, 613, 612, 611, 38, 37, 36, 35],
        [3000, 2999, 0, 1, 2968, 2936, 2904, 29],
        [8, 0, 16, 24, 4, 12, 20, 28],
        [2**60 + 3, 2**45, 31, 2**61 - 2, 2**33 + 31, 0, 1, 63],  # large keys: 13 rounds of perturbation
    ]
    assert _emulated(cases) == [list(set(xs)) for xs in cases]
    # ordering does depend on insertion order when keys collide
    assert list(set([32, 0, 64, 96, 128, 1, 2, 3])) != list(set([0, 32, 64, 96, 128, 1, 2, 3]))
    assert _emulated([[32, 0, 64, 96, 128, 1, 2, 3]]) == [list(set([32, 0, 64, 96, 128, 1, 2, 3]))]
    assert cpython_set_order(torch.zeros(3, 0, dtype=torch.long)).shape == (3, 0)
    assert _emulated([[5]]) == [[5]]


def test_set_order_of_many_rows_at_once_and_int32_input():
    rng = random.Random(99)
    lists = _random_lists(rng, 8, 64)
    values = torch.tensor(lists, dtype=torch.int32)
    order = cpython_set_order(values)
    assert order.dtype == torch.long and order.shape == (64, 8)
    assert values.long().gather(1, order).tolist() == [list(set(xs)) for xs in lists]


# ------------------------------------------------------------------------------------------ schedule


def _cfg(**kw):
    return PruneConfig(method="dart", **kw)


def test_schedule_from_our_budget_and_from_max_num_trunction():
    # M = 0: the largest 4 + 8k within N.
    assert schedule(_cfg(keep=100), Options(), 32, V) == [Stage(2, 100)]
    assert _cfg(keep=132).schedule(32, V) == [Stage(2, 132)]  # = the official M = 128
    assert _cfg(keep=131).schedule(32, V) == [Stage(2, 124)]
    assert _cfg(avg_tokens=128).schedule(32, V) == [Stage(2, 92)]  # N = 98 -> 4 + 8 * 11
    assert _cfg(avg_tokens=192).schedule(32, V) == [Stage(2, 164)]  # N = 166
    assert _cfg(avg_tokens=64).schedule(32, V) == [Stage(2, 28)]  # N = 29
    assert _cfg(keep=576).schedule(32, V) == [Stage(2, 572)]
    assert _cfg(keep=5).schedule(32, V) == [Stage(2, 4)]  # only the image pivots
    assert _cfg(layer=3, ratio=0.25).schedule(32, V) == [Stage(3, 140)]  # N = 144
    # M > 0: the official count, the budget ignored.
    for m, keep in ((128, 132), (192, 196), (64, 68), (130, 132), (7, 4)):
        assert _cfg(keep=10, options={"max_num_trunction": m}).schedule(32, V) == [Stage(2, keep)]
    assert _cfg(keep=10, options={"max_num_trunction": 128, "pivot_image": 2, "pivot_text": 6}).schedule(
        32, V) == [Stage(2, 130)]
    assert _cfg(keep=10, options={"pivot_image": 0, "pivot_text": 4}).schedule(32, V) == [Stage(2, 8)]
    assert _cfg(keep=576, options={"pivot_image": 0, "pivot_text": 4}).schedule(32, V) == [Stage(2, 576)]
    assert _cfg(keep=100).describe(32, V) == "dart@K2 keep=100 (avg 129.8)"


def test_schedule_errors_name_the_flag():
    with pytest.raises(ValueError, match=r"--prune-keep 3 keeps 3 visual tokens, fewer than the 4 image pivots"):
        _cfg(keep=3).schedule(32, V)
    with pytest.raises(ValueError, match=r"--prune-avg-tokens 39 keeps 3 visual tokens.*pivot_image=4"):
        _cfg(avg_tokens=39).schedule(32, V)  # N = floor((32 * 39 - 2 * 576) / 30) = 3
    assert _cfg(avg_tokens=40).schedule(32, V) == [Stage(2, 4)]  # N = 4
    with pytest.raises(ValueError, match=r"max_num_trunction=600 .* 604 in all, more than the 576 .*"
                                         r"max_num_trunction < 573"):
        _cfg(keep=10, options={"max_num_trunction": 600}).schedule(32, V)
    assert _cfg(keep=10, options={"max_num_trunction": 572}).schedule(32, V) == [Stage(2, 572)]
    with pytest.raises(ValueError, match=r"an image has 3 visual tokens, fewer than the 4 image pivots"):
        _cfg(keep=3).schedule(32, 3)
    with pytest.raises(ValueError, match=r"--prune-keep 3 keeps no visual token.*at least 4"):
        _cfg(keep=3, options={"pivot_image": 0}).schedule(32, V)
    with pytest.raises(ValueError, match=r"max_num_trunction=3 keeps no visual token"):
        _cfg(keep=10, options={"pivot_image": 0, "max_num_trunction": 3}).schedule(32, V)
    with pytest.raises(ValueError, match="--prune-layer"):
        _cfg(layer=32, keep=10, options={"max_num_trunction": 128}).schedule(32, V)
    with pytest.raises(ValueError, match="--prune-layer"):
        _cfg(layer=32, keep=10).schedule(32, V)


def test_option_errors_name_the_option():
    with pytest.raises(ValueError, match=r"--prune-option: pivots is not an option of 'dart'; its options are "
                                         r"pivot_image=4; pivot_text=4; max_num_trunction=0"):
        _cfg(keep=10, options={"pivots": 4})
    for bad in ({"pivot_image": "x"}, {"pivot_text": "1.5"}, {"max_num_trunction": "many"}):
        with pytest.raises(ValueError, match="not a valid value for 'dart'"):
            _cfg(keep=10, options=bad)
    with pytest.raises(ValueError, match="--prune-option for 'dart': pivot_text must be >= 0, got -1"):
        _cfg(keep=10, options={"pivot_text": -1})
    with pytest.raises(ValueError, match="max_num_trunction must be >= 0"):
        _cfg(keep=10, options={"max_num_trunction": -8})
    with pytest.raises(ValueError, match="at least one pivot"):
        _cfg(keep=10, options={"pivot_image": 0, "pivot_text": 0})
    assert _cfg(keep=10).options == {"pivot_image": 4, "pivot_text": 4, "max_num_trunction": 0}


# ------------------------------------------------------------------------------------------ hand-built


def _reference_row(keys, normed, spans, text, positions, options, per, use_set=True):
    """The official rule on one row. keys [T, h*d], normed [T, D], spans [(first slot, v)], text: the
    instruction's slots, positions [T] (what the official batch-1 indices are). Returns kept per image.
    ``use_set=False`` visits the pivots in list order instead (to show that the order matters)."""
    text_norm = keys[text].abs().sum(-1).tolist()
    text_top = sorted(range(len(text)), key=lambda i: (-text_norm[i], i))[: options.pivot_text]
    text_pivots = [int(positions[text[i]]) for i in text_top]
    out = []
    for first, v in spans:
        slot_of = {int(positions[first + i]): first + i for i in range(v)}
        norm = keys[first: first + v].abs().sum(-1).tolist()
        top = sorted(range(v), key=lambda i: (-norm[i], i))[: options.pivot_image]
        image_pivots = [int(positions[first + i]) for i in top]
        for p in text_pivots:
            slot_of[p] = text[[int(positions[s]) for s in text].index(p)]
        indices = set(image_pivots + text_pivots)
        valid = set(int(positions[first + i]) for i in range(v)) - set(image_pivots)
        for item in list(indices) if use_set else image_pivots + text_pivots:
            cand = sorted(valid)
            cos = -F.cosine_similarity(normed[slot_of[item]], normed[[slot_of[c] for c in cand]], dim=-1)
            vals = cos.tolist()
            take = [cand[i] for i in sorted(range(len(cand)), key=lambda i: (-vals[i], i))[:per]]
            indices.update(take)
            valid.difference_update(take)
        indices.difference_update(text_pivots)
        out.append(sorted(slot_of[p] - first for p in indices))
    return out


class _Norm(torch.nn.Module):
    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5)


class _LM(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = _Norm()


def _hand_inputs(rows, options, image_len=24, keep=None, seed=0, heads=2, head_dim=4, dim=6, dtype=torch.float32):
    """A StageContext by hand: rows = [(pad, prefix, text_after)] per batch row, one image each, the rows
    left-padded to a common width (at least ``pad`` slots); positions count from the first real token."""
    g = torch.Generator().manual_seed(seed)
    width = max(p + a + image_len + t for p, a, t in rows)
    b = len(rows)
    key = torch.randn(b, heads, width, head_dim, generator=g).to(dtype)
    hidden = torch.randn(b, width, dim, generator=g).to(dtype)
    position_ids = torch.zeros(b, width, dtype=torch.long)
    valid = torch.zeros(b, width, dtype=torch.bool)
    lt = max(1, max(t for _, _, t in rows))
    text_slots = torch.zeros(b, lt, dtype=torch.long)
    text_mask = torch.zeros(b, lt, dtype=torch.bool)
    starts = []
    for r, (_pad, a, t) in enumerate(rows):
        shift = width - (a + image_len + t)  # every row ends at the right edge
        n = a + image_len + t
        position_ids[r, shift: shift + n] = torch.arange(n)
        valid[r, shift: shift + n] = True
        text_slots[r, :t] = torch.arange(shift + a + image_len, shift + n)
        text_mask[r, :t] = True
        starts.append(shift + a)
    ctx = StageContext(2, hidden, {"key": key, "query": key}, position_ids, valid, torch.zeros(b, dtype=torch.long),
                       text_slots, text_mask, _LM())
    ctx.text_lengths = [t for _, _, t in rows]
    slots = torch.tensor(starts)[:, None] + torch.arange(image_len)[None]
    inputs = PruneInputs(config=_cfg(keep=keep or 10), options=options, context=ctx, rows=torch.arange(b),
                         slots=slots, original=torch.arange(image_len)[None].expand(b, -1))
    ctx.groups.append(inputs)
    return inputs, starts


def _reference_for(inputs, starts, options, per, image_len=24, use_set=True):
    ctx = inputs.context
    out = []
    for r, first in enumerate(starts):
        keys = ctx.capture["key"][r].permute(1, 0, 2).reshape(ctx.hidden.shape[1], -1)
        normed = ctx.model.norm(ctx.hidden[r])
        text = ctx.text_slots[r][ctx.text_mask[r]].tolist()
        out += _reference_row(keys, normed, [(first, image_len)], text, ctx.position_ids[r], options, per, use_set)
    return out


@pytest.mark.parametrize("seed", range(6))
def test_hand_built_rows_equal_the_reference(seed):
    options = Options()
    rows = [(0, 35, 9), (3, 35, 5), (7, 2, 4), (1, 0, 12)]
    for per in (0, 1, 2):
        keep = 4 + 8 * per
        inputs, starts = _hand_inputs(rows, options, keep=keep, seed=seed)
        sel = get_method("dart")(inputs, keep)
        assert sel.kept.tolist() == _reference_for(inputs, starts, options, per)
        assert sel.kept.shape == (4, keep) and (sel.scores > 0).sum(1).tolist() == [keep] * 4
        # scores: 9 for an image pivot, 8 - t for the t-th pivot's picks
        assert sorted(set(sel.scores[0].tolist()) - {0.0}) == ([9.0] if per == 0 else list(range(1, 10)))


def test_other_pivot_counts_equal_the_reference():
    rows = [(0, 35, 9), (2, 5, 7)]
    for pi, pt, per in ((2, 6, 1), (0, 3, 2), (5, 0, 2), (4, 3, 1), (1, 1, 5)):
        options = Options(pivot_image=pi, pivot_text=pt)
        keep = pi + (pi + pt) * per
        inputs, starts = _hand_inputs(rows, options, keep=keep, seed=pi * 10 + pt)
        assert get_method("dart")(inputs, keep).kept.tolist() == _reference_for(inputs, starts, options, per)


def test_the_pivot_order_is_the_sets_and_uses_positions_not_slots():
    """With many picks per pivot, the order in which pivots pick changes the kept set; left padding moves
    the slots but not the positions (the official batch-1 indices), so the kept set stays."""
    options = Options()
    changed_by_order = 0
    for seed in range(8):
        alone, starts = _hand_inputs([(0, 35, 9)], options, keep=4 + 8 * 2, seed=seed)
        sel = get_method("dart")(alone, 20)
        assert sel.kept.tolist() == _reference_for(alone, starts, options, 2)
        # the same row left-padded by 5 next to a longer row (the pad slots' states are never read)
        padded, pstarts = _hand_inputs([(5, 35, 9), (0, 40, 9)], options, keep=20, seed=seed + 100)
        assert pstarts[0] == 40
        for name in ("key", "query"):
            padded.context.capture[name][0, :, 5:] = alone.context.capture[name][0]
        padded.context.hidden[0, 5:] = alone.context.hidden[0]
        got = get_method("dart")(padded, 20).kept.tolist()
        assert got[0] == sel.kept[0].tolist()
        assert got == _reference_for(padded, pstarts, options, 2)
        # list order instead of set order: a different kept set for some seeds
        changed_by_order += _reference_for(alone, starts, options, 2, use_set=False) != sel.kept.tolist()
    assert changed_by_order  # the set's order, not the list's, is what gives these kept sets


def test_ties_go_to_the_lower_index():
    options = Options(pivot_image=1, pivot_text=1)
    inputs, _ = _hand_inputs([(0, 3, 2)], options, image_len=8, keep=3)
    ctx = inputs.context
    ctx.capture["key"][:] = 1.0  # every L1 norm ties: the first image token and the first text token pivot
    ctx.hidden[:] = 1.0  # every similarity ties too
    sel = get_method("dart")(inputs, 3)
    assert sel.kept.tolist() == [[0, 1, 2]]
    sel = get_method("dart")(inputs, 5)
    assert sel.kept.tolist() == [[0, 1, 2, 3, 4]]


def test_half_precision_and_count_errors():
    options = Options()
    inputs, starts = _hand_inputs([(0, 35, 9), (1, 4, 6)], options, keep=12, dtype=torch.float16)
    sel = get_method("dart")(inputs, 12)
    assert sel.kept.shape == (2, 12) and sel.scores.dtype == torch.float32
    with pytest.raises(ValueError, match="cannot keep 13"):
        get_method("dart")(inputs, 13)
    with pytest.raises(ValueError, match="24 image tokens leave 20 candidates, fewer than 8 x 3"):
        get_method("dart")(inputs, 28)


def test_too_short_an_instruction_is_an_error():
    options = Options()
    inputs, _ = _hand_inputs([(0, 35, 9), (0, 35, 3)], options, keep=12)
    with pytest.raises(ValueError, match=r"only 3 instruction token\(s\) after its last image, fewer than the 4 "
                                         r"text pivots \(--prune-option pivot_text=4\)"):
        get_method("dart")(inputs, 12)
    inputs, starts = _hand_inputs([(0, 35, 9), (0, 35, 0)], Options(pivot_text=0), keep=12)
    assert get_method("dart")(inputs, 12).kept.tolist() == _reference_for(inputs, starts, Options(pivot_text=0), 2)


# ------------------------------------------------------------------------------------------ the model


@pytest.fixture(scope="module")
def hf_lm(loaded_tiny):
    """transformers' LlamaForCausalLM (eager) with the tiny LLaVA's language-model weights."""
    return transformers_llama(loaded_tiny[1])


@torch.no_grad()
def _reference_kept(ref, embeds, spans, k, options, per, use_set=True):
    """DART's kept sets for one prompt (embeds [T, D], spans [(start, V)]) at layer K, from transformers."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    out = ref.model(inputs_embeds=embeds[None], output_hidden_states=True)
    entering_prev, entering_k = out.hidden_states[k - 1], out.hidden_states[k]
    layer = ref.model.layers[k - 1]
    t = embeds.shape[0]
    pos = torch.arange(t)[None]
    a = layer.input_layernorm(entering_prev)
    hkv, d = ref.config.num_key_value_heads, ref.config.hidden_size // ref.config.num_attention_heads
    key = layer.self_attn.k_proj(a).view(1, t, hkv, d).transpose(1, 2)
    cos, sin = ref.model.rotary_emb(entering_prev, pos)
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    keys = key.permute(0, 2, 1, 3).reshape(t, hkv * d)  # heads concatenated
    normed = ref.model.norm(entering_k[0])
    last_start, last_v = spans[-1]
    text = list(range(last_start + last_v, t))  # everything after the (last) image
    return _reference_row(keys, normed, spans, text, torch.arange(t), options, per, use_set)


def _prompt(loaded, question, seed=0, n_images=1):
    tok, model, proc, _ = loaded
    prompt = vicuna_prompt(question)
    if n_images == 2:
        prompt = prompt.replace("<image>\n", "<image>\nand\n<image>\n")
    ids = tokenizer_image_token(prompt, tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=seed + i) for i in range(n_images)], proc, model.config)
    return ids.to(model.device), pixels.to(model.device)


@pytest.mark.parametrize(("k", "budget", "options"), [
    (2, {"keep": 100}, {}),
    (1, {"keep": 132}, {}),
    (3, {"keep": 10}, {"max_num_trunction": 128}),
    (2, {"ratio": 0.25}, {"pivot_image": 2, "pivot_text": 6}),
    (2, {"keep": 200}, {"pivot_text": 1}),
])
def test_kept_sets_equal_the_reference_on_transformers(loaded_tiny, hf_lm, k, budget, options):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is in the picture? Answer in one word.", seed=3 + k)
    cfg = PruneConfig(method="dart", layer=k, options=options, **budget)
    (stage,) = cfg.schedule(model.config.num_hidden_layers, V)
    opts = cfg.method_options()
    per = (stage.keep - opts.pivot_image) // (opts.pivot_image + opts.pivot_text)
    model.set_prune(cfg)
    with torch.no_grad():
        model(ids, images=px)
    rec = model.get_model().prune_trace[0][0][0]
    splice = model.splice_multimodal(ids, px)
    assert rec.start == ids[0].tolist().index(IMAGE_TOKEN_INDEX) and rec.layer == k
    expected = _reference_kept(hf_lm, splice.inputs_embeds[0].cpu(), splice.image_spans[0], k, opts, per)
    assert rec.kept.tolist() == expected[0]
    assert rec.kept.numel() == stage.keep
    # visiting the pivots in list order would keep other tokens: the set's order is reproduced
    in_list_order = _reference_kept(hf_lm, splice.inputs_embeds[0].cpu(), splice.image_spans[0], k, opts, per, False)
    assert in_list_order[0] != expected[0]


def test_two_images_each_take_their_own_pivots(loaded_tiny, hf_lm):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "Compare them.", seed=5, n_images=2)
    cfg = PruneConfig(method="dart", layer=2, keep=68)
    model.set_prune(cfg)
    with torch.no_grad():
        model(ids, images=px)
    trace = model.get_model().prune_trace[0]
    splice = model.splice_multimodal(ids, px)
    expected = _reference_kept(hf_lm, splice.inputs_embeds[0].cpu(), splice.image_spans[0], 2, Options(), 8)
    assert [stages[0].kept.tolist() for stages in trace] == expected


def test_keeping_every_token_reproduces_the_unpruned_logits(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is it?", seed=36)
    model.set_prune(None)
    with torch.no_grad():
        base = model(ids, images=px).logits
    # 0 image pivots and 4 text pivots taking 144 each: all 576 tokens
    model.set_prune(PruneConfig(method="dart", layer=2, keep=576, options={"pivot_image": 0}))
    with torch.no_grad():
        full = model(ids, images=px).logits
    assert full.shape == base.shape and (full - base).abs().max() <= 1e-5
    assert model.get_model().prune_trace[0][0][0].kept.tolist() == list(range(V))


def _kept(trace):
    return [[[rec.kept.tolist() for rec in stages] for stages in row] for row in trace]


def test_padded_batch_with_text_only_row_equals_each_row_alone(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="dart", layer=2, keep=100))
    prompts = [vicuna_prompt("Is there a dog in this picture? Please answer yes or no."),
               vicuna_prompt("Say hi.", image=False), vicuna_prompt("Color?")]
    rows = [tokenizer_image_token(p, tok, return_tensors="pt") for p in prompts]
    width = max(len(x) for x in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, x in enumerate(rows):  # right padding here: generate re-pads on the left
        batch[i, : len(x)], mask[i, : len(x)] = x, 1
    px = process_images([make_image(seed=11), make_image(seed=12)], proc, model.config).to(model.device)
    together = model.generate(batch.to(model.device), images=px, attention_mask=mask.to(model.device),
                              max_new_tokens=6)
    trace = _kept(model.get_model().prune_trace)
    assert [len(r) for r in trace] == [1, 0, 1]
    pixel_of = {0: px[0:1], 2: px[1:2]}
    for i, x in enumerate(rows):
        alone = model.generate(x[None].to(model.device), images=pixel_of.get(i), max_new_tokens=6)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist()
        assert _kept(model.get_model().prune_trace)[0] == trace[i]


def test_cached_greedy_equals_recomputation(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "Describe it.", seed=33)
    model.set_prune(PruneConfig(method="dart", layer=2, keep=100))
    a = model.generate(ids, images=px, max_new_tokens=8, use_cache=True)
    kept = _kept(model.get_model().prune_trace)
    b = model.generate(ids, images=px, max_new_tokens=8, use_cache=False)
    assert a.tolist() == b.tolist()
    assert _kept(model.get_model().prune_trace) == kept


def test_sdpa_and_eager_select_the_same_tokens(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _prompt(loaded_tiny, "What is it?", seed=34, n_images=2)
    model.set_prune(PruneConfig(method="dart", layer=2, keep=100))
    out = {}
    for impl in ("sdpa", "eager"):
        model.get_model().set_attn_implementation(impl)
        tokens = model.generate(ids, images=px, max_new_tokens=4)
        out[impl] = (tokens.tolist(), _kept(model.get_model().prune_trace))
    assert out["sdpa"] == out["eager"]
    assert len(out["sdpa"][1][0]) == 2


def test_a_prompt_ending_at_its_image_is_an_error(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    ids = tokenizer_image_token("A picture: <image>", tok, return_tensors="pt")[None].to(model.device)
    px = process_images([make_image(seed=2)], proc, model.config).to(model.device)
    model.set_prune(PruneConfig(method="dart", layer=2, keep=100))
    with pytest.raises(ValueError, match="only 0 instruction token"):
        model(ids, images=px)
    model.set_prune(PruneConfig(method="dart", layer=2, keep=100, options={"pivot_text": 0}))
    with torch.no_grad():
        model(ids, images=px)
    assert model.get_model().prune_trace[0][0][0].kept.numel() == 100
