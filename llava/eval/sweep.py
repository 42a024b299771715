"""Benchmark sweeps: many runs of scripts/eval/<benchmark>.sh, skipped when finished, side by side on GPUs.

    python -m llava.eval.sweep methods      # scripts/ablation/method_sweep.sh, selection.sh, states.sh
    python -m llava.eval.sweep layers       # scripts/ablation/layer_sweep.sh
    python -m llava.eval.sweep efficiency   # scripts/ablation/efficiency_sweep.sh (paper Table 5)

Every setting comes from the environment, as for the benchmark scripts (the scripts in scripts/ablation/
list them). What all sweeps share:

- Every run is one ``bash scripts/eval/<benchmark>.sh`` with ``METHOD``, ``LAYER``, one budget and
  ``RUN_NAME`` set for it; everything else in the environment (CKPT, MODEL_PATH, EVAL_ROOT, EVAL_ARGS,
  BATCH_SIZE, VARIANT, SEED, ...) passes through. Run names are
  ``$CKPT-$SWEEP-<method>-L<layer>-<budget>[-<states>][-<variant>][-<options>]`` and ``$CKPT-$SWEEP-vanilla``.
- A run is finished when its record ``$RESULTS_DIR/<benchmark>/<run>.json`` exists and is complete: its
  answers file is there, holds as many answers as the record says (= the questions) and is not newer
  than the record. A finished run is skipped; any other is run, and the benchmark script resumes what an
  interrupted run left (its drivers keep every answer already written).
- Settings that cannot work (an unknown method or benchmark, two budget kinds, a bad layer) stop the
  sweep before anything runs, with one ``error:`` line (exit status 1).
- ``CUDA_VISIBLE_DEVICES`` with several GPUs: one run per GPU at a time, each child seeing only its own
  GPU (so the benchmark script does not split it again), its output in ``$LOG_DIR/<benchmark>/<run>.log``.
  With one GPU or none the runs go one after another and their output is shown as well as logged.
- A failed run does not stop the others; the end is a summary, the report over the sweep's records, and
  exit status 1 if any run failed.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Callable

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# The paper's comparison methods that the registry has (arXiv 2602.17196, Sec. 4.1 "Baselines", Table 1),
# then EntropyPrune itself.
TABLE1_METHODS = ("fastv", "pdrop", "sparsevlm", "dart", "divprune", "cdpruner", "prumerge", "entropy")
# Table 1's benchmarks that the paper names for LLaVA-1.5-7B (its caption averages eight; the release's
# LLaVA-1.5 scripts run the first six and MMStar; Sec. 4.2 discusses MM-Vet). docs/Reproduction.md says more.
TABLE1_BENCHMARKS = ("mme", "textvqa", "sqa", "mmbench", "mmbench_cn", "mmvet", "mmstar")
TABLE1_BUDGETS = ("192", "128", "64")
# Table 5: vanilla, FastV, CDPruner and EntropyPrune at 192 and 128 average tokens, on MME.
TABLE5_METHODS = ("fastv", "cdpruner", "entropy")
TABLE5_BUDGETS = ("192", "128")

BUDGET_VARS = {"KEEP": "keep", "AVG_TOKENS": "avg", "RATIO": "ratio"}
# Variables the sweep sets per run; whatever the caller had in them must not reach a run.
PER_RUN_VARS = ("METHOD", "LAYER", "KEEP", "AVG_TOKENS", "RATIO", "STATES", "RUN_NAME", "PRUNE_OPTIONS")
_PLAIN = re.compile(r"^[A-Za-z0-9_+=.,-]+$")


class SweepError(ValueError):
    """Settings that cannot work: reported as one line before anything runs."""


# ------------------------------------------------------------------------------------------------ runs


@dataclasses.dataclass
class Run:
    name: str  # the run name (file names of its answers and record)
    bench: str  # scripts/eval/<bench>.sh; "efficiency" for the timing step of Table 5
    env: dict[str, str]  # variables set for this run
    desc: str  # what it is, for the progress lines
    argv: list[str] | None = None  # default: bash scripts/eval/<bench>.sh
    done: Callable[[], str | None] | None = None  # default: the record check; returns why it is finished

    def command(self) -> list[str]:
        return self.argv or ["bash", os.path.join(REPO_ROOT, "scripts", "eval", f"{self.bench}.sh")]


def record_path(results_dir: str, bench: str, run: str) -> str:
    return os.path.join(results_dir, bench, f"{run}.json")


def finished(results_dir: str, bench: str, run: str) -> str | None:
    """Why the run is finished (its record path), or None when it must run (again)."""
    path = record_path(results_dir, bench, run)
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("run_name") != run or record.get("benchmark") != bench:
        return None
    answers, count = record.get("answers_file"), record.get("answers")
    if not isinstance(answers, str) or not isinstance(count, int) or count != record.get("questions"):
        return None
    try:
        with open(answers, "rb") as f:
            lines = sum(1 for line in f if line.strip())
        newer = os.path.getmtime(answers) > os.path.getmtime(path)
    except OSError:
        return None
    if lines != count or newer:
        return None
    return path


def _tag_option(option: str) -> str:
    """The run-name tag of one NAME=VALUE option, as scripts/eval/_common.sh makes it."""
    return "-" + option.replace("=", "", 1).replace(",", ".").replace("/", "_")


def run_name(ckpt: str, sweep: str, method: str, layer: str, budget_tag: str, states: str | None,
             variant: str | None, options: list[str]) -> str:
    name = f"{ckpt}-{sweep}-{method}-L{layer}-{budget_tag}"
    if states and states != "query":
        name += f"-{states}"
    if variant and variant != "official":
        name += f"-{variant}"
    return name + "".join(_tag_option(o) for o in options)


# -------------------------------------------------------------------------------------------- settings


def _words(env: dict[str, str], name: str, default: tuple[str, ...] = ()) -> list[str]:
    value = env.get(name)
    words = value.split() if value is not None and value.strip() else list(default)
    seen: list[str] = []
    for w in words:
        if w not in seen:
            seen.append(w)
    return seen


def benchmark_names() -> list[str]:
    from llava.eval.record import BENCHMARKS

    return [b for b in BENCHMARKS if os.path.isfile(os.path.join(REPO_ROOT, "scripts", "eval", f"{b}.sh"))]


def check_benchmarks(benches: list[str], var: str) -> None:
    known = benchmark_names()
    unknown = [b for b in benches if b not in known]
    if unknown:
        raise SweepError(f"{var}: no benchmark script for {', '.join(unknown)}; choose from {' '.join(known)}")
    if not benches:
        raise SweepError(f"{var} is empty; choose from {' '.join(known)}")


def budgets(env: dict[str, str], default: tuple[str, str], many: bool) -> tuple[str, list[str]]:
    """(variable, values) of the one budget kind given, or the default."""
    given = [(var, env[var].split()) for var in BUDGET_VARS if env.get(var, "").strip()]
    if len(given) > 1:
        raise SweepError(f"give one budget kind for the sweep, got {' and '.join(v for v, _ in given)}: "
                         "KEEP, AVG_TOKENS and RATIO are exclusive")
    var, values = given[0] if given else (default[0], default[1].split())
    if not many and len(values) > 1:
        raise SweepError(f"{var}='{' '.join(values)}': this sweep takes one budget (one value)")
    for v in values:
        try:
            number = float(v)
        except ValueError:
            number = -1.0
        if not number > 0 or (var == "KEEP" and not v.isdigit()) or (var == "RATIO" and number > 1):
            raise SweepError(f"{var}: {v!r} is not a valid budget (KEEP: a whole number of tokens, AVG_TOKENS: a "
                             "positive number, RATIO: a fraction in (0, 1])")
    return var, list(dict.fromkeys(values))


@dataclasses.dataclass
class MethodInfo:
    stages: tuple[str, ...]
    adaptive: bool  # picks its own count by default: a budget sweep turns that off (adaptive=false)
    options: list[str]  # NAME=VALUE options for its runs


def methods_info(methods: list[str], var: str, option_text: str) -> dict[str, MethodInfo]:
    """The registry's word on each method, with its PRUNE_OPTIONS (NAME=VALUE for all, METHOD:NAME=VALUE
    for one), checked against its options class."""
    from entropyprune.methods import METHODS
    from entropyprune.options import build_options, parse_option_args

    if not methods:
        raise SweepError(f"{var} is empty; choose from {' '.join(sorted(METHODS))}")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise SweepError(f"{var}: {', '.join(unknown)} is not a registered pruning method; choose from "
                         f"{' '.join(sorted(METHODS))}")
    shared: list[str] = []
    own: dict[str, list[str]] = {}
    for item in option_text.split():
        head, colon, rest = item.partition(":")
        if colon and "=" not in head:
            if head not in methods:
                raise SweepError(f"PRUNE_OPTIONS: '{item}' names {head!r}, which is not in {var}")
            own.setdefault(head, []).append(rest)
        else:
            shared.append(item)
    info = {}
    for m in methods:
        spec = METHODS[m]
        options = shared + own.get(m, [])
        try:
            values = parse_option_args(options)
            opts = build_options(m, spec.options, values)
        except ValueError as err:
            raise SweepError(f"PRUNE_OPTIONS for {m}: {err}") from None
        adaptive = spec.adaptive is not None and bool(spec.adaptive(opts))
        info[m] = MethodInfo(spec.stages, adaptive, options)
    return info


def _check_name(value: str, var: str) -> None:
    if not _PLAIN.match(value) or value.startswith("."):
        raise SweepError(f"{var}='{value}' is not a plain file name (letters, digits and _ + = . , - only)")


@dataclasses.dataclass
class Common:
    ckpt: str
    sweep: str
    results_dir: str
    log_dir: str
    gpus: list[str]


def common(env: dict[str, str], default_sweep: str) -> Common:
    ckpt = env.get("CKPT") or "llava-v1.5-7b"
    sweep = env.get("SWEEP") or default_sweep
    _check_name(ckpt, "CKPT")
    _check_name(sweep, "SWEEP")
    results = env.get("RESULTS_DIR") or "./results"
    log_dir = env.get("LOG_DIR") or os.path.join(results, "logs", f"{ckpt}-{sweep}")
    gpus = [g.strip() for g in (env.get("CUDA_VISIBLE_DEVICES") or "").split(",") if g.strip()]
    return Common(ckpt, sweep, results, log_dir, gpus)


def _vanilla(c: Common, bench: str) -> Run:
    name = f"{c.ckpt}-{c.sweep}-vanilla"
    return Run(name, bench, {"RUN_NAME": name}, "unpruned")


def _pruned(c: Common, bench: str, method: str, info: MethodInfo, layer: str, budget_var: str, value: str,
            states: str | None, variant: str | None) -> Run:
    options = list(info.options)
    if info.adaptive:  # a budget sweep gives every method the budget: the adaptive count is turned off
        options.append("adaptive=false")
    tag = f"{BUDGET_VARS[budget_var]}{value}"
    name = run_name(c.ckpt, c.sweep, method, layer, tag, states, variant, options)
    env = {"METHOD": method, "LAYER": layer, budget_var: value, "RUN_NAME": name}
    if states:
        env["STATES"] = states
    if options:
        env["PRUNE_OPTIONS"] = " ".join(options)
    desc = f"{method} at layer {layer}, {budget_var}={value}" + (f", {states} states" if states else "")
    return Run(name, bench, env, desc)


def _check_layer(layer: str, var: str) -> None:
    if layer != "auto" and not layer.isdigit():
        raise SweepError(f"{var}: {layer!r} is not a layer (a number K >= 0, or auto)")


def plan_methods(env: dict[str, str]) -> tuple[Common, list[Run], list[str], list[str]]:
    """method_sweep.sh: METHODS x budgets x BENCHMARKS (x STATES), plus one unpruned run per benchmark."""
    c = common(env, "methods")
    benches = _words(env, "BENCHMARKS", TABLE1_BENCHMARKS)
    check_benchmarks(benches, "BENCHMARKS")
    budget_var, values = budgets(env, ("AVG_TOKENS", " ".join(TABLE1_BUDGETS)), many=True)
    states_list = _words(env, "STATES") or [None]
    for s in states_list:
        if s not in (None, "query", "key"):
            raise SweepError(f"STATES: {s!r} is not query or key")
    layer = env.get("LAYER", "").strip() or None
    if layer is not None:
        _check_layer(layer, "LAYER")
    methods = _words(env, "METHODS", TABLE1_METHODS)
    info = methods_info(methods, "METHODS", env.get("PRUNE_OPTIONS", ""))
    variant = env.get("VARIANT") or None
    notes = []
    runs = []
    for bench in benches:
        if env.get("BASELINE", "1") == "1":
            runs.append(_vanilla(c, bench))
        for value in values:
            for method in methods:
                at = "0" if info[method].stages[0] == "vision" else "2"
                if layer is not None:
                    if layer != "0" and "llm" not in info[method].stages:
                        note = (f"note: {method} prunes before the language model only (layer 0); its runs use "
                                f"layer 0, not LAYER={layer}")
                        if note not in notes:
                            notes.append(note)
                    elif layer == "0" and "vision" not in info[method].stages:
                        raise SweepError(f"LAYER=0: {method} prunes inside the language model (layer >= 1)")
                    else:
                        at = layer
                for states in states_list:
                    runs.append(_pruned(c, bench, method, info[method], at, budget_var, value, states, variant))
    return c, runs, benches, notes


def plan_layers(env: dict[str, str]) -> tuple[Common, list[Run], list[str], list[str]]:
    """layer_sweep.sh: METHODS x LAYERS at one budget on BENCH (one benchmark or several)."""
    c = common(env, "layersweep")
    benches = _words(env, "BENCH", ("mme",))
    check_benchmarks(benches, "BENCH")
    budget_var, values = budgets(env, ("AVG_TOKENS", "192"), many=False)
    layers = _words(env, "LAYERS", ("1", "2", "3", "5", "7"))
    for layer in layers:
        _check_layer(layer, "LAYERS")
    methods = _words(env, "METHODS", ("entropy",))
    info = methods_info(methods, "METHODS", env.get("PRUNE_OPTIONS", ""))
    for m in methods:
        if "llm" not in info[m].stages:
            raise SweepError(f"METHODS: {m} prunes before the language model only (layer 0); a layer sweep cannot "
                             "move it")
    if "0" in layers:
        raise SweepError("LAYERS: 0 is before the language model; the layers of a layer sweep are K >= 1")
    states = env.get("STATES") or None
    variant = env.get("VARIANT") or None
    runs = []
    for bench in benches:
        if env.get("BASELINE", "0") == "1":
            runs.append(_vanilla(c, bench))
        for method in methods:
            for layer in layers:
                runs.append(_pruned(c, bench, method, info[method], layer, budget_var, values[0], states, variant))
    return c, runs, benches, []


def default_model_path(env: dict[str, str], ckpt: str) -> str:
    """What scripts/eval/_common.sh loads: MODEL_PATH, else ./checkpoints/$CKPT if it exists, else the hub id."""
    if env.get("MODEL_PATH"):
        return env["MODEL_PATH"]
    local = os.path.join("checkpoints", ckpt)
    return f"./{local}" if os.path.isdir(os.path.join(REPO_ROOT, local)) else f"liuhaotian/{ckpt}"


def efficiency_done(path: str, labels: list[str], arch: str) -> Callable[[], str | None]:
    def check() -> str | None:
        try:
            with open(path, encoding="utf-8") as f:
                rows = json.load(f)
        except (OSError, ValueError):
            return None
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            return None
        have = {r.get("label") for r in rows if r.get("arch") == arch}
        return path if set(labels) <= have else None

    return check


def plan_efficiency(env: dict[str, str]) -> tuple[Common, list[Run], list[str], list[str], str]:
    """efficiency_sweep.sh (Table 5): the timing rows (scripts/eval/efficiency.sh) and MME runs of the same
    methods and budgets; returns the efficiency JSON path too."""
    c = common(env, "table5")
    given = [v for v in ("KEEP", "RATIO") if env.get(v, "").strip()]
    if given:
        raise SweepError(f"{given[0]}: Table 5's rows are average-token budgets; use AVG_TOKENS (e.g. '192 128')")
    budget_var, values = budgets(env, ("AVG_TOKENS", " ".join(TABLE5_BUDGETS)), many=True)
    layer = env.get("LAYER", "").strip() or "2"
    if not layer.isdigit() or layer == "0":
        raise SweepError(f"LAYER: {layer!r}: Table 5's in-model methods prune at a layer K >= 1")
    methods = _words(env, "METHODS", TABLE5_METHODS)
    info = methods_info(methods, "METHODS", env.get("PRUNE_OPTIONS", ""))
    variant = env.get("VARIANT") or None
    states = env.get("STATES") or None
    if states not in (None, "query", "key"):
        raise SweepError(f"STATES: {states!r} is not query or key")
    runs = [_vanilla(c, "mme")]
    for value in values:
        for m in methods:
            at = "0" if info[m].stages[0] == "vision" else layer
            runs.append(_pruned(c, "mme", m, info[m], at, budget_var, value, states, variant))
    # The timing rows: efficiency.sh with the same checkpoint, methods, budgets and options.
    out = env.get("EFFICIENCY_JSON") or os.path.join(c.results_dir, "efficiency", f"{c.ckpt}-{c.sweep}.json")
    model_path = default_model_path(env, c.ckpt)
    extra = shlex.split(env.get("EFFICIENCY_ARGS", ""))
    extra += ["--layer", layer]
    if variant:
        extra += ["--entropy-variant", variant]
    if states:
        extra += ["--prune-states", states]
    for m in methods:
        options = info[m].options + (["adaptive=false"] if info[m].adaptive else [])
        for o in options:
            extra += ["--method-option", f"{m}:{o}"]
    labels = ["vanilla"] + [f"{m}@{float(v):g}" for v in values for m in methods]
    eff_env = {"METHODS": ",".join(methods), "BUDGETS": ",".join(values), "OUT": out, "MODEL_PATH": model_path}
    argv = ["bash", os.path.join(REPO_ROOT, "scripts", "eval", "efficiency.sh"), *extra]
    arch = os.path.basename(os.path.normpath(model_path))
    timing = Run(f"{c.ckpt}-{c.sweep}-efficiency", "efficiency", eff_env, "prefill, latency, KV, memory and FLOPs "
                 f"of {', '.join(labels)}", argv=argv, done=efficiency_done(out, labels, arch))
    return c, [timing, *runs], ["mme"], [], out


# ------------------------------------------------------------------------------------------- execution


def child_env(run: Run, gpu: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PER_RUN_VARS}
    if run.bench == "efficiency":
        env.pop("METHODS", None)
        env.pop("BUDGETS", None)
    elif "METHOD" not in run.env:  # unpruned: nothing that belongs to a pruned run may reach the script
        for var in ("VARIANT", "SEED"):
            env.pop(var, None)
    env.update(run.env)
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    return env


def _log_path(log_dir: str, run: Run) -> str:
    return os.path.join(log_dir, run.bench, f"{run.name}.log")


def _tail(path: str, n: int = 15) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def _say(text: str) -> None:
    print(text, flush=True)


def execute(runs: list[Run], c: Common, serial_first: int = 0) -> tuple[list[Run], list[Run], list[Run]]:
    """Run what is not finished; returns (run now, skipped as finished, failed).

    ``serial_first``: that many runs at the head of the list go first and alone (Table 5's timing, which
    other work on the machine would disturb)."""
    todo, skipped = [], []
    for run in runs:
        why = (run.done or (lambda r=run: finished(c.results_dir, r.bench, r.name)))()
        if why:
            _say(f"skip: {run.name} ({run.bench}) is finished: {why}")
            skipped.append(run)
        else:
            todo.append(run)
    head = [r for r in todo if runs.index(r) < serial_first]
    rest = [r for r in todo if runs.index(r) >= serial_first]
    total = len(todo)
    _say(f"==== {total} of {len(runs)} runs to do ({len(skipped)} finished)"
         + (f", one per GPU on {','.join(c.gpus)}" if len(c.gpus) > 1 and rest else "") + " ====")
    done: list[Run] = []
    failed: list[Run] = []
    counter = [0]

    def begin(run: Run) -> str:
        counter[0] += 1
        log = _log_path(c.log_dir, run)
        os.makedirs(os.path.dirname(log), exist_ok=True)
        return log

    def serial(run: Run) -> None:
        log = begin(run)
        gpu = c.gpus[0] if c.gpus else None
        _say(f"==== [{counter[0]}/{total}] {run.bench}: {run.desc} ({run.name}); log: {log} ====")
        start = time.time()
        with open(log, "w", encoding="utf-8") as fh:
            proc = subprocess.Popen(run.command(), cwd=REPO_ROOT, env=child_env(run, gpu), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, errors="replace")
            assert proc.stdout is not None
            for line in proc.stdout:
                sys.stdout.write(line)
                fh.write(line)
            rc = proc.wait()
        sys.stdout.flush()
        (done if rc == 0 else failed).append(run)
        _say(f"---- {run.name}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {time.time() - start:.1f} s")

    for run in head:
        serial(run)
    if len(c.gpus) <= 1:
        for run in rest:
            serial(run)
        return done, skipped, failed

    free = list(c.gpus)
    running: list[tuple[subprocess.Popen, Run, str, str, float, object]] = []
    queue = list(rest)
    try:
        while queue or running:
            while queue and free:
                run, gpu = queue.pop(0), free.pop(0)
                log = begin(run)
                fh = open(log, "w", encoding="utf-8")  # noqa: SIM115 (closed when the run ends)
                proc = subprocess.Popen(run.command(), cwd=REPO_ROOT, env=child_env(run, gpu), stdout=fh,
                                        stderr=subprocess.STDOUT)
                running.append((proc, run, gpu, log, time.time(), fh))
                _say(f"==== [{counter[0]}/{total}] GPU {gpu}: {run.bench}: {run.desc} ({run.name}); log: {log}")
            time.sleep(0.2)
            for item in list(running):
                proc, run, gpu, log, start, fh = item
                rc = proc.poll()
                if rc is None:
                    continue
                fh.close()  # type: ignore[attr-defined]
                running.remove(item)
                free.append(gpu)
                if rc == 0:
                    done.append(run)
                    _say(f"---- {run.name} (GPU {gpu}): done in {time.time() - start:.1f} s")
                else:
                    failed.append(run)
                    _say(f"---- {run.name} (GPU {gpu}): FAILED (exit {rc}) after {time.time() - start:.1f} s; "
                         f"the end of {log}:\n{_tail(log)}")
    except KeyboardInterrupt:
        for proc, *_ in running:
            proc.terminate()
        for proc, *_ in running:
            proc.wait()
        raise
    return done, skipped, failed


def report(module: str, argv: list[str]) -> int:
    """``python -m MODULE ARGV``, run in this process (the modules it needs are loaded already)."""
    import importlib

    from llava.utils import call_cli

    _say(f"==== report: python -m {module} {shlex.join(argv)} ====")
    main = importlib.import_module(module).main
    try:
        return call_cli(main, argv)
    except SystemExit as stop:  # argparse's exit on a bad flag
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.stdout.flush()


def summary(done: list[Run], skipped: list[Run], failed: list[Run], report_rc: int, where: str) -> int:
    total = len(done) + len(skipped) + len(failed)
    _say(f"==== summary: {total} runs: {len(done)} run now, {len(skipped)} already finished, {len(failed)} failed ====")
    if failed:
        print(f"failed runs ({len(failed)} of {total}): {' '.join(r.name for r in failed)}; see their logs "
              "(rerunning the sweep redoes only what is not finished)", file=sys.stderr)
    if report_rc != 0:
        print(f"error: the report failed (exit {report_rc})", file=sys.stderr)
    if failed or report_rc != 0:
        return 1
    _say(f"done: {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    kinds = ("methods", "layers", "efficiency")
    if len(args) != 1 or args[0] not in kinds:
        print(f"usage: python -m llava.eval.sweep {{{','.join(kinds)}}} (settings from the environment; see "
              "scripts/ablation/)", file=sys.stderr)
        return 2
    env = dict(os.environ)
    try:
        if args[0] == "efficiency":
            c, runs, benches, notes, eff_json = plan_efficiency(env)
        else:
            plan = plan_methods if args[0] == "methods" else plan_layers
            c, runs, benches, notes = plan(env)
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for note in notes:
        _say(note)
    os.makedirs(c.results_dir, exist_ok=True)
    done, skipped, failed = execute(runs, c, serial_first=1 if args[0] == "efficiency" else 0)

    extra = shlex.split(env.get("REPORT_ARGS", ""))
    match = f"{c.ckpt}-{c.sweep}-*"
    if args[0] == "efficiency":
        out = env.get("REPORT_DIR") or os.path.join(c.results_dir, "ablation", f"{c.ckpt}-{c.sweep}")
        cmd = ["--efficiency", eff_json, "--results-dir", c.results_dir, "--match", match, "--out", out,
               "--states", env.get("STATES") or "query", "--variant", env.get("VARIANT") or "official", *extra]
        rc = report("llava.bench.table5_report", cmd)
    else:
        default = f"{c.ckpt}-{c.sweep}" + (f"-{'-'.join(benches)}" if args[0] == "layers" else "")
        out = env.get("REPORT_DIR") or os.path.join(c.results_dir, "ablation", default)
        cmd = ["report", c.results_dir, "--match", match]
        for b in benches:
            cmd += ["--benchmark", b]
        cmd += ["--out", out, *extra]
        rc = report("llava.cli", cmd)
    where = f"records in {c.results_dir}/<benchmark>/, logs in {c.log_dir}, report in {out}"
    return summary(done, skipped, failed, rc, where)


if __name__ == "__main__":
    sys.exit(main())
