"""Layer-wise matrix entropy of the visual tokens and the Entropy Collapse Layer (ECL), paper Sec. 3.3.

The profile (paper Figure 2): for one image and every decoder layer i, the image tokens' post-RoPE query
(or key) states of layer i form the token matrix X_i = [V, h * d_h] (all heads side by side); its
matrix entropy (Eq. 1-4, :func:`entropyprune.score.matrix_entropy`) is ``curve[i]``. In the paper's
measurements of LLaVA-1.5 the curve, averaged over samples, is high in the first layers and drops
abruptly once, the same way on eight datasets.

The collapse layer K (0-based, the same number as ``--prune-layer``) is the layer *after* the drop:
``curve[K-1] - curve[K]`` is the largest drop between consecutive layers. Pruning at K then means what
the pruning contract says: layers 0..K-1 see every token, the scores come from layer K-1 (the last
layer before the collapse) and layers K.. see only the kept tokens. The paper's LLaVA-1.5-7B curve is
high in its first two layers (0 and 1) and drops "after the second layer", so K = 2, the layer the
released scripts prune at. The detection rule is in :func:`detect_collapse`.

Also here: the registry of measured collapse layers that ``--prune-layer auto`` reads
(:func:`resolve_auto_layer`). The ``entropyprune ecl`` tool that measures a model's profile and writes
the registry entry is :mod:`llava.tools.ecl`.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from entropyprune.config import AUTO_LAYER, PruneConfig
from entropyprune.files import write_json_atomic

__all__ = [
    "BUILTIN_LAYERS",
    "CollapseResult",
    "ECLNotFoundError",
    "detect_collapse",
    "ecl_command",
    "find_collapse_layer",
    "load_registry",
    "lookup_collapse_layer",
    "model_name_from_path",
    "register_collapse_layer",
    "registry_path",
    "resolve_auto_layer",
]

# ----------------------------------------------------------------------------------------------------------
# Detection

# Defaults of the rule; `entropyprune ecl --min-relative-drop/--min-clarity` change them.
MIN_RELATIVE_DROP = 0.05
MIN_CLARITY = 1.5
# At or above this clarity the drop is reported as clear-cut; between MIN_CLARITY and it, as weak.
CLEAR_CLARITY = 3.0


@dataclass(frozen=True)
class CollapseResult:
    """The outcome of :func:`detect_collapse` on one curve.

    ``layer`` is K, or None when the curve has no collapse (flat, or no single drop stands out).
    ``candidate`` is the layer after the largest drop even when that drop is rejected, so a report can
    say what was looked at. ``drop`` = curve[K-1] - curve[K]; ``relative_drop`` = drop / max |curve|;
    ``share_of_range`` = drop / (max - min); ``clarity`` = drop / the next largest drop between
    consecutive layers (``math.inf`` when no other layer drops at all); ``runner_up`` = the layer after
    that next largest drop.
    """

    layer: int | None
    candidate: int | None
    drop: float
    relative_drop: float
    share_of_range: float
    clarity: float
    runner_up: int | None
    verdict: str  # "clear", "weak" or "none"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        # JSON has no infinity; null means "no other layer drops at all".
        out["clarity"] = None if math.isinf(self.clarity) else self.clarity
        return out

    def describe(self) -> str:
        clarity = "inf" if math.isinf(self.clarity) else f"{self.clarity:.2f}"
        if self.candidate is None:
            return f"no collapse ({self.reason})"
        if self.layer is not None:
            head = f"K = {self.layer}"
        else:
            head = f"no collapse (largest drop into layer {self.candidate})"
        return (
            f"{head}: drop {self.drop:.3f} between layers {self.candidate - 1} and {self.candidate} = "
            f"{100 * self.relative_drop:.1f}% of the peak entropy, {100 * self.share_of_range:.0f}% of the "
            f"curve's range; clarity {clarity} "
            + (f"(x the next largest drop, into layer {self.runner_up})" if self.runner_up is not None
               else "(no other layer drops)")
            + f"; {self.verdict}"
        )


def detect_collapse(
    curve: Sequence[float],
    min_relative_drop: float = MIN_RELATIVE_DROP,
    min_clarity: float = MIN_CLARITY,
) -> CollapseResult:
    """Find the Entropy Collapse Layer of ``curve`` (``curve[i]`` = entropy at 0-based layer i).

    Rule: with d_i = curve[i-1] - curve[i] for i = 1..L-1, the candidate K is the i with the largest
    d_i (the earliest on ties). It is the collapse layer when both

    * ``relative_drop = d_K / max|curve| >= min_relative_drop`` (default 5%): the layer loses a real
      fraction of the entropy. Below that the curve is called flat. (Relative to the peak rather than
      to the curve's range: on a flat curve with noise the largest step is always a large share of the
      tiny range, so the range cannot tell noise from a collapse.)
    * ``clarity = d_K / (second largest d_i) >= min_clarity`` (default 1.5): one drop stands out. A
      smooth decline (linear, exponential, a gentle S over several layers) spreads its loss over many
      similar steps and has clarity near 1.

    ``verdict`` is "clear" at clarity >= 3, "weak" between ``min_clarity`` and 3, else "none".
    """
    values = [float(v) for v in curve]
    if len(values) < 2:
        raise ValueError(f"an entropy curve needs at least 2 layers, got {len(values)}")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"the entropy curve has non-finite values: {values}")
    if not (min_relative_drop >= 0 and min_clarity >= 1):
        raise ValueError(
            f"need min_relative_drop >= 0 and min_clarity >= 1, got {min_relative_drop} and {min_clarity}"
        )
    drops = [values[i - 1] - values[i] for i in range(1, len(values))]
    level = max(abs(v) for v in values)
    span = max(values) - min(values)
    k = 1 + max(range(len(drops)), key=lambda j: (drops[j], -j))
    drop = drops[k - 1]
    if drop <= 0 or level == 0:
        return CollapseResult(None, None, max(drop, 0.0), 0.0, 0.0, 0.0, None, "none",
                              "the entropy never decreases from one layer to the next")
    others = [(d, i + 1) for i, d in enumerate(drops) if i + 1 != k and d > 0]
    second, runner_up = max(others, key=lambda t: (t[0], -t[1])) if others else (0.0, None)
    clarity = drop / second if second > 0 else math.inf
    relative = drop / level
    share = drop / span
    if relative < min_relative_drop:
        verdict, reason, layer = "none", (
            f"flat: the largest drop is {100 * relative:.1f}% of the peak, below {100 * min_relative_drop:g}%"
        ), None
    elif clarity < min_clarity:
        verdict, reason, layer = "none", (
            f"no single drop stands out: clarity {clarity:.2f} < {min_clarity:g} (a gradual decline)"
        ), None
    else:
        layer = k
        verdict = "clear" if clarity >= CLEAR_CLARITY else "weak"
        reason = f"largest drop into layer {k}"
    return CollapseResult(layer, k, drop, relative, share, clarity, runner_up, verdict, reason)


def find_collapse_layer(
    curve: Sequence[float],
    min_relative_drop: float = MIN_RELATIVE_DROP,
    min_clarity: float = MIN_CLARITY,
) -> int | None:
    """K such that the entropy collapses between layers K-1 and K, or None (see :func:`detect_collapse`)."""
    return detect_collapse(curve, min_relative_drop, min_clarity).layer


# ----------------------------------------------------------------------------------------------------------
# Registry of measured collapse layers (what --prune-layer auto reads)

REGISTRY_ENV = "ENTROPYPRUNE_ECL_REGISTRY"
REGISTRY_VERSION = 1

# The paper's Figure 2 and the released scripts (id_prune_layer=2 for LLaVA-1.5, "# Entropy Collapse
# Layer"). Keyed by the lower-cased model name, i.e. the checkpoint folder's or hub id's last part.
BUILTIN_LAYERS: dict[str, int] = {
    "llava-v1.5-7b": 2,
    "llava-v1.5-13b": 2,
    "llava-1.5-7b-hf": 2,
    "llava-1.5-13b-hf": 2,
}

# What the error message suggests running: MME's LLaVA question file, where docs/Evaluation.md puts it.
_SUGGESTED_DATA = (
    "--question-file playground/data/eval/MME/llava_mme.jsonl "
    "--image-folder playground/data/eval/MME/MME_Benchmark_release_version"
)


class ECLNotFoundError(ValueError):
    """``--prune-layer auto`` for a model whose collapse layer has not been measured."""


def registry_path() -> str:
    """``$ENTROPYPRUNE_ECL_REGISTRY``, else ``${XDG_CACHE_HOME:-~/.cache}/entropyprune/ecl_registry.json``."""
    env = os.environ.get(REGISTRY_ENV)
    if env:
        return os.path.abspath(os.path.expanduser(env))
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "entropyprune", "ecl_registry.json")


def model_name_from_path(model_path: str) -> str:
    """LLaVA's ``get_model_name_from_path``: the last path part, ``parent_checkpoint-N`` for checkpoints."""
    parts = os.fspath(model_path).strip("/").split("/")
    if parts[-1].startswith("checkpoint-") and len(parts) > 1:
        return parts[-2] + "_" + parts[-1]
    return parts[-1]


