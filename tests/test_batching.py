"""Batched answering (llava.eval.batching) on the tiny model: a batch of B rows gives what each row gives alone.

Rows mix one image, two images, three images and none, with prompts of different lengths (so the batch is
padded), under every registered in-LLM method at several budgets; rows stop at their own EOS.
"""

from __future__ import annotations

import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import METHODS, method_stage
from llava.eval.batching import Prepared, answer_stream, collate, cut_at_eos, generate_rows, prompt_length
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt

LLM_METHODS = sorted(name for name in METHODS if method_stage(name) == "llm")
# Budgets on the 4-layer tiny model (576 visual tokens per image): 7B's 192- and 64-equivalent N after layer 2,
# a ratio after layer 1, and an average over the tiny model's own 4 layers (N = (4*300 - 2*576) / 2 = 24).
STAGE_OPTIONS = {"pdrop": {"layer_list": "1,2,3"}, "sparsevlm": {"pruning_loc": "0,1,2", "token_list": "300,120,40"}}
BUDGETS = {
    "keep166": dict(layer=2, keep=166),
    "keep29": dict(layer=2, keep=29),
    "ratio0.25@1": dict(layer=1, ratio=0.25),
    "avg300": dict(layer=2, avg_tokens=300),
}
QUESTIONS = [  # (question, images): lengths and image counts differ from row to row
    ("Is there a dog in this picture? Answer briefly.", 1),
    ("Say hi.", 0),
    ("Which of the two images is brighter?", 2),
    ("What colour?", 1),
    ("Compare the three pictures and describe what they have in common, in one sentence.", 3),
    ("Name a fruit that is yellow.", 0),
]
MIXED = QUESTIONS[:4]  # one image, text only, two images, one image
_REFERENCE: dict = {}  # single-row runs, computed once per configuration


def _rows(loaded, questions=QUESTIONS, seed=40) -> list[Prepared]:
    tok, model, proc, _ = loaded
    rows = []
    for n, (question, n_images) in enumerate(questions):
        prompt = vicuna_prompt(question, image=n_images > 0)
        prompt = prompt.replace("<image>\n", "<image>\n" * n_images)
        ids = tokenizer_image_token(prompt, tok, return_tensors="pt")
        if not n_images:
            rows.append(Prepared(ids))
            continue
        images = [make_image(w=300 + 40 * j, h=200 + 30 * n, seed=seed + 10 * n + j) for j in range(n_images)]
        rows.append(Prepared(ids, process_images(images, proc, model.config), [im.size for im in images]))
    return rows


def _trace(records_of_row):
    """A row's prune trace without `start` (where the image sat in the padded batch) and the scores."""
    return [[(r.layer, r.length, r.merged, r.kept.tolist()) for r in stages] for stages in records_of_row]


def _scores(records_of_row):
    return [[r.scores for r in stages] for stages in records_of_row]


def _alone(model, rows, **kw):
    key = (repr(model.get_model().prune), len(rows), tuple(sorted(kw.items())))
    if key not in _REFERENCE:
        _REFERENCE[key] = _alone_now(model, rows, **kw)
    return _REFERENCE[key]


def _alone_now(model, rows, **kw):
    outs, traces = [], []
    for row in rows:
        (ids,) = generate_rows(model, [row], **kw)
        outs.append(ids.tolist())
        (trace,) = model.get_model().prune_trace
        traces.append(trace)
    return outs, traces


@pytest.mark.parametrize("budget", sorted(BUDGETS))
@pytest.mark.parametrize("name", LLM_METHODS)
def test_mixed_batch_equals_each_row_alone_for_every_method(loaded_tiny, name, budget):
    tok, model, proc, _ = loaded_tiny
    # Multi-stage methods get stage layers inside the tiny model's 4 layers (as in test_baselines.py).
    cfg = PruneConfig(method=name, **BUDGETS[budget], options=STAGE_OPTIONS.get(name, {}))
    try:
        cfg.schedule(model.config.num_hidden_layers, 576)
    except ValueError as err:  # e.g. PDrop's third stage would keep no token of 29
        pytest.skip(f"{name} cannot meet {budget} on the 4-layer tiny model: {err}")
    model.set_prune(cfg)
    rows = _rows(loaded_tiny, MIXED)
    kw = dict(max_new_tokens=3)
    alone, alone_traces = _alone(model, rows, **kw)
    together = generate_rows(model, rows, **kw)
    traces = model.get_model().prune_trace
    assert [len(t) for t in traces] == [1, 0, 2, 1]  # one record list per image, none for a text row
    assert [ids.tolist() for ids in together] == alone
    assert [_trace(t) for t in traces] == [_trace(t) for t in alone_traces]  # the same tokens kept, exactly
    # The scores behind them agree to float32 rounding (padded batches multiply other shapes): measured
    # relative differences are at most ~1e-6.
    for row, ref in zip(traces, alone_traces, strict=True):
        for stages, ref_stages in zip(_scores(row), _scores(ref), strict=True):
            for got, want in zip(stages, ref_stages, strict=True):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))


