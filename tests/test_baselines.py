"""Every in-LLM pruning method on the tiny model: batching, caching, attention kernels, and FastV against
transformers' own attention weights."""

import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import METHODS, method_stage, top_n
from llava.constants import IMAGE_TOKEN_INDEX
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt

# One configuration per method that fits the tiny model (4 layers, 576 visual tokens per image).
TINY_CONFIGS = {
    "entropy": dict(layer=2, keep=100),
    "random": dict(layer=2, keep=100),
    "fastv": dict(layer=2, keep=100),
    "pdrop": dict(ratio=0.5, options={"layer_list": "1,2,3"}),
    "sparsevlm": dict(avg_tokens=192, options={"pruning_loc": "0,1,2", "token_list": "300,120,40"}),
    "dart": dict(layer=2, keep=100),
}
LLM_METHODS = sorted(name for name in METHODS if method_stage(name) == "llm")


def test_every_method_has_a_tiny_configuration():
    assert set(LLM_METHODS) <= set(TINY_CONFIGS), "add the new method to TINY_CONFIGS"


def _config(name):
    return PruneConfig(method=name, **TINY_CONFIGS[name])


def _ids(tok, question, image=True, images=1):
    prompt = vicuna_prompt(question, image=image)
    if images == 2:
        prompt = prompt.replace("<image>\n", "<image>\n<image>\n")
    return tokenizer_image_token(prompt, tok, return_tensors="pt")


def _batch(rows):
    width = max(len(x) for x in rows)
    batch = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, x in enumerate(rows):  # right padding, as a collate function would do: generate re-pads on the left
        batch[i, : len(x)] = x
        mask[i, : len(x)] = 1
    return batch, mask


def _kept(trace):
    return [[[rec.kept.tolist() for rec in stages] for stages in row] for row in trace]


@pytest.mark.parametrize("name", LLM_METHODS)
def test_padded_batch_with_text_only_row_equals_each_row_alone(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(_config(name))
    rows = [_ids(tok, "Is there a dog in this picture? Answer briefly."), _ids(tok, "Say hi.", image=False),
            _ids(tok, "What colour?")]
    images = [make_image(seed=31), make_image(seed=32)]
    px = process_images(images, proc, model.config)
    batch, mask = _batch(rows)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=5)
    trace = _kept(model.get_model().prune_trace)
    assert [len(r) for r in trace] == [1, 0, 1]
    pixel_of = {0: px[0:1], 2: px[1:2]}
    for i, x in enumerate(rows):
        alone = model.generate(x[None], images=pixel_of.get(i), max_new_tokens=5)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist(), (name, i)
        assert _kept(model.get_model().prune_trace)[0] == trace[i], (name, i)