def _path_key(model_path: str) -> str | None:
    # Only a folder that exists here has an absolute path worth keying on; a hub id is looked up by name.
    path = os.path.expanduser(os.fspath(model_path))
    return os.path.realpath(path) if os.path.isdir(path) else None


def _empty_registry() -> dict[str, Any]:
    return {"version": REGISTRY_VERSION, "by_path": {}, "by_name": {}}


def load_registry(path: str | None = None) -> dict[str, Any]:
    """The registry file as a dict (empty when the file does not exist); a broken file is an error."""
    path = path or registry_path()
    if not os.path.exists(path):
        return _empty_registry()
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(
            f"cannot read the ECL registry {path}: {err}. Delete it (or point ${REGISTRY_ENV} elsewhere) and "
            "re-run `entropyprune ecl` for your models."
        ) from err
    if not (isinstance(data, dict) and isinstance(data.get("by_path"), dict) and isinstance(data.get("by_name"), dict)):
        raise ValueError(
            f"the ECL registry {path} is not in the expected format ({{'by_path': {{}}, 'by_name': {{}}}}); "
            f"delete it and re-run `entropyprune ecl`"
        )
    return data


def register_collapse_layer(model_path: str, layer: int, path: str | None = None, **info: Any) -> str:
    """Record ``layer`` as the ECL of ``model_path`` (by absolute path and by name); returns the file."""
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 1:
        raise ValueError(f"a collapse layer is an integer >= 1, got {layer!r}")
    path = path or registry_path()
    data = load_registry(path)
    entry = {"layer": layer, "model_path": _path_key(model_path) or os.fspath(model_path),
             "recorded": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), **info}
    key = _path_key(model_path)
    if key is not None:
        data["by_path"][key] = entry
    data["by_name"][model_name_from_path(model_path).lower()] = entry
    write_json_atomic(path, data)
    return path


