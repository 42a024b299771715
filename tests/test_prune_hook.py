"""The pruning hook inside LlamaModel.forward, against independent references.

The reference decoder below is written from the layers' weights with its own RoPE, masks and softmax, and
recomputes everything from scratch at every step: no cache, no shared attention code with the model.
"""


import pytest
import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import top_n
from entropyprune.score import token_entropy
from llava.mm_utils import process_images, tokenizer_image_token
from tests.conftest import make_image, vicuna_prompt
from tests.references import ref_layer, rope

K = 2


def _inputs(loaded, question="What is it?", seed=0, n_images=1):
    tok, model, proc, _ = loaded
    prompt = vicuna_prompt(question)
    if n_images == 2:
        prompt = prompt.replace("<image>\n", "<image>\n<image>\n")
    ids = tokenizer_image_token(prompt, tok, return_tensors="pt")[None]
    pixels = process_images([make_image(seed=seed + i) for i in range(n_images)], proc, model.config)
    return ids, pixels


def _ref_logits(model, embeds, kept_abs):
    """Logits of the last token: full sequence through layers < K, kept tokens (gapped positions) after."""
    x = embeds
    pos = torch.arange(x.shape[0])
    for i, layer in enumerate(model.model.layers):
        if i == K:
            x, pos = x[kept_abs], pos[kept_abs]
        x, _ = ref_layer(layer, x, pos)
    n = model.model.norm
    x = n.weight * (x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + n.variance_epsilon))
    return x[-1] @ model.lm_head.weight.T


def test_keep_all_equals_unpruned(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny)
    model.set_prune(None)
    base = model(ids, images=px).logits
    assert model.get_model().prune_trace == [[]]
    model.set_prune(PruneConfig(layer=K, keep=576))
    full = model(ids, images=px).logits
    assert full.shape == base.shape
    assert (full - base).abs().max() <= 1e-5
    assert model.get_model().prune_trace[0][0][0].kept.tolist() == list(range(576))


def test_kept_tokens_are_top_entropy_of_layer_k_minus_1_queries(loaded_tiny):
    """Recompute the scores from layer K-1's q_proj output with RoPE applied here (an independent path)."""
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, seed=3)
    captured = {}
    handle = model.model.layers[K - 1].self_attn.q_proj.register_forward_hook(
        lambda mod, inp, out: captured.setdefault("q", out.detach()))
    try:
        for variant in ("official", "paper"):
            captured.clear()
            model.set_prune(PruneConfig(layer=K, keep=100, variant=variant))
            model(ids, images=px)
            rec = model.get_model().prune_trace[0][0][0]
            q = captured["q"][0]  # [T, h*d], the full prefill (layer K-1 still sees every token)
            h = model.config.num_attention_heads
            qh = q.view(q.shape[0], h, -1).transpose(0, 1)
            qh = rope(qh, torch.arange(q.shape[0])).transpose(0, 1)  # [T, h, d]
            span = qh[rec.start: rec.start + rec.length]
            scores = token_entropy(span, h, variant=variant)
            assert rec.length == 576 and rec.kept.shape == (100,)
            assert torch.allclose(rec.scores.double(), scores.double(), atol=1e-4)
            assert rec.kept.tolist() == top_n(scores, 100).tolist()
            assert rec.kept.tolist() == sorted(rec.kept.tolist())
    finally:
        handle.remove()


@pytest.mark.parametrize("keep", [29, 166])
def test_pruned_decoding_equals_reference_recomputation(loaded_tiny, keep):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, "Describe the picture.", seed=7)
    model.set_prune(PruneConfig(layer=K, keep=keep))
    out = model.generate(ids, images=px, max_new_tokens=6)[0]
    rec = model.get_model().prune_trace[0][0][0]
    embeds = model.splice_multimodal(ids, px).inputs_embeds[0]
    t = embeds.shape[0]
    kept_abs = torch.cat([torch.arange(rec.start), rec.start + rec.kept, torch.arange(rec.start + rec.length, t)])
    tokens = []
    for step in range(out.shape[0]):
        logits = _ref_logits(model, embeds, kept_abs)
        tokens.append(int(logits.argmax()))
        new = model.model.embed_tokens(torch.tensor([tokens[-1]]))
        embeds = torch.cat([embeds, new])
        kept_abs = torch.cat([kept_abs, torch.tensor([t + step])])  # decoding continues at original positions
    assert out.tolist() == tokens
    # The cache holds the full prompt below K and only the kept tokens from K on.
    cache_lengths = [t] * K + [t - (576 - keep)] * (model.config.num_hidden_layers - K)
    model.set_prune(PruneConfig(layer=K, keep=keep))
    res = model(ids, images=px, use_cache=True)
    assert res.past_key_values.layer_lengths() == cache_lengths
    assert res.logits.shape[1] == t - (576 - keep)
    assert res.past_key_values.next_position.tolist() == [t]


def test_two_images_each_pruned_to_n(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, n_images=2)
    model.set_prune(None)
    t = model(ids, images=px).logits.shape[1]
    model.set_prune(PruneConfig(layer=K, keep=50))
    logits = model(ids, images=px).logits
    recs = [stages[0] for stages in model.get_model().prune_trace[0]]
    assert [r.length for r in recs] == [576, 576] and [r.kept.numel() for r in recs] == [50, 50]
    marks = [i for i, t in enumerate(ids[0].tolist()) if t == -200]
    between = marks[1] - marks[0] - 1  # text tokens between the two images ("▁", "\n")
    assert recs[0].start == marks[0] and recs[1].start == recs[0].start + 576 + between
    assert logits.shape[1] == t - 2 * (576 - 50)
    # each image is scored on its own: its kept set equals top-N of its own scores
    for r in recs:
        assert r.kept.tolist() == top_n(r.scores, 50).tolist()


