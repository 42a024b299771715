"""The ``entropyprune ecl`` command: load a model, profile sampled prompts, write ecl.json / ecl.png /
spectra.png, and record the collapse layer in the registry that ``--prune-layer auto`` reads."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from entropyprune.config import STATES
from entropyprune.ecl import (
    CLEAR_CLARITY,
    MIN_CLARITY,
    MIN_RELATIVE_DROP,
    REGISTRY_ENV,
    model_name_from_path,
    register_collapse_layer,
)
from entropyprune.files import write_json_atomic
from llava.tools.ecl.plots import plot_curves, plot_spectra
from llava.tools.ecl.profile import profile_samples, summarize
from llava.tools.ecl.samples import Sample, choose_samples, datasets_from_args, load_samples


def run_ecl(args: argparse.Namespace) -> dict[str, Any]:
    """The ``entropyprune ecl`` command: load, profile, write ecl.json / ecl.png / spectra.png, register."""
    from llava.model.builder import load_pretrained_model

    states = _parse_states(args.states)
    datasets = datasets_from_args(args.question_file or [], args.image_folder or [], args.dataset or [])
    chosen: dict[str, list[Sample]] = {}
    for d in datasets:
        samples = load_samples(d.question_file, d.image_folder)
        if not samples:
            raise ValueError(f"{d.question_file}: no question with an image")
        chosen[d.name] = choose_samples(samples, args.samples, args.seed)
        missing = [s.image_path for s in chosen[d.name]
                   if s.image_path is not None and not os.path.isfile(s.image_path)]
        if missing:
            # Checked before loading the model so that a wrong --image-folder fails in a second.
            raise FileNotFoundError(
                f"{len(missing)} image(s) of {d.question_file} not found under {d.image_folder}, e.g. {missing[0]}; "
                "check --image-folder"
            )

    tokenizer, model, image_processor, _ = load_pretrained_model(
        args.model_path, device=args.device, torch_dtype=args.dtype, vision_tower=args.vision_tower)
    num_layers = len(model.get_model().layers)
    spectra_layers = _spectra_layers(args.layers_spectra, num_layers)

    prof = profile_samples(model, tokenizer, image_processor, chosen, states, args.alpha, spectra_layers,
                           args.conv_mode, progress=not args.no_progress)
    summary = summarize(prof["curves"], states, args.min_relative_drop, args.min_clarity)
    primary = states[0]
    decision = summary["collapse"][primary]
    result = {
        "model_path": args.model_path,
        "model_name": model_name_from_path(args.model_path),
        "num_layers": num_layers,
        "states": list(states),
        "alpha": args.alpha,
        "samples_per_dataset": args.samples,
        "seed": args.seed,
        "conv_mode": args.conv_mode,
        "dtype": str(model.dtype).replace("torch.", ""),
        "rule": {"min_relative_drop": args.min_relative_drop, "min_clarity": args.min_clarity,
                 "clear_clarity": CLEAR_CLARITY, "decided_on": primary},
        "layer": decision["layer"],
        "datasets": {d.name: {"question_file": os.path.abspath(d.question_file),
                              "image_folder": d.image_folder and os.path.abspath(d.image_folder),
                              **summary["datasets"][d.name]} for d in datasets if d.name in summary["datasets"]},
        "collapse": summary["collapse"],
        "spectra": {"layers": spectra_layers, **prof["spectra"]},
        "per_sample": prof["curves"],
    }

    os.makedirs(args.out, exist_ok=True)
    json_path = os.path.join(args.out, "ecl.json")
    plot_curves(result, os.path.join(args.out, "ecl.png"))
    if spectra_layers:
        plot_spectra(result, os.path.join(args.out, "spectra.png"))
    registry = None
    if decision["layer"] is not None and not args.no_register:
        registry = register_collapse_layer(
            args.model_path, decision["layer"], states=primary, alpha=args.alpha, clarity=decision["clarity"],
            relative_drop=decision["relative_drop"], ecl_json=os.path.abspath(json_path))
    result["registry"] = registry
    write_json_atomic(json_path, result)
    _print_summary(result, args.out)
    return result


def _print_summary(result: dict[str, Any], out: str) -> None:
    states = result["states"]
    for state in states:
        c = result["collapse"][state]
        n_sets = len(c["per_dataset"])
        per_sample = ", ".join(f"K={k}: {v}" for k, v in c["per_sample"].items())
        per_set = ", ".join(f"{name} K={'none' if k is None else k}" for name, k in c["per_dataset"].items())
        print(f"{state:>5} (mean of {n_sets} dataset(s)): {c['summary']}")
        print(f"       per dataset: {per_set}; per sample: {per_sample}")
    layer = result["layer"]
    if layer is None:
        print(f"No Entropy Collapse Layer found in the {states[0]} curve; nothing registered. Look at "
              f"{os.path.join(out, 'ecl.png')} and pass --prune-layer explicitly.")
    elif result["registry"]:
        print(f"Entropy Collapse Layer K = {layer}: registered in {result['registry']} for --prune-layer auto")
    else:
        print(f"Entropy Collapse Layer K = {layer} (not registered: --no-register)")
    print(f"wrote {os.path.join(out, 'ecl.json')}, {os.path.join(out, 'ecl.png')}"
          + (f", {os.path.join(out, 'spectra.png')}" if result["spectra"]["layers"] else ""))


def _parse_states(text: str) -> tuple[str, ...]:
    states = tuple(s.strip() for s in text.split(",") if s.strip())
    bad = [s for s in states if s not in STATES]
    if not states or bad or len(set(states)) != len(states):
        raise ValueError(f"--states takes a comma-separated list of {', '.join(STATES)}, got {text!r}")
    return states


DEFAULT_SPECTRA_LAYERS = (0, 1, 2, 8)


def _spectra_layers(text: str | None, num_layers: int) -> list[int]:
    if text is None:
        # The default follows Figure 3 (around the collapse, and one deep layer) within the model's depth.
        return [i for i in DEFAULT_SPECTRA_LAYERS if i < num_layers]
    if text.strip().lower() in ("", "none"):
        return []
    try:
        layers = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise ValueError(f"--layers-spectra takes comma-separated layer numbers, got {text!r}") from None
    bad = [i for i in layers if not 0 <= i < num_layers]
    if bad:
        raise ValueError(f"--layers-spectra {bad} out of range: the model has layers 0..{num_layers - 1}")
    return layers


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model-path", required=True, help="checkpoint folder or hub id (LLaVA or transformers format)")
    p.add_argument("--vision-tower", default=None, help="override mm_vision_tower (a local CLIP folder)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--dtype", default=None, help="float16, bfloat16 or float32 (default: fp16 on GPU, fp32 on CPU)")
    p.add_argument("--conv-mode", default="vicuna_v1", help="prompt template (default: %(default)s)")
    p.add_argument("--question-file", action="append", metavar="QFILE",
                   help="LLaVA .jsonl, ScienceQA .json or MMBench .tsv; repeat for several datasets")
    p.add_argument("--image-folder", action="append", metavar="DIR",
                   help="images of the matching --question-file (in order; .tsv files need none)")
    p.add_argument("--dataset", action="append", metavar="NAME=QFILE:IMGDIR",
                   help="a named dataset (NAME=QFILE for a .tsv); repeatable")
    p.add_argument("--samples", type=int, default=64, help="samples drawn per dataset; 0 = all (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sample draw (default: 0)")
    p.add_argument("--states", default="query,key",
                   help="comma-separated: query, key; the first decides the layer (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=1.0, help="entropy order (Eq. 2); 1 = von Neumann (Eq. 4)")
    p.add_argument("--layers-spectra", default=None, metavar="I,J,...",
                   help="layers whose eigenvalue spectra go to spectra.png; 'none' for no figure "
                        "(default: 0,1,2,8, those the model has)")
    p.add_argument("--min-relative-drop", type=float, default=MIN_RELATIVE_DROP,
                   help="smallest drop, as a fraction of the peak entropy, that counts as a collapse "
                        "(default: %(default)s)")
    p.add_argument("--min-clarity", type=float, default=MIN_CLARITY,
                   help="how many times larger than the next largest drop the collapse must be "
                        "(default: %(default)s)")
    p.add_argument("--no-register", action="store_true",
                   help=f"do not record the layer in the registry (${REGISTRY_ENV} or ~/.cache/entropyprune)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--out", required=True, metavar="DIR", help="where ecl.json, ecl.png and spectra.png go")


def _check_out(out: str) -> str | None:
    """Why --out cannot take the results, found before the profile runs (it is written last)."""
    if os.path.exists(out) and not os.path.isdir(out):
        return f"--out {out} is a file, not a folder (ecl.json, ecl.png and spectra.png go in it)"
    parent = out
    while not os.path.exists(parent):  # the nearest folder that exists must let us create the rest
        parent = os.path.dirname(os.path.abspath(parent))
    if not (os.path.isdir(parent) and os.access(parent, os.W_OK)):
        return f"--out {out} cannot be written ({parent} is not a writable folder)"
    return None


def cmd_ecl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    problem = _check_out(args.out)
    if problem:
        parser.error(problem)
    if not args.alpha > 0:
        parser.error(f"--alpha must be > 0, got {args.alpha}")
    if args.samples < 0:
        parser.error(f"--samples must be >= 0 (0 = all), got {args.samples}")
    try:
        _parse_states(args.states)
        datasets_from_args(args.question_file or [], args.image_folder or [], args.dataset or [])
    except ValueError as err:
        parser.error(str(err))
    try:
        run_ecl(args)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0
