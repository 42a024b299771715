"""CDPruner: the greedy MAP of diag(r) S diag(r), against a direct greedy log-det maximisation, with r and S
recomputed in the test from transformers' full CLIP model and the tiny LLaVA's projector."""

import os

import numpy as np
import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods.cdpruner import greedy_map, instruction_relevance
from llava.mm_utils import process_images
from llava.tools.make_tiny_checkpoint import TOWER_DIR
from tests.conftest import make_image, prompt_batch


def greedy_logdet(kernel: np.ndarray, n: int) -> list[int]:
    """Direct greedy MAP: each step adds the token that makes log det K[S, S] largest (float64, slogdet)."""
    picked: list[int] = []
    for _ in range(n):
        best, best_value = None, -np.inf
        for v in range(kernel.shape[0]):
            if v in picked:
                continue
            sub = kernel[np.ix_(picked + [v], picked + [v])]
            sign, value = np.linalg.slogdet(sub)
            if sign > 0 and value > best_value + 1e-12:
                best, best_value = v, value
        picked.append(best)
    return sorted(picked)


def _random_kernel(gen, tokens, dim, images):
    feats = torch.randn(images, tokens, dim, generator=gen, dtype=torch.float64)
    unit = feats / feats.norm(dim=-1, keepdim=True)
    rel = torch.rand(images, tokens, generator=gen, dtype=torch.float64) + 0.1
    return rel[:, :, None] * (unit @ unit.transpose(1, 2)) * rel[:, None, :]


@pytest.mark.parametrize("tokens,dim,n", [(9, 16, 5), (12, 6, 6), (20, 32, 8)])
def test_greedy_map_equals_greedy_log_det_maximisation(tokens, dim, n):
    kernel = _random_kernel(torch.Generator().manual_seed(tokens), tokens, dim, images=3)
    kept = greedy_map(kernel, n)
    assert kept.shape == (3, n) and kept.dtype == torch.long
    for i in range(3):
        assert kept[i].tolist() == greedy_logdet(kernel[i].numpy(), n)


def test_greedy_map_of_the_identity_breaks_ties_toward_the_lower_index():
    # Every token has the same gain at every step: the picks are 0, 1, 2, ...
    assert greedy_map(torch.eye(7)[None], 4).tolist() == [[0, 1, 2, 3]]


def test_relevance_is_the_official_negated_min_max_similarity_per_image():
    gen = torch.Generator().manual_seed(3)
    image = torch.randn(2, 10, 8, generator=gen)
    texts = [torch.randn(1, 8, generator=gen), torch.randn(3, 8, generator=gen)]
    got = instruction_relevance(image, texts)
    for i in range(2):
        img = image[i].double().numpy()
        img = img / np.linalg.norm(img, axis=-1, keepdims=True)
        txt = texts[i].double().numpy()
        txt = txt / np.linalg.norm(txt, axis=-1, keepdims=True)
        rel = (-(img @ txt.T)).mean(axis=-1)
        ref = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
        np.testing.assert_allclose(got[i].numpy(), ref, rtol=1e-5, atol=1e-6)
    # Per image: the second image's relevance is what it gets alone.
    assert torch.allclose(got[1:], instruction_relevance(image[1:], texts[1:]))


@pytest.fixture(scope="module")
def clip(tiny_llava):
    from transformers import CLIPModel, CLIPTokenizer

    folder = os.path.join(tiny_llava, TOWER_DIR)
    return CLIPModel.from_pretrained(folder).eval(), CLIPTokenizer.from_pretrained(folder), folder


def test_text_encoder_matches_transformers_clip_and_cuts_long_text_into_segments(clip):
    from llava.model.multimodal_encoder.clip_encoder import load_clip_text

    model, tokenizer, folder = clip
    encoder, projection = load_clip_text(folder)
    short = "What is in the picture?"
    with torch.no_grad():
        ref = model.get_text_features(**tokenizer(short, return_tensors="pt"))
    ref = getattr(ref, "pooler_output", ref)
    (got,) = encoder([short])
    assert got.shape == (1, 32) and torch.allclose(got, ref, atol=1e-5)
    # 120 tokens: two 77-token segments, the second zero-padded (ids and mask), as the official tower does.
    long = " ".join(["a"] * 118)
    ids = tokenizer(long, return_tensors="pt", verbose=False).input_ids
    assert ids.shape[1] == 120
    padded = torch.zeros(1, 154, dtype=torch.long)
    padded[0, :120] = ids[0]
    mask = (torch.arange(154) < 120).long()[None]
    with torch.no_grad():
        ref = model.get_text_features(input_ids=padded.view(2, 77), attention_mask=mask.view(2, 77))
    ref = getattr(ref, "pooler_output", ref)
    got_short, got_long = encoder([short, long])
    assert got_long.shape == (2, 32) and torch.allclose(got_long, ref, atol=1e-5)
    assert torch.allclose(got_short, got, atol=1e-6)
    x = torch.randn(3, 32)
    assert torch.allclose(projection(x), model.visual_projection(x), atol=1e-6)


