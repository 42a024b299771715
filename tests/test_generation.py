"""Decoding: the cache against full recomputation, and batching with padding against single prompts."""

import torch

from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt


def _batch(tok, questions, seeds, proc, model):
    ids = [tokenizer_image_token(vicuna_prompt(q), tok, return_tensors="pt") for q in questions]
    width = max(len(x) for x in ids)
    batch = torch.zeros(len(ids), width, dtype=torch.long)
    mask = torch.zeros(len(ids), width, dtype=torch.long)
    for i, x in enumerate(ids):  # right padding, as a collate function would do: generate re-pads on the left
        batch[i, : len(x)] = x
        mask[i, : len(x)] = 1
    pixels = process_images([make_image(seed=s) for s in seeds], proc, model.config)
    return ids, batch, mask, pixels


def test_cached_greedy_equals_recomputation(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(None)
    ids = tokenizer_image_token(vicuna_prompt("Describe it."), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=5)], proc, model.config)
    a = model.generate(ids, images=pixels, max_new_tokens=16, use_cache=True)
    b = model.generate(ids, images=pixels, max_new_tokens=16, use_cache=False)
    assert a.shape[1] >= 2 and a.tolist() == b.tolist()


def test_padded_batch_equals_single_prompts(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(None)
    questions = ["Is there a dog in this picture?", "What color?"]
    ids, batch, mask, pixels = _batch(tok, questions, [1, 2], proc, model)
    together = model.generate(batch, images=pixels, attention_mask=mask, max_new_tokens=10)
    for i, x in enumerate(ids):
        alone = model.generate(x[None], images=pixels[i:i + 1], max_new_tokens=10)
        n = alone.shape[1]
        assert together[i, :n].tolist() == alone[0].tolist()


def test_generate_stops_at_eos_and_pads(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(None)
    ids = tokenizer_image_token(vicuna_prompt("Hi"), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=6)], proc, model.config)
    free = model.generate(ids, images=pixels, max_new_tokens=6)
    first = int(free[0, 0])
    # Declare the first generated token to be EOS: decoding must stop right there.
    stopped = model.generate(ids, images=pixels, max_new_tokens=6, eos_token_id=first)
    assert stopped.tolist() == [[first]]


def test_text_only_prompt(loaded_tiny):
    tok, model, _, _ = loaded_tiny
    model.set_prune(None)
    ids = tokenizer_image_token(vicuna_prompt("Say something.", image=False), tok, return_tensors="pt")[None]
    a = model.generate(ids, max_new_tokens=8)
    b = model.generate(ids, max_new_tokens=8, use_cache=False)
    assert a.tolist() == b.tolist()


def test_stopping_criteria_are_honoured(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    ids, batch, mask, pixels = _batch(tok, ["Describe it.", "What is it?"], [3, 4], proc, model)
    free = model.generate(batch, images=pixels, attention_mask=mask, max_new_tokens=8)
    assert free.shape[1] == 8  # random weights: no EOS within 8 tokens, so the criteria decide below
    seen = []

    def after_three(new_ids, scores):  # one bool: stop every row
        seen.append((new_ids.shape, scores.shape))
        return new_ids.shape[1] >= 3

    out = model.generate(batch, images=pixels, attention_mask=mask, max_new_tokens=8,
                         stopping_criteria=[after_three])
    assert out.tolist() == free[:, :3].tolist()
    assert seen[0] == (torch.Size([2, 1]), torch.Size([2, model.config.vocab_size]))

    def row_one_after_two(new_ids, scores):  # a bool per row: row 1 stops, row 0 goes on
        return torch.tensor([False, new_ids.shape[1] >= 2])

    out = model.generate(batch, images=pixels, attention_mask=mask, max_new_tokens=8, pad_token_id=0,
                         stopping_criteria=[row_one_after_two])
    assert out[0].tolist() == free[0].tolist()
    assert out[1, :2].tolist() == free[1, :2].tolist() and out[1, 2:].tolist() == [0] * 6  # pad id 0 is honoured


def test_keywords_stopping_criteria_from_llava(loaded_tiny):
    from llava.mm_utils import KeywordsStoppingCriteria

    tok, model, proc, _ = loaded_tiny
    ids = tokenizer_image_token(vicuna_prompt("Hi"), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=6)], proc, model.config)
    free = model.generate(ids, images=pixels, max_new_tokens=8)
    keyword = tok.decode(free[0, 2:4], skip_special_tokens=True).strip()
    assert keyword
    stop = KeywordsStoppingCriteria([keyword], tok, ids)
    out = model.generate(ids, images=pixels, max_new_tokens=8, stopping_criteria=[stop])
    text = tok.decode(out[0], skip_special_tokens=True)
    assert keyword in text and out.shape[1] <= 4 and out[0].tolist() == free[0, : out.shape[1]].tolist()


def test_unknown_generate_arguments_are_refused(loaded_tiny):
    import pytest

    tok, model, _, _ = loaded_tiny
    ids = tokenizer_image_token(vicuna_prompt("Hi", image=False), tok, return_tensors="pt")[None]
    with pytest.raises(TypeError, match="does not support output_scores, repetition_penalty"):
        model.generate(ids, max_new_tokens=2, repetition_penalty=1.2, output_scores=True)
    assert model.generate(input_ids=ids, max_new_tokens=2).tolist() == model.generate(ids, max_new_tokens=2).tolist()