def test_padded_batch_equals_single_prompts_with_pruning(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(layer=K, keep=64))
    qs = ["Is there a dog in this picture? Please answer yes or no.", "Color?"]
    ids = [tokenizer_image_token(vicuna_prompt(q), tok, return_tensors="pt") for q in qs]
    width = max(len(x) for x in ids)
    batch = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, x in enumerate(ids):
        batch[i, : len(x)], mask[i, : len(x)] = x, 1
    px = process_images([make_image(seed=11), make_image(seed=12)], proc, model.config)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=8)
    trace_together = model.get_model().prune_trace
    for i, x in enumerate(ids):
        alone = model.generate(x[None], images=px[i:i + 1], max_new_tokens=8)
        assert together[i, : alone.shape[1]].tolist() == alone[0].tolist()
        assert model.get_model().prune_trace[0][0][0].kept.tolist() == trace_together[i][0][0].kept.tolist()


def test_text_only_prompt_is_not_pruned(loaded_tiny):
    tok, model, _, _ = loaded_tiny
    ids = tokenizer_image_token(vicuna_prompt("Say hi.", image=False), tok, return_tensors="pt")[None]
    model.set_prune(None)
    base = model(ids).logits
    model.set_prune(PruneConfig(layer=K, keep=10))
    assert torch.equal(model(ids).logits, base)
    assert model.get_model().prune_trace == [[]]


def test_eager_and_sdpa_prune_alike(loaded_tiny):
    _, model, _, _ = loaded_tiny
    ids, px = _inputs(loaded_tiny, seed=9)
    model.set_prune(PruneConfig(layer=K, keep=77, states="key"))
    outs = {}
    try:
        for impl in ("sdpa", "eager"):
            model.model.set_attn_implementation(impl)
            tokens = model.generate(ids, images=px, max_new_tokens=6)
            outs[impl] = (tokens.tolist(), model.get_model().prune_trace[0][0][0].kept.tolist())
    finally:
        model.model.set_attn_implementation("sdpa")
    assert outs["sdpa"] == outs["eager"]


def test_bad_prune_configs_name_the_flag(loaded_tiny):
    _, model, _, _ = loaded_tiny
    with pytest.raises(ValueError, match="--prune-layer"):
        model.set_prune(PruneConfig(layer=4, keep=10))  # the tiny model has 4 layers: K must be in [1, 3]
    with pytest.raises(ValueError, match="--prune-keep"):
        model.set_prune(PruneConfig(layer=2, keep=577))
    with pytest.raises(ValueError, match="--prune-layer 'auto'"):
        model.set_prune(PruneConfig(layer="auto", keep=10))
    model.set_prune(None)


def test_batch_mixing_image_and_text_only_rows(loaded_tiny):
    tok, model, proc, _ = loaded_tiny
    model.set_prune(PruneConfig(layer=K, keep=40))
    a = tokenizer_image_token(vicuna_prompt("What is it?"), tok, return_tensors="pt")
    b = tokenizer_image_token(vicuna_prompt("Tell me a story.", image=False), tok, return_tensors="pt")
    width = max(len(a), len(b))
    batch = torch.zeros(2, width, dtype=torch.long)
    mask = torch.zeros(2, width, dtype=torch.long)
    for i, x in enumerate((a, b)):
        batch[i, : len(x)], mask[i, : len(x)] = x, 1
    px = process_images([make_image(seed=21)], proc, model.config)
    together = model.generate(batch, images=px, attention_mask=mask, max_new_tokens=6)
    trace = model.get_model().prune_trace
    assert [len(row) for row in trace] == [1, 0] and trace[0][0][0].kept.numel() == 40
    alone_a = model.generate(a[None], images=px, max_new_tokens=6)
    alone_b = model.generate(b[None], max_new_tokens=6)
    assert together[0, : alone_a.shape[1]].tolist() == alone_a[0].tolist()
    assert together[1, : alone_b.shape[1]].tolist() == alone_b[0].tolist()


def test_entropy_scores_every_image_size_in_one_eigen_solve(loaded_tiny, monkeypatch):
    # Two images of different sizes in one batch are two groups; their tokens are scored in one call.
    from entropyprune.methods import entropy as entropy_module
    from llava.constants import IMAGE_TOKEN_INDEX

    tok, model, _, _ = loaded_tiny
    d = model.config.hidden_size
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(576, d, generator=g), torch.randn(300, d, generator=g)]
    ids = torch.tensor([[1, 5, 6, IMAGE_TOKEN_INDEX, 7, IMAGE_TOKEN_INDEX, 8, 9]])
    calls = []
    real = entropy_module.token_entropy
    monkeypatch.setattr(entropy_module, "token_entropy", lambda x, *a, **k: calls.append(x.shape) or real(x, *a, **k))
    model.set_prune(PruneConfig(layer=K, ratio=0.25))
    splice = model.splice_multimodal(ids, None, None, None, image_features=feats)
    hook = model._prune_hook(splice)
    with torch.no_grad():
        model.get_model()(splice.inputs_embeds, splice.position_ids, None, None, hook)
    assert len(calls) == 1 and calls[0][0] == 576 + 300
    recs = [stages[0] for stages in model.get_model().prune_trace[0]]
    assert [r.length for r in recs] == [576, 300] and [r.kept.numel() for r in recs] == [144, 75]
    for r in recs:  # each image still ranked on its own scores
        assert r.kept.tolist() == top_n(r.scores, r.kept.numel()).tolist()
