"""Which pruned prefills synchronise the host with the GPU, method by method (CUDA only).

Runs one prefill per registered in-LLM method on a random-weight model under
``torch.cuda.set_sync_debug_mode("warn")`` and counts the synchronising calls PyTorch reports, against
vanilla LLaVA (which has none inside the layer loop; a padded batch's mask comes from the splice). A
vision-stage method is counted over its own call (it runs inside the splice, before the language model);
an adaptive one reads its per-image counts back once by design. The count is what the docs' "no host-device
sync" statements rest on.

    python -m llava.bench.sync_check [--arch tiny|llava-1.5-7b] [--dtype float16]
"""

from __future__ import annotations

import argparse
import warnings

import torch

from entropyprune.config import PruneConfig
from entropyprune.methods import available_methods, get_spec, method_stage
from entropyprune.options import build_options
from llava.bench.workload import attach_random_clip_text, random_model, random_prompts

# A configuration that fits any model with >= 4 layers: every method at one modest budget.
CONFIGS = {
    "pdrop": dict(ratio=0.5, options={"layer_list": "1,2,3"}),
    "sparsevlm": dict(avg_tokens=192, options={"pruning_loc": "0,1,2", "token_list": "300,120,40"}),
}


def _counting(caught: list):
    """Sync debug mode around one call; the warnings it raises land in ``caught``."""
    import contextlib

    @contextlib.contextmanager
    def scope():
        torch.cuda.synchronize()
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")
        caught.extend(got)

    return scope


def count_vision_syncs(model, prompt, cfg) -> int:
    """Synchronising calls inside a vision-stage method's call (the splice runs it)."""
    from entropyprune.methods import get_method

    model.set_prune(cfg)
    lm = model.get_model()
    caught: list = []
    scope = _counting(caught)
    fn = get_method(cfg.method)

    def counted(inputs, n_keep):
        inputs.projected  # noqa: B018 - the projector runs in vanilla LLaVA too; not the method's
        with scope():
            return fn(inputs, n_keep)

    lm.vision_method = counted
    try:
        model.splice_multimodal(prompt.input_ids, prompt.images, None, None, padding_side="left",
                                texts=[prompt.text])
    finally:
        lm.vision_method = None
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def count_syncs(model, prompt, cfg) -> int:
    model.set_prune(cfg)
    lm = model.get_model()
    splice = model.splice_multimodal(prompt.input_ids, prompt.images, None, None, padding_side="left",
                                     image_features=None if prompt.features is None else [prompt.features])
    hook = model._prune_hook(splice)
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            lm(splice.inputs_embeds, splice.position_ids, None, None, hook, has_padding=splice.has_padding)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    return sum("synchroniz" in str(w.message) for w in caught)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", default="tiny", choices=("tiny", "llava-1.5-7b"))
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--dtype", default="float16", choices=("float16", "bfloat16", "float32"))
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        raise ValueError("the sync check needs a CUDA device")
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    model = random_model(args.arch, args.layers, True, device, dtype, seed=0)
    prompt = random_prompts(model, 62, 1, device, dtype, seed=0)[0]
    rows = [{"method": "vanilla", "syncs": count_syncs(model, prompt, None)}]
    vision = [name for name in available_methods() if method_stage(name) == "vision"]
    if any("clip_text" in get_spec(name).needs for name in vision):
        attach_random_clip_text(model, args.arch, seed=0)
    for name in available_methods():
        if method_stage(name) != "llm":
            continue
        cfg = PruneConfig(method=name, **CONFIGS.get(name, dict(layer=2, keep=100)))
        rows.append({"method": name, "syncs": count_syncs(model, prompt, cfg)})
    for name in vision + ["random"]:
        spec = get_spec(name)  # an adaptive method (by default) takes no budget: one given to it is refused
        adaptive = spec.adaptive is not None and spec.adaptive(build_options(name, spec.options, {}))
        cfg = PruneConfig(method=name, layer=0) if adaptive else PruneConfig(method=name, layer=0, keep=64)
        label = name if name != "random" else "random@0"
        rows.append({"method": label, "syncs": count_vision_syncs(model, prompt, cfg), "adaptive": cfg.adaptive})
    for row in rows:
        where = "in its call (adaptive: its counts are read back)" if row.get("adaptive") else (
            "in its call" if "adaptive" in row else "in one prefill")
        print(f"{row['method']:>14}: {row['syncs']} synchronising call(s) {where}")
    return rows


if __name__ == "__main__":
    from llava.utils import run_cli

    run_cli(main)
