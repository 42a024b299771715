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
