"""The ``entropyprune ecl`` tool: measure a model's layer-wise visual-token entropy and find its collapse layer.

For sampled benchmark images (LLaVA jsonl, ScienceQA json or MMBench tsv question files), one prefill each:
the image tokens' post-RoPE query and key states of every layer (captured with forward hooks on
``q_proj``/``k_proj`` and the model's own RoPE), their matrix entropy per layer, per-dataset means and
spreads, the collapse layer by :func:`entropyprune.ecl.detect_collapse`, and the files ``ecl.json``,
``ecl.png`` (paper Figure 2) and ``spectra.png`` (Figure 3). The result is stored in the registry that
``--prune-layer auto`` reads.

The package otherwise never imports ``llava``; this tool has to run the model, so it imports it lazily.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from entropyprune.config import STATES
from entropyprune.ecl import (
    CLEAR_CLARITY,
    MIN_CLARITY,
    MIN_RELATIVE_DROP,
    REGISTRY_ENV,
    detect_collapse,
    model_name_from_path,
    register_collapse_layer,
    write_json_atomic,
)
from entropyprune.score import matrix_entropy, matrix_spectrum

# ----------------------------------------------------------------------------------------------------------
# Capturing every layer's post-RoPE states


class LayerStateRecorder:
    """Forward hooks on every layer's ``q_proj``/``k_proj`` that keep the outputs over one token span.

    The model's own ``capture`` path only serves layer K-1 of the pruning hook; hooks leave the forward
    pass untouched. The projections' outputs are pre-RoPE, so :meth:`states_of` applies the model's RoPE
    (its own ``rotary_emb`` and ``apply_rotary_pos_emb``) to give exactly the states attention uses.
    """

    _PROJ = {"query": "q_proj", "key": "k_proj"}

    def __init__(self, language_model, states: Sequence[str]):
        self.lm = language_model
        self.states = tuple(states)
        self.span: tuple[int, int] | None = None
        self.outputs: dict[str, list[torch.Tensor | None]] = {}
        self._handles: list = []

    def __enter__(self) -> LayerStateRecorder:
        for i, layer in enumerate(self.lm.layers):
            for state in self.states:
                proj = getattr(layer.self_attn, self._PROJ[state])
                self._handles.append(proj.register_forward_hook(self._hook(state, i)))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, state: str, layer: int):
        def keep(_module, _inputs, output):
            start, length = self.span
            self.outputs[state][layer] = output[0, start:start + length]

        return keep

    def reset(self, span: tuple[int, int]) -> None:
        self.span = span
        self.outputs = {s: [None] * len(self.lm.layers) for s in self.states}

    def states_of(self, position_ids: torch.Tensor) -> dict[str, list[torch.Tensor]]:
        """Per state, per layer: the span's post-RoPE states as ``[V, heads * head_dim]``."""
        from llava.model.language_model.modeling_llama import apply_rotary_pos_emb

        start, length = self.span
        out: dict[str, list[torch.Tensor]] = {s: [] for s in self.states}
        tables: dict[torch.dtype, tuple[torch.Tensor, torch.Tensor]] = {}
        for i, layer in enumerate(self.lm.layers):
            attn = layer.self_attn
            for state in self.states:
                x = self.outputs[state][i]
                if x is None:
                    raise RuntimeError(f"layer {i} did not run its {self._PROJ[state]}; nothing was captured")
                heads = attn.num_heads if state == "query" else attn.num_kv_heads
                if x.dtype not in tables:
                    # Every layer shares one RoPE table: the span's positions, in the states' dtype.
                    tables[x.dtype] = self.lm.rotary_emb(position_ids[:, start:start + length], x.dtype)
                cos, sin = tables[x.dtype]
                split = x.view(length, heads, attn.head_dim).transpose(0, 1)[None]  # [1, h, V, d_h]
                # apply_rotary_pos_emb rotates a (q, k) pair; the same tensor twice rotates one.
                rotated = apply_rotary_pos_emb(split, split, cos, sin)[0]
                out[state].append(rotated[0].transpose(0, 1).reshape(length, heads * attn.head_dim))
        return out


@torch.inference_mode()
def layer_states(model, input_ids: torch.Tensor, images: torch.Tensor, states: Sequence[str] = STATES):
    """One prefill (no pruning, no generation) of a single prompt with one image.

    Returns ``({state: [L tensors [V, h * d_h]]}, (start, V))``: every layer's post-RoPE states of the
    image tokens, and where the image sits in the spliced sequence.
    """
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"layer_states takes one prompt, input_ids [1, T]; got shape {list(input_ids.shape)}")
    splice = model.splice_multimodal(input_ids, images)
    spans = splice.image_spans[0]
    if len(spans) != 1:
        raise ValueError(f"the prompt must hold exactly one <image>; it holds {len(spans)}")
    lm = model.get_model()
    with LayerStateRecorder(lm, states) as rec:
        rec.reset(spans[0])
        # The language model alone: no LM head, no cache, no prune hook whatever the model's settings.
        lm(splice.inputs_embeds, splice.position_ids, None, None, None)
        return rec.states_of(splice.position_ids), spans[0]


