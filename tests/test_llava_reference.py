"""The whole LLaVA forward and greedy decoding against transformers' LlavaForConditionalGeneration."""

import pytest
import torch

from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from llava.model.builder import load_pretrained_model
from tests.conftest import make_image, vicuna_prompt


@pytest.fixture(scope="module")
def both(tiny_hf):
    from transformers import LlavaForConditionalGeneration

    ref = LlavaForConditionalGeneration.from_pretrained(tiny_hf, dtype=torch.float32).eval()
    tok, ours, proc, _ = load_pretrained_model(tiny_hf, device="cpu")
    return ref, tok, ours, proc


def _inputs(tok, ours, proc, question, image_token_id, seed=0):
    ids = tokenizer_image_token(vicuna_prompt(question), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=seed)], proc, ours.config)
    n_img = (336 // 14) ** 2
    expanded = []
    for t in ids[0].tolist():
        expanded += [image_token_id] * n_img if t == IMAGE_TOKEN_INDEX else [t]
    return ids, torch.tensor([expanded]), pixels


def test_logits_match_transformers_llava(both):
    ref, tok, ours, proc = both
    ids, hf_ids, pixels = _inputs(tok, ours, proc, "What is in the picture?", ref.config.image_token_index)
    with torch.no_grad():
        a = ours(ids, images=pixels).logits
        b = ref(input_ids=hf_ids, pixel_values=pixels).logits
    assert a.shape == b.shape
    img_pos = hf_ids[0] == ref.config.image_token_index
    assert (a[0, ~img_pos] - b[0, ~img_pos]).abs().max() <= 1e-4  # the text positions
    assert (a - b).abs().max() <= 1e-3  # image positions too


def test_greedy_tokens_match_transformers_llava(both):
    ref, tok, ours, proc = both
    for seed, q in enumerate(["Describe the image.", "Is there a dog in this picture?"]):
        ids, hf_ids, pixels = _inputs(tok, ours, proc, q, ref.config.image_token_index, seed)
        with torch.no_grad():
            a = ours.generate(ids, images=pixels, max_new_tokens=12, do_sample=False)
            b = ref.generate(input_ids=hf_ids, pixel_values=pixels, max_new_tokens=12, do_sample=False,
                             eos_token_id=2, pad_token_id=0)[:, hf_ids.shape[1]:]
        assert a.tolist() == b[:, : a.shape[1]].tolist()


def test_llava_and_hf_formats_load_the_same_model(tiny_llava, tiny_hf, loaded_tiny):
    tok, ours, proc, _ = loaded_tiny
    _, hf_ours, _, _ = load_pretrained_model(tiny_hf, device="cpu")
    ids = tokenizer_image_token(vicuna_prompt("What color?"), tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=3)], proc, ours.config)
    with torch.no_grad():
        a = ours(ids, images=pixels).logits
        b = hf_ours(ids, images=pixels).logits
    assert torch.allclose(a, b[..., : a.shape[-1]], atol=1e-5)


def test_old_hf_layout_and_bin_shards(tmp_path, tiny_hf):
    from llava.tools.make_tiny_checkpoint import build

    old = build(str(tmp_path / "old"), "hf", seed=0, weights="bin", hf_layout="old")
    _, a, _, _ = load_pretrained_model(tiny_hf, device="cpu")
    _, b, _, _ = load_pretrained_model(old, device="cpu")
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
