"""Reference computations shared by the tests, written from the definitions, sharing no code with the model:
Llama's rotary embedding and one decoder layer (plain causal attention, own norms and softmax)."""

import math

import torch


def rope(x, pos, theta=10000.0):
    """Llama's half-split rotary embedding of x [..., T, d] at positions pos [T] (float64 angles)."""
    d = x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = pos.double()[:, None] * inv[None]  # [T, d/2]
    cos, sin = torch.cos(ang).float(), torch.sin(ang).float()
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def ref_layer(layer, x, pos):
    """One decoder layer on x [T, D] at positions pos [T]: (output [T, D], attention probabilities [h, T, T])."""
    att = layer.self_attn
    h, d = att.num_heads, att.head_dim

    def norm(mod, v):
        return mod.weight * (v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + mod.variance_epsilon))

    a = norm(layer.input_layernorm, x)
    q = rope((a @ att.q_proj.weight.T).view(-1, h, d).transpose(0, 1), pos)
    k = rope((a @ att.k_proj.weight.T).view(-1, h, d).transpose(0, 1), pos)
    v = (a @ att.v_proj.weight.T).view(-1, h, d).transpose(0, 1)
    t = x.shape[0]
    logits = (q @ k.transpose(1, 2) / math.sqrt(d)).masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(),
                                                                float("-inf"))
    probs = logits.softmax(-1)
    x = x + (probs @ v).transpose(0, 1).reshape(t, h * d) @ att.o_proj.weight.T
    m = layer.mlp
    b = norm(layer.post_attention_layernorm, x)
    out = x + (torch.nn.functional.silu(b @ m.gate_proj.weight.T) * (b @ m.up_proj.weight.T)) @ m.down_proj.weight.T
    return out, probs


def transformers_llama(model):
    """transformers' LlamaForCausalLM (eager attention) holding ``model``'s language-model weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = model.config
    kw = dict(vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
              num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
              num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps,
              rope_theta=cfg.rope_theta, max_position_embeddings=cfg.max_position_embeddings)
    ref = LlamaForCausalLM(LlamaConfig(**kw, attn_implementation="eager")).eval()
    state = {k: v.cpu() for k, v in model.state_dict().items()
             if k.startswith(("model.layers.", "lm_head.", "model.norm.", "model.embed"))}
    missing, unexpected = ref.load_state_dict(state, strict=False)
    assert not missing and not unexpected
    return ref
