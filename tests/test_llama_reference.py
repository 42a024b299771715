"""Our LlamaModel against transformers' LlamaForCausalLM on the same random weights."""

import pytest
import torch

from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM


def _pair(num_kv_heads=4, seed=0, attn="sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    kw = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=num_kv_heads, rms_norm_eps=1e-5, rope_theta=10000.0, max_position_embeddings=256)
    ref = LlamaForCausalLM(LlamaConfig(**kw, attn_implementation="eager")).eval()
    with torch.no_grad():  # larger weights than the init so differences are not hidden by tiny activations
        for p in ref.parameters():
            p.normal_(0, 0.2)
    ours = LlavaLlamaForCausalLM(LlavaConfig(**kw)).eval()
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not [k for k in unexpected if "rotary" not in k]
    ours.model.set_attn_implementation(attn)
    return ours, ref


def _our_logits(model, ids, mask, pos):
    emb = model.model.embed_tokens(ids)
    hidden, _ = model.model(emb, pos, mask)
    return model.lm_head(hidden)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("kv_heads", [4, 2])
def test_logits_match_transformers(attn, kv_heads):
    ours, ref = _pair(kv_heads, attn=attn)
    ids = torch.randint(0, 97, (2, 13), generator=torch.Generator().manual_seed(1))
    pos = torch.arange(13)[None].expand(2, -1)
    with torch.no_grad():
        a = _our_logits(ours, ids, None, pos)
        b = ref(input_ids=ids, position_ids=pos).logits
    assert (a - b).abs().max() <= 1e-4


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_logits_match_transformers_left_padding(attn):
    ours, ref = _pair(attn=attn)
    ids = torch.randint(0, 97, (2, 11), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[1, :4] = 0  # row 1 is left-padded by 4
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        a = _our_logits(ours, ids, mask, pos)
        b = ref(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert torch.isfinite(a).all()
    assert (a[real] - b[real]).abs().max() <= 1e-4
    # and the padded row equals that row run alone, unpadded
    with torch.no_grad():
        alone = _our_logits(ours, ids[1:, 4:], None, torch.arange(7)[None])
    assert (a[1, 4:] - alone[0]).abs().max() <= 1e-4


def test_decode_with_cache_equals_full_forward():
    from llava.model.language_model.modeling_llama import KVCache

    ours, _ = _pair()
    ids = torch.randint(0, 97, (1, 9), generator=torch.Generator().manual_seed(3))
    pos = torch.arange(9)[None]
    with torch.no_grad():
        full = _our_logits(ours, ids, None, pos)
        cache = KVCache(3, extra=2)
        emb = ours.model.embed_tokens
        h, _ = ours.model(emb(ids[:, :6]), pos[:, :6], None, cache)
        steps = [ours.lm_head(h)]
        for t in range(6, 9):
            h, _ = ours.model(emb(ids[:, t:t + 1]), pos[:, t:t + 1], None, cache)
            steps.append(ours.lm_head(h))
    assert (torch.cat(steps, 1) - full).abs().max() <= 1e-4
    assert cache.layer_lengths() == [9, 9, 9]