def test_rows_stop_at_their_own_eos(loaded_tiny, monkeypatch):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="entropy", layer=2, keep=64))
    rows = _rows(loaded_tiny, MIXED)
    free, _ = _alone(model, rows, max_new_tokens=8)
    eos = free[0][2]  # the third token of row 0 becomes EOS: row 0 stops there, the others later or never
    alone, _ = _alone(model, rows, max_new_tokens=8, eos_token_id=eos)
    lengths = [len(ids) for ids in alone]
    assert lengths[0] == 3 and len(set(lengths)) > 1
    raw_rows = []
    original = type(model).generate

    def spy(self, *a, **k):
        out = original(self, *a, **k)
        raw_rows.append(out)
        return out

    monkeypatch.setattr(type(model), "generate", spy)
    together = generate_rows(model, rows, max_new_tokens=8, eos_token_id=eos)
    assert [ids.tolist() for ids in together] == alone
    # generate padded the rows that had finished (pad id 0) until the longest one was done: the cut removed it.
    (raw,) = raw_rows
    assert raw.shape[1] == max(lengths)
    assert raw[0, 3:].tolist() == [model.config.pad_token_id] * (max(lengths) - 3)


@pytest.mark.parametrize("batch_size, window", [(1, None), (4, None), (6, None), (2, 6), (3, 4), (4, 2)])
def test_answer_stream_keeps_question_order_at_any_batch_size(loaded_tiny, monkeypatch, batch_size, window):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="random", layer=1, keep=50))
    rows = _rows(loaded_tiny)
    alone, _ = _alone(model, rows, max_new_tokens=3)
    calls = []
    original = type(model).generate

    def spy(self, inputs=None, **k):
        calls.append(inputs.shape[0])
        return original(self, inputs, **k)

    monkeypatch.setattr(type(model), "generate", spy)
    got = list(answer_stream(model, enumerate(rows), batch_size, window, max_new_tokens=3))
    assert [i for i, _ in got] == list(range(len(rows)))
    assert [ids.tolist() for _, ids in got] == alone
    size = max(window or batch_size, batch_size)
    expected = []
    for start in range(0, len(rows), size):
        n = min(size, len(rows) - start)
        expected += [batch_size] * (n // batch_size) + ([n % batch_size] if n % batch_size else [])
    assert calls == expected


def test_bucketing_batches_rows_of_similar_length(loaded_tiny, monkeypatch):
    tok, model, proc, _ = loaded_tiny
    rows = _rows(loaded_tiny)
    visual = model.get_vision_tower().num_patches
    lengths = [prompt_length(r, visual) for r in rows]
    assert lengths[2] == rows[2].input_ids.numel() - 2 + 2 * visual
    seen = []
    original = type(model).generate

    def spy(self, inputs=None, attention_mask=None, **k):
        seen.append(sorted(int(n) for n in attention_mask.sum(1)) if attention_mask is not None
                    else [inputs.shape[1]])
        return original(self, inputs, attention_mask=attention_mask, **k)

    monkeypatch.setattr(type(model), "generate", spy)
    list(answer_stream(model, enumerate(rows), 2, 6, max_new_tokens=2))
    text_lengths = sorted((lengths[i], rows[i].input_ids.numel()) for i in range(len(rows)))
    assert seen == [sorted(n for _, n in text_lengths[j:j + 2]) for j in (0, 2, 4)]


def test_an_error_in_the_input_comes_after_the_answers_before_it(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    rows = _rows(loaded_tiny, MIXED)

    def pairs():
        yield from enumerate(rows[:3])
        raise ValueError("cannot read image bad.png")

    got = []
    with pytest.raises(ValueError, match="bad.png"):
        for i, _ids in answer_stream(model, pairs(), batch_size=4, window=None, max_new_tokens=2):
            got.append(i)
    assert got == [0, 1, 2]


def test_helpers():
    rows = [Prepared(torch.tensor([1, 5, 6])), Prepared(torch.tensor([1, 7]))]
    ids, mask = collate(rows)
    assert ids.tolist() == [[1, 5, 6], [1, 7, 0]] and mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    assert cut_at_eos(torch.tensor([4, 2, 0, 0]), 2).tolist() == [4, 2]
    assert cut_at_eos(torch.tensor([4, 5]), 2).tolist() == [4, 5]
    with pytest.raises(ValueError, match="batch_size"):
        list(answer_stream(None, [], batch_size=0))