def lookup_collapse_layer(model_path: str, path: str | None = None) -> tuple[int, str] | None:
    """(K, where it came from) for ``model_path``, or None.

    Order: the registry by the folder's absolute path, the registry by model name, the built-in entries
    by model name. A measurement the user made wins over the built-ins; the path wins over the name
    because two different checkpoints can share a folder name.
    """
    path = path or registry_path()
    data = load_registry(path)
    key = _path_key(model_path)
    name = model_name_from_path(model_path).lower()
    if key is not None and key in data["by_path"]:
        return int(data["by_path"][key]["layer"]), f"{path} (by path {key})"
    if name in data["by_name"]:
        return int(data["by_name"][name]["layer"]), f"{path} (by name {name!r})"
    if name in BUILTIN_LAYERS:
        return BUILTIN_LAYERS[name], f"built-in entry for {name!r} (the paper's Entropy Collapse Layer)"
    return None


def ecl_command(model_path: str) -> str:
    """The ``entropyprune ecl`` command that measures and registers the collapse layer of ``model_path``."""
    out = os.path.join("ecl", model_name_from_path(model_path))
    return f"entropyprune ecl --model-path {model_path} {_SUGGESTED_DATA} --samples 64 --out {out}"


def resolve_auto_layer(cfg: PruneConfig | None, model_path: str) -> PruneConfig | None:
    """``cfg`` with ``layer="auto"`` replaced by the model's Entropy Collapse Layer; other configs unchanged.

    Methods that prune before the language model (stage "vision") always run at K = 0, so "auto" means
    0 for them. Otherwise the layer comes from :func:`lookup_collapse_layer`; when none is known this
    raises :class:`ECLNotFoundError` with the command that measures it.
    """
    if cfg is None or cfg.layer != AUTO_LAYER:
        return cfg
    if cfg.stage == "vision":
        return dataclasses.replace(cfg, layer=0)
    found = lookup_collapse_layer(model_path)
    if found is None:
        name = model_name_from_path(model_path)
        raise ECLNotFoundError(
            f"--prune-layer auto: no Entropy Collapse Layer is known for {model_path!r} (looked up its path and "
            f"the name {name!r} in {registry_path()} and in the built-in entries {', '.join(BUILTIN_LAYERS)}). "
            f"Measure it once (it is stored for later runs) with:\n  {ecl_command(model_path)}\n"
            "or give the layer as a number, e.g. --prune-layer 2 (LAYER=2 in the scripts)."
        )
    layer, source = found
    print(f"entropyprune: --prune-layer auto -> {layer}, from the {source}", file=sys.stderr)
    return dataclasses.replace(cfg, layer=layer)