def entropy_profile(states: list[torch.Tensor], alpha: float = 1.0) -> list[float]:
    """``curve[i]`` = matrix entropy of layer i's token matrix (Eq. 1-4; order ``alpha``)."""
    values = torch.stack([matrix_entropy(x, alpha) for x in states])
    return values.cpu().tolist()


# ----------------------------------------------------------------------------------------------------------
# Question files


@dataclass
class Sample:
    question_id: str
    text: str
    image_path: str | None = None
    image_b64: str | None = None

    def load_image(self):
        from llava.mm_utils import load_image, load_image_from_base64

        if self.image_b64 is not None:
            return load_image_from_base64(self.image_b64).convert("RGB")
        return load_image(self.image_path)


def _strip_image_marker(text: str) -> str:
    # The prompt builder puts the one <image> marker first; a marker inside the text would add a second.
    return text.replace("<image>", "").strip()


def load_samples(question_file: str, image_folder: str | None) -> list[Sample]:
    """The items with an image of a LLaVA question file.

    Formats: ``.jsonl`` with ``{"question_id", "image", "text"}`` (LLaVA's eval files); a ``.json`` list,
    either of such records or ScienceQA's ``{"id", "image", "conversations": [...]}``; an MMBench
    ``.tsv`` (base64 images; no image folder needed). Items without an image are skipped.
    """
    if not os.path.isfile(question_file):
        raise FileNotFoundError(f"question file not found: {question_file}")
    ext = os.path.splitext(question_file)[1].lower()
    if ext == ".tsv":
        return _load_tsv(question_file)
    if image_folder is None:
        raise ValueError(f"{question_file}: give the image folder its 'image' paths are relative to")
    if ext == ".jsonl":
        records = []
        with open(question_file, encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    records.append((f"{question_file}:{lineno}", json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{question_file}:{lineno}: not valid JSON ({err.msg})") from None
    elif ext == ".json":
        with open(question_file, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{question_file}: not valid JSON ({err.msg}, line {err.lineno})") from None
        if not isinstance(data, list):
            raise ValueError(f"{question_file}: expected a JSON list of questions (ScienceQA's format)")
        records = [(f"{question_file}[{i}]", r) for i, r in enumerate(data)]
    else:
        raise ValueError(f"{question_file}: unknown question file type {ext!r}; use .jsonl, .json or .tsv")
    samples = []
    for where, rec in records:
        if not isinstance(rec, dict):
            raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
        if not rec.get("image"):
            continue
        if "text" in rec:
            text = rec["text"]
        elif isinstance(rec.get("conversations"), list) and rec["conversations"]:
            text = rec["conversations"][0].get("value", "")
        else:
            raise ValueError(f"{where}: no 'text' (LLaVA jsonl) or 'conversations' (ScienceQA) field")
        qid = rec.get("question_id", rec.get("id", where))
        samples.append(Sample(str(qid), _strip_image_marker(str(text)), os.path.join(image_folder, rec["image"])))
    return samples


def _load_tsv(path: str) -> list[Sample]:
    from llava.eval.eval_mmbench import is_missing, read_tsv
    from llava.eval.model_vqa_mmbench import build_question, get_options

    _, rows = read_tsv(path)
    samples = []
    for row in rows:
        if is_missing(row.get("image")):
            continue
        # The prompt exactly as the MMBench driver builds it.
        text = build_question({"question": "", **row}, get_options(row))
        samples.append(Sample(row["index"].strip(), text, image_b64=row["image"]))
    return samples


def choose_samples(samples: list[Sample], n: int, seed: int) -> list[Sample]:
    """``n`` samples drawn without replacement with ``seed``, in file order; all of them when n <= 0."""
    if n <= 0 or n >= len(samples):
        return list(samples)
    picked = sorted(random.Random(seed).sample(range(len(samples)), n))
    return [samples[i] for i in picked]


@dataclass
class Dataset:
    name: str
    question_file: str
    image_folder: str | None


def parse_dataset_spec(spec: str) -> Dataset:
    """``NAME=QFILE:IMGDIR`` (or ``NAME=QFILE`` for an MMBench TSV)."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--dataset {spec!r}: expected NAME=QUESTION_FILE:IMAGE_FOLDER")
    qfile, sep, folder = rest.rpartition(":")
    if not sep:
        qfile, folder = rest, None
    return Dataset(name, qfile, folder or None)


def _default_name(question_file: str, taken: set[str]) -> str:
    # playground/data/eval/<Benchmark>/<file>: the benchmark folder names the dataset.
    parent = os.path.basename(os.path.dirname(os.path.abspath(question_file)))
    stem = os.path.splitext(os.path.basename(question_file))[0]
    for name in (parent, stem, f"{parent}/{stem}"):
        if name and name not in taken:
            return name
    raise ValueError(f"two datasets with the same question file {question_file}; name them with --dataset")


def datasets_from_args(question_files: Sequence[str], image_folders: Sequence[str], specs: Sequence[str]):
    """Datasets from ``--dataset`` specs and ``--question-file``/``--image-folder`` pairs.

    Image folders pair, in order, with the question files that need one (all but MMBench TSVs).
    """
    datasets = [parse_dataset_spec(s) for s in specs]
    needing = [q for q in question_files if not q.lower().endswith(".tsv")]
    if len(image_folders) != len(needing):
        raise ValueError(
            f"{len(needing)} --question-file(s) need an image folder but {len(image_folders)} --image-folder(s) "
            "were given; give one --image-folder per --question-file (MMBench .tsv files need none)"
        )
    folders = iter(image_folders)
    taken = {d.name for d in datasets}
    for q in question_files:
        folder = None if q.lower().endswith(".tsv") else next(folders)
        name = _default_name(q, taken)
        taken.add(name)
        datasets.append(Dataset(name, q, folder))
    if not datasets:
        raise ValueError("give at least one dataset: --question-file Q --image-folder DIR, or --dataset NAME=Q:DIR")
    names = [d.name for d in datasets]
    if len(set(names)) != len(names):
        raise ValueError(f"dataset names must be distinct, got {names}")
    return datasets


# ----------------------------------------------------------------------------------------------------------
# The tool


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    t = torch.tensor(rows, dtype=torch.float64)
    # Sample standard deviation (n - 1); zero for a single sample rather than NaN.
    std = t.std(dim=0, correction=1) if t.shape[0] > 1 else torch.zeros(t.shape[1], dtype=torch.float64)
    return t.mean(dim=0).tolist(), std.tolist()


def profile_samples(model, tokenizer, image_processor, datasets_samples: dict[str, list[Sample]],
                    states: Sequence[str], alpha: float, spectra_layers: Sequence[int], conv_mode: str,
                    progress: bool = True) -> dict[str, Any]:
    """Run each sample once and collect its entropy curves and the spectra of ``spectra_layers``."""
    from tqdm import tqdm

    from llava.constants import IMAGE_TOKEN_INDEX
    from llava.eval.run_llava import build_prompt
    from llava.mm_utils import process_images, tokenizer_image_token

    total = sum(len(s) for s in datasets_samples.values())
    curves: dict[str, list[dict[str, Any]]] = {name: [] for name in datasets_samples}
    spectra_sum: dict[str, dict[int, torch.Tensor]] = {s: {} for s in states}
    n_spectra = 0
    with tqdm(total=total, desc="ECL", unit="sample", disable=not progress) as bar, torch.inference_mode():
        for name, samples in datasets_samples.items():
            bar.set_postfix_str(name)
            for sample in samples:
                prompt = build_prompt(sample.text, conv_mode, 1)
                ids = tokenizer_image_token(prompt, tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
                pixels = process_images([sample.load_image()], image_processor, model.config)
                per_state, (_start, length) = layer_states(
                    model, ids.to(model.device), pixels.to(model.device, dtype=model.dtype), states)
                record: dict[str, Any] = {"question_id": sample.question_id, "visual_tokens": length}
                for state in states:
                    record[state] = entropy_profile(per_state[state], alpha)
                    for layer in spectra_layers:
                        spec = matrix_spectrum(per_state[state][layer]).cpu()
                        acc = spectra_sum[state].get(layer)
                        if acc is not None and acc.shape[0] != spec.shape[0]:
                            # Images with fewer tokens give shorter spectra; the missing eigenvalues are 0.
                            size = max(acc.shape[0], spec.shape[0])
                            acc = torch.nn.functional.pad(acc, (0, size - acc.shape[0]))
                            spec = torch.nn.functional.pad(spec, (0, size - spec.shape[0]))
                        spectra_sum[state][layer] = spec if acc is None else acc + spec
                n_spectra += 1
                curves[name].append(record)
                bar.update(1)
    spectra = {s: {str(k): (v / n_spectra).tolist() for k, v in by_layer.items()}
               for s, by_layer in spectra_sum.items()}
    return {"curves": curves, "spectra": spectra}


def summarize(curves: dict[str, list[dict[str, Any]]], states: Sequence[str], min_relative_drop: float,
              min_clarity: float) -> dict[str, Any]:
    """Per dataset and state: mean, std and detection; the pooled decision; per-sample agreement."""

    def detect(curve):
        return detect_collapse(curve, min_relative_drop, min_clarity)

    datasets: dict[str, Any] = {}
    for name, records in curves.items():
        if not records:
            continue
        entry: dict[str, Any] = {"samples": len(records)}
        for state in states:
            mean, std = _mean_std([r[state] for r in records])
            entry[state] = {"mean": mean, "std": std, "collapse": detect(mean).to_dict()}
        datasets[name] = entry
    if not datasets:
        raise ValueError("no sample had an image; nothing to profile")
    collapse: dict[str, Any] = {}
    for state in states:
        # Mean of the dataset means: every dataset counts the same however many samples it gave.
        pooled = torch.tensor([d[state]["mean"] for d in datasets.values()], dtype=torch.float64).mean(0).tolist()
        result = detect(pooled)
        per_sample = Counter(detect(r[state]).layer for recs in curves.values() for r in recs)
        sample_order = sorted(per_sample, key=lambda k: (k is None, k or 0))
        per_dataset = {n: d[state]["collapse"]["layer"] for n, d in datasets.items()}
        collapse[state] = {
            "pooled_mean": pooled,
            **result.to_dict(),
            "summary": result.describe(),
            # How many datasets' own mean curves give the same K (null when there is no K to agree on).
            "datasets_agreeing": (None if result.layer is None
                                  else sum(k == result.layer for k in per_dataset.values())),
            "per_dataset": per_dataset,
            # JSON keys are strings; "none" counts the samples whose own curve has no collapse.
            "per_sample": {("none" if k is None else str(k)): per_sample[k] for k in sample_order},
        }
    return {"datasets": datasets, "collapse": collapse}


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


# ----------------------------------------------------------------------------------------------------------
# Figures (matplotlib's object API with the Agg canvas: no pyplot state, no display needed)

PANEL_SIZE = (5.0, 3.6)  # inches per panel
DPI = 100


def figure_size_px(panels: int) -> tuple[int, int]:
    """Pixel size (width, height) of ecl.png / spectra.png with ``panels`` panels side by side."""
    return round(PANEL_SIZE[0] * panels * DPI), round(PANEL_SIZE[1] * DPI)


def _figure(panels: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(PANEL_SIZE[0] * panels, PANEL_SIZE[1]), dpi=DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, panels, squeeze=False)[0]
    return fig, axes


def plot_curves(result: dict[str, Any], path: str) -> None:
    """Figure 2: entropy per layer, one line per dataset with a +-1 std band, one panel per state."""
    states = result["states"]
    fig, axes = _figure(len(states))
    layers = list(range(result["num_layers"]))
    for ax, state in zip(axes, states, strict=True):
        for name, entry in result["datasets"].items():
            mean = torch.tensor(entry[state]["mean"])
            std = torch.tensor(entry[state]["std"])
            (line,) = ax.plot(layers, mean.tolist(), marker="o", markersize=3, linewidth=1.4,
                              label=f"{name} (n={entry['samples']})")
            ax.fill_between(layers, (mean - std).tolist(), (mean + std).tolist(), color=line.get_color(),
                            alpha=0.18, linewidth=0)
        k = result["collapse"][state]["layer"]
        if k is not None:
            # The collapse happens between layers K-1 and K; the line sits between them.
            ax.axvline(k - 0.5, color="0.3", linestyle="--", linewidth=1, label=f"collapse: K = {k}")
        ax.set_title(f"{state} states")
        ax.set_xlabel("layer (0-based)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_ylabel("matrix entropy" + ("" if result["alpha"] == 1 else f" (order {result['alpha']:g})"))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Visual-token matrix entropy: {result['model_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


def plot_spectra(result: dict[str, Any], path: str) -> None:
    """Figure 3: the mean eigenvalue spectrum of the chosen layers, log scale, one panel per state."""
    states = result["states"]
    fig, axes = _figure(len(states))
    for ax, state in zip(axes, states, strict=True):
        for layer in result["spectra"]["layers"]:
            eig = [e for e in result["spectra"][state][str(layer)] if e > 0]  # zeros have no place on a log axis
            ax.plot(range(1, len(eig) + 1), eig, linewidth=1.4, label=f"L{layer}")
        ax.set_yscale("log")
        ax.set_title(f"{state} states")
        ax.set_xlabel("eigenvalue rank")
        ax.set_ylabel("eigenvalue (trace-normalised)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    fig.suptitle(f"Eigenvalue spectra (mean over samples): {result['model_name']}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


# ----------------------------------------------------------------------------------------------------------
# Command line (registered in entropyprune.cli)


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


def cmd_ecl(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
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
