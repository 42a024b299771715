"""Prefill time of our LlamaModel against transformers' LlamaForCausalLM on the same random weights.

    python -m llava.bench.prefill_vs_hf [--layers 2] [--tokens 620] [--repeats 7] [--device cpu]

LLaVA-1.5-7B's widths (hidden 4096, FFN 11008, 32 heads); `--layers 32` on a GPU is the full model. Both
models run the same input (620 tokens: a LLaVA-1.5 prompt with one image), interleaved, after a warm-up;
the table gives medians and the ratio. The output logits are compared too: past ``--tolerance`` (relative
to the largest logit; default 1e-4 in float32, 2e-2 in half precision) the command exits with status 1,
so a fast wrong model fails.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from llava.bench.timing import sync


def build_pair(layers: int, device, dtype, vocab: int = 32000):
    from transformers import LlamaConfig, LlamaForCausalLM

    from llava.model.language_model.llava_llama import LlavaConfig, LlavaLlamaForCausalLM

    kw = dict(vocab_size=vocab, hidden_size=4096, intermediate_size=11008, num_hidden_layers=layers,
              num_attention_heads=32, num_key_value_heads=32, rms_norm_eps=1e-5, max_position_embeddings=4096)
    with torch.device(device):
        ref = LlamaForCausalLM(LlamaConfig(**kw, attn_implementation="sdpa")).to(dtype).eval()
        ours = LlavaLlamaForCausalLM(LlavaConfig(**kw)).to(dtype).eval()
    ours.load_state_dict(ref.state_dict(), strict=False)
    ours.model.rotary_emb.reset_parameters(device)
    return ours, ref


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=620)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default=None, help="float16 on a GPU, float32 on the CPU by default")
    ap.add_argument("--tolerance", type=float, default=None,
                    help="largest relative logit difference accepted (default 1e-4 float32, 2e-2 half)")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype) if args.dtype else (torch.float16 if device.type == "cuda" else torch.float32)
    torch.manual_seed(0)
    ours, ref = build_pair(args.layers, device, dtype)
    ids = torch.randint(0, 32000, (1, args.tokens), device=device)
    pos = torch.arange(args.tokens, device=device)[None]

    def run_ours():
        hidden, _ = ours.model(ours.model.embed_tokens(ids), pos)
        return ours.lm_head(hidden[:, -1:])

    def run_ref():
        hidden = ref.model(input_ids=ids, position_ids=pos).last_hidden_state
        return ref.lm_head(hidden[:, -1:])

    times: dict[str, list[float]] = {"ours": [], "transformers": []}
    with torch.inference_mode():
        a, b = run_ours(), run_ref()  # warm-up, and the two must agree
        err = ((a.float() - b.float()).abs().max() / b.float().abs().max()).item()
        for _ in range(args.repeats):
            for name, fn in (("ours", run_ours), ("transformers", run_ref)):
                sync(device)
                t0 = time.perf_counter()
                fn()
                sync(device)
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"device {device} dtype {str(dtype).replace('torch.', '')} layers {args.layers} tokens {args.tokens} "
          f"torch {torch.__version__}; relative logit difference {err:.2e}")
    print(f"{'model':<14}{'median prefill (ms)':>22}")
    for k, v in med.items():
        print(f"{k:<14}{v * 1e3:>22.1f}")
    print(f"ours / transformers: {med['ours'] / med['transformers']:.3f}")
    tolerance = args.tolerance if args.tolerance is not None else (1e-4 if dtype == torch.float32 else 2e-2)
    if not err <= tolerance:
        print(f"FAILED: the logits differ by {err:.2e} (relative), more than --tolerance {tolerance:g}")
        return 1
    return 0


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