@pytest.mark.parametrize("name", LLM_METHODS)
def test_cached_greedy_equals_recomputation(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(_config(name))
    ids = _ids(tok, "Describe it.")[None]
    px = process_images([make_image(seed=33)], proc, model.config)
    a = model.generate(ids, images=px, max_new_tokens=8, use_cache=True)
    kept = _kept(model.get_model().prune_trace)
    b = model.generate(ids, images=px, max_new_tokens=8, use_cache=False)
    assert a.tolist() == b.tolist()
    assert _kept(model.get_model().prune_trace) == kept  # the prefill's record, the same selection


@pytest.mark.parametrize("name", LLM_METHODS)
def test_sdpa_and_eager_select_the_same_tokens(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(_config(name))
    ids = _ids(tok, "What is it?", images=2)[None]
    px = process_images([make_image(seed=34), make_image(seed=35)], proc, model.config)
    out = {}
    for impl in ("sdpa", "eager"):
        model.get_model().set_attn_implementation(impl)
        tokens = model.generate(ids, images=px, max_new_tokens=4)
        out[impl] = (tokens.tolist(), _kept(model.get_model().prune_trace))
    assert out["sdpa"] == out["eager"]
    assert len(out["sdpa"][1][0]) == 2  # both images pruned, each on its own


@pytest.mark.parametrize("name", ["entropy", "random", "fastv"])
def test_keeping_every_token_reproduces_the_unpruned_logits(loaded_tiny, name):
    tok, model, proc, _ = loaded_tiny
    ids = _ids(tok, "What is it?")[None]
    px = process_images([make_image(seed=36)], proc, model.config)
    model.set_prune(None)
    base = model(ids, images=px).logits
    model.set_prune(PruneConfig(method=name, layer=2, keep=576))
    assert (model(ids, images=px).logits - base).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------------------ FastV


@pytest.fixture(scope="module")
def hf_and_ours(tiny_hf):
    from transformers import LlavaForConditionalGeneration

    from llava.model.builder import load_pretrained_model

    ref = LlavaForConditionalGeneration.from_pretrained(tiny_hf, dtype=torch.float32,
                                                        attn_implementation="eager").eval()
    tok, ours, proc, _ = load_pretrained_model(tiny_hf, device="cpu")
    return ref, tok, ours, proc


@pytest.mark.parametrize("k", [1, 2, 3])
def test_fastv_keeps_the_top_n_of_transformers_eager_attention(hf_and_ours, k):
    # Reference: transformers' own LLaVA with eager attention and output_attentions, on the same weights.
    ref, tok, ours, proc = hf_and_ours
    ids = _ids(tok, "Is there a dog in this picture?")[None]
    px = process_images([make_image(seed=37)], proc, ours.config)
    n_img = (336 // 14) ** 2
    expanded = []
    for t in ids[0].tolist():
        expanded += [ref.config.image_token_index] * n_img if t == IMAGE_TOKEN_INDEX else [t]
    start = ids[0].tolist().index(IMAGE_TOKEN_INDEX)
    with torch.no_grad():
        out = ref(input_ids=torch.tensor([expanded]), pixel_values=px, output_attentions=True)
    attn = out.attentions[k - 1][0]  # [h, T, T], layer K-1
    scores = attn.mean(0)[-1, start:start + n_img]  # the last token's row, averaged over heads
    ours.set_prune(PruneConfig(method="fastv", layer=k, keep=64))
    ours(ids, images=px)
    rec = ours.get_model().prune_trace[0][0][0]
    torch.testing.assert_close(rec.scores.cpu(), scores, rtol=1e-4, atol=1e-6)
    assert rec.kept.tolist() == top_n(scores, 64).tolist()
    ours.set_prune(None)


# ------------------------------------------------------------------------------------ the framework itself


def _register_temporary(name, fn, **kw):
    from entropyprune.methods import register

    register(name, **kw)(fn)
    return name


def test_replacement_embeddings_take_the_kept_slots(loaded_tiny):
    # A method may hand back new hidden states for its kept tokens: the layers from K on see exactly those.
    from entropyprune.methods import Selection, get_method

    tok, model, proc, _ = loaded_tiny
    ids = _ids(tok, "What is it?")[None]
    px = process_images([make_image(seed=38)], proc, model.config)
    entropy = get_method("entropy")

    def identity(inputs, n):
        kept, scores = entropy(inputs, n)
        return Selection(kept, scores, embeds=inputs.hidden.gather(1, kept[..., None].expand(-1, -1,
                                                                                            inputs.hidden.shape[-1])))

    def doubled(inputs, n):
        sel = identity(inputs, n)
        return Selection(sel.kept, sel.scores, embeds=2 * sel.embeds)

    try:
        for name, fn in (("_identity", identity), ("_doubled", doubled)):
            _register_temporary(name, fn)
        model.set_prune(PruneConfig(method="entropy", layer=2, keep=50))
        plain = model(ids, images=px).logits
        model.set_prune(PruneConfig(method="_identity", layer=2, keep=50))
        assert torch.equal(model(ids, images=px).logits, plain)
        model.set_prune(PruneConfig(method="_doubled", layer=2, keep=50))
        changed = model(ids, images=px).logits
        assert changed.shape == plain.shape and not torch.allclose(changed, plain)
        rec = model.get_model().prune_trace[0][0][0]
        assert rec.kept.numel() == 50 and rec.merged == 0
    finally:
        METHODS.pop("_identity", None)
        METHODS.pop("_doubled", None)


@pytest.mark.parametrize("name", ["entropy", "random"])
def test_entropy_and_random_work_at_every_stage_of_a_schedule(loaded_tiny, name):
    # Their selection reads only the current image tokens, so a schedule of several stages just works:
    # each later stage ranks the survivors of the one before by their own scores.
    from entropyprune.methods import Stage, get_method

    tok, model, proc, _ = loaded_tiny
    ids = _ids(tok, "What is it?")[None]
    px = process_images([make_image(seed=39)], proc, model.config)
    staged = f"_staged_{name}"
    try:
        _register_temporary(staged, get_method(name), schedule=lambda cfg, opts, L, V: [Stage(1, 300), Stage(3, 60)])
        model.set_prune(PruneConfig(method=staged, layer=1, keep=300))
        model(ids, images=px)
        first, second = model.get_model().prune_trace[0][0]
        assert (first.layer, first.kept.numel(), second.layer, second.kept.numel()) == (1, 300, 3, 60)
        assert first.kept.tolist() == top_n(first.scores, 300).tolist()
        survivors = first.kept
        assert second.scores.shape == (300,)
        assert second.kept.tolist() == survivors[top_n(second.scores, 60)].tolist()  # original indices
        assert model.get_model().prune_trace  # and generation works through both stages
        a = model.generate(ids, images=px, max_new_tokens=4)
        b = model.generate(ids, images=px, max_new_tokens=4, use_cache=False)
        assert a.tolist() == b.tolist()
    finally:
        METHODS.pop(staged, None)