def _reference_kept(loaded_tiny, clip, image, question, n):
    """CDPruner's rule from its official formulas, on transformers' CLIP and the tiny LLaVA's projector."""
    tok, model, proc, _ = loaded_tiny
    clip_model, tokenizer, _ = clip
    px = process_images([image], proc, model.config)
    with torch.no_grad():
        hidden = clip_model.vision_model(px, output_hidden_states=True).hidden_states[-2][:, 1:]
        projected = model.get_model().mm_projector(hidden)[0].double()
        image_embeds = clip_model.visual_projection(clip_model.vision_model.post_layernorm(hidden))[0].double()
        text = clip_model.get_text_features(**tokenizer(question, return_tensors="pt"))
        text = getattr(text, "pooler_output", text).double()
    unit = projected / projected.norm(dim=-1, keepdim=True)
    img = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    txt = text / text.norm(dim=-1, keepdim=True)
    rel = (-(img @ txt.T)).mean(-1)
    rel = (rel - rel.min() + 1e-6) / (rel.max() - rel.min())
    kernel = rel[:, None] * (unit @ unit.T) * rel[None, :]
    return greedy_logdet(kernel.numpy(), n)


def test_the_model_keeps_the_reference_tokens_for_each_prompt_in_a_batch(loaded_tiny, clip):
    tok, model, proc, _ = loaded_tiny
    questions = ["What is in the picture?", "Is there a red square on the left side of the image?"]
    images = [make_image(seed=5), make_image(seed=6)]
    n = 12
    model.set_prune(PruneConfig(method="cdpruner", keep=n))
    ids, mask = prompt_batch(tok, questions)
    px = process_images(images, proc, model.config)
    model(ids, attention_mask=mask, images=px, texts=questions)
    trace = model.get_model().prune_trace
    for row, (image, question) in enumerate(zip(images, questions, strict=True)):
        (rec,) = trace[row][0]
        assert rec.layer == 0 and rec.length == 576
        assert rec.kept.tolist() == _reference_kept(loaded_tiny, clip, image, question, n)


def test_it_needs_the_instruction_and_says_so(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(method="cdpruner", keep=8))
    ids, _ = prompt_batch(tok, ["What is it?"])
    with pytest.raises(ValueError, match="instruction text"):
        model(ids, images=process_images([make_image(seed=1)], proc, model.config))


def test_a_vision_only_clip_checkpoint_is_refused_with_the_fix(tmp_path, tiny_llava, loaded_tiny):
    from transformers import CLIPVisionModel

    from llava.model.multimodal_encoder.clip_encoder import load_clip_text

    tower = loaded_tiny[1].get_vision_tower()
    CLIPVisionModel.from_pretrained(os.path.join(tiny_llava, TOWER_DIR)).save_pretrained(tmp_path / "vision-only")
    with pytest.raises(ValueError, match="clip_text_tower"):
        load_clip_text(str(tmp_path / "vision-only"), tower=tower)
    with pytest.raises(FileNotFoundError, match="clip_text_tower"):
        load_clip_text(str(tmp_path / "missing"), tower=tower)


def test_a_clip_checkpoint_of_another_vision_tower_is_refused(tmp_path, loaded_tiny):
    from llava.model.multimodal_encoder.clip_encoder import load_clip_text
    from llava.tools.make_tiny_checkpoint import build

    other = build(str(tmp_path / "other"), seed=1)
    with pytest.raises(ValueError, match="not the model's vision tower"):
        load_clip_text(os.path.join(other, TOWER_DIR), tower=loaded_tiny[1].get_vision_tower())


def test_hf_format_names_the_clip_checkpoint_by_option(tiny_hf, tiny_llava):
    from llava.model.builder import load_pretrained_model

    tok, model, proc, _ = load_pretrained_model(tiny_hf, None, "llava-1.5-tiny-hf", device="cpu")
    with pytest.raises((ValueError, FileNotFoundError), match="clip_text_tower"):
        model.set_prune(PruneConfig(method="cdpruner", keep=8))
    folder = os.path.join(tiny_llava, TOWER_DIR)  # the same tower weights: built from the same seed
    model.set_prune(PruneConfig(method="cdpruner", keep=8, options={"clip_text_tower": folder}))
    assert model.get_model().clip_text_name == folder
