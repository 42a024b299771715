"""Write the run record of one benchmark run: `results/<benchmark>/<run-name>.json`.

    python -m llava.eval.record --benchmark mme --run-name llava-v1.5-7b-entropy-L2-avg192 \
        --answers playground/data/eval/MME/answers/llava-v1.5-7b-entropy-L2-avg192.jsonl \
        --scores-json playground/data/eval/MME/answers/llava-v1.5-7b-entropy-L2-avg192_scores.json \
        --wall-time 812.4 [--results-dir results] [--submission FILE]

The model and pruning fields come from the answers' sidecar (`<answers>.meta.json`, written by the
drivers), the scores from the scorer's JSON summary (never from its printed lines). Fields:

  run_name, benchmark, model (checkpoint name), model_path
  method (null without pruning), layer, keep (N visual tokens kept per image after layer K),
  avg_tokens (its average-token equivalent over all L layers), ratio, states, variant, budget (as asked:
  {"keep"|"avg_tokens"|"ratio": value}), prune (the whole PruneConfig or null), num_layers, visual_tokens
  (V per image); on LLaVA-1.6, where V is each image's own, keep / avg_tokens / visual_tokens are the means
  over the images and per_image gives {"visual_tokens"|"kept_tokens"|"avg_tokens": {min, median, max,
  mean}, "images", "capped_images"} from the answers' metadata (the prune trace of each prefill);
  capped_images counts the images whose V was below the budget, which kept all their tokens
  scores (flat: name -> number), score_name / score (the headline number), score_note
  answers, questions, truncated_prompts (prompts cut at the context length), answers_file, scores_file,
  submission
  generation (conv_mode, temperature, top_p, num_beams, max_new_tokens), device, dtype
  wall_time_s, version, git_commit, git_dirty, created
  scorer ({"module": the scorer's module, "sha256": a hash of its source and the llava.eval modules it
  imports}, so that records scored by different scoring code can be told apart)

Prints the scores as a table and the record's path.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import statistics
import subprocess
import sys
from datetime import datetime, timezone

from llava.eval import EvalInputError, load_json, read_jsonl, run_cli, write_json

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# benchmark -> (headline score name, note when the scorer summary has no such score)
BENCHMARKS = {
    "mme": ("perception", None),
    "textvqa": ("accuracy", None),
    "sqa": ("img_accuracy", None),
    "mmbench": ("circular_eval", "no answer column in the TSV: submit the xlsx to the OpenCompass server"),
    "mmbench_cn": ("circular_eval", "no answer column in the TSV: submit the xlsx to the OpenCompass server"),
    "mmvet": ("total", "MM-Vet is graded by GPT-4: submit the results JSON to the official evaluator, or rerun "
                       "with MMVET_GRADE=1 and MMVET_API_KEY set"),
    "gqa": ("overall", None),
    "pope": ("overall", None),
    "mmstar": ("overall", None),
    "ai2d": ("overall", None),
    "ocrbench": ("overall", None),
    "mmmu": ("overall", None),
}

# Scorer summaries with an "overall" headline: (top-level numbers, {group field: name prefix}); a group
# field maps a name to {"accuracy"|"score"|..., ...} or to a number, flattened to "<prefix><name>".
_OVERALL = {
    "gqa": (("overall", "binary", "open", "distribution", "questions", "missing"),
            {"per_structural_type": "structural_", "per_semantic_type": "semantic_"}),
    "mmstar": (("overall", "questions", "unmatched", "missing"),
               {"per_split": "split_", "per_category": "", "per_l2_category": ""}),
    "ai2d": (("overall", "questions", "unmatched", "missing"),
             {"per_split": "split_", "per_category": "", "per_l2_category": ""}),
    "ocrbench": (("overall", "final_score_norm", "questions", "missing"), {"groups": "", "categories": ""}),
    "mmmu": (("overall", "dev_val", "questions", "unmatched", "missing"),
             {"per_split": "split_", "per_discipline": "", "per_subject": ""}),
}
_GROUP_VALUE = ("accuracy", "score", "f1")

# benchmark -> the llava.eval module that scores it
SCORERS = {"mme": "eval_mme", "textvqa": "eval_textvqa", "sqa": "eval_science_qa", "mmbench": "eval_mmbench",
           "mmbench_cn": "eval_mmbench", "mmvet": "eval_mmvet", "gqa": "eval_gqa", "pope": "eval_pope",
           "mmstar": "eval_mmstar", "ai2d": "eval_ai2d", "ocrbench": "eval_ocrbench", "mmmu": "eval_mmmu"}
_EVAL_DIR = os.path.dirname(os.path.abspath(__file__))
_IMPORT = re.compile(r"^\s*from\s+llava\.eval(?:\.(\w+))?\s+import\s+(\([^)]*\)|[^\n]+)", re.MULTILINE)


def scorer_identity(benchmark: str, eval_dir: str = _EVAL_DIR) -> dict | None:
    """``{"module", "sha256"}`` of the benchmark's scorer: a hash over its source file and every llava.eval
    module it imports, directly or not (16 hex digits). Two records with the same hash were scored by
    the same code, whatever commit they were written at."""
    name = SCORERS.get(benchmark)
    if name is None:
        return None
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        path = os.path.join(eval_dir, f"{mod}.py")
        if mod in seen or not os.path.isfile(path):
            continue
        seen.add(mod)
        with open(path, encoding="utf-8") as f:
            text = f.read()
        for sub, names in _IMPORT.findall(text):
            if sub:
                todo.append(sub)
            else:  # `from llava.eval import a, b`: the package itself, and any of a, b that is a module
                todo.append("__init__")
                todo += re.findall(r"\w+", names)
    digest = hashlib.sha256()
    for mod in sorted(seen):
        with open(os.path.join(eval_dir, f"{mod}.py"), "rb") as f:
            digest.update(mod.encode() + b"\0" + f.read() + b"\0")
    return {"module": f"llava.eval.{name}", "sha256": digest.hexdigest()[:16]}


def package_version() -> str:
    """The installed package's version, or pyproject.toml's when running from a checkout."""
    # entropyprune.__version__ when the package is already imported (importing it here would pull in torch).
    module = sys.modules.get("entropyprune")
    if getattr(module, "__version__", None):
        return str(module.__version__)
    try:
        from importlib.metadata import PackageNotFoundError, version

        return version("entropyprune")
    except PackageNotFoundError:
        pass
    pyproject = os.path.join(REPO_ROOT, "pyproject.toml")
    if os.path.isfile(pyproject):
        with open(pyproject, encoding="utf-8") as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.MULTILINE)
        if m:
            return m.group(1)
    return "unknown"


def git_state(root: str = REPO_ROOT) -> tuple[str | None, bool | None]:
    """(commit, whether tracked files differ from it), or (None, None) outside a git checkout."""
    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", "-C", root, *args], capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return None, None
    # --no-optional-locks: a status killed at the timeout must not leave index.lock behind
    status = git("--no-optional-locks", "status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


def _numbers(summary: dict, keys: tuple[str, ...]) -> dict:
    return {k: summary[k] for k in keys if isinstance(summary.get(k), (int, float)) and not isinstance(
        summary.get(k), bool)}


def extract_scores(benchmark: str, summary: dict | None) -> dict:
    """The scorer summary's numbers, flat (name -> number), as the report tool reads them."""
    if not summary:
        return {}
    if benchmark == "mme":
        scores = _numbers(summary, ("perception", "cognition", "total"))
        for name, sub in (summary.get("subtasks") or {}).items():
            if isinstance(sub, dict) and isinstance(sub.get("score"), (int, float)):
                scores[name] = sub["score"]
        return scores
    if benchmark == "textvqa":
        return _numbers(summary, ("accuracy", "samples"))
    if benchmark == "sqa":
        return _numbers(summary, ("img_accuracy", "accuracy", "img_total", "total", "failed"))
    if benchmark in ("mmbench", "mmbench_cn"):
        return _numbers(summary, ("circular_eval", "single_eval", "groups", "questions", "unparsed", "missing"))
    if benchmark == "mmvet":
        scores = _numbers(summary, ("total",))
        for name, value in (summary.get("capabilities") or {}).items():
            if isinstance(value, (int, float)):
                scores[name] = value
        return scores
    if benchmark == "pope":
        scores = _numbers(summary, ("overall", "accuracy"))
        for split, metrics in (summary.get("splits") or {}).items():
            for name, value in _numbers(metrics or {}, ("f1", "accuracy", "precision", "recall",
                                                        "yes_ratio")).items():
                scores[f"{split}_{name}"] = value
        return scores
    if benchmark in _OVERALL:
        top, groups = _OVERALL[benchmark]
        scores = _numbers(summary, top)
        for field, prefix in groups.items():
            for name, value in (summary.get(field) or {}).items():
                if isinstance(value, dict):
                    value = next((value[k] for k in _GROUP_VALUE if k in value), None)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    scores.setdefault(f"{prefix}{name}", value)
        return scores
    raise EvalInputError(f"unknown --benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")


def check_answers(answers: str, rows: list[tuple[int, dict]], meta: dict) -> None:
    """The answers themselves, not only the sidecar's word: each question answered once, as many answers as
    the sidecar says questions, all by the sidecar's model. A file two runs appended to fails here even if
    its sidecar says complete."""
    import importlib

    driver = (meta.get("settings") or {}).get("benchmark")
    try:
        key_of = importlib.import_module(f"llava.eval.{driver}").BENCHMARK.answer_key
    except (ImportError, AttributeError, TypeError):
        raise EvalInputError(f"{answers}.meta.json names no known driver (settings.benchmark = {driver!r}); "
                             "rerun the benchmark script.") from None
    first: dict = {}
    for lineno, row in rows:
        try:
            key = key_of(row)
        except KeyError as err:
            raise EvalInputError(f"{answers}:{lineno}: an answer line without {err}; rerun the benchmark.") from None
        if key in first:
            raise EvalInputError(
                f"{answers}:{lineno}: a second answer to question {key[0]} (the first is on line {first[key]}); "
                "the drivers write each answer once, so two runs wrote this file. Rerun into a fresh answers file.")
        first[key] = lineno
    if len(rows) != meta.get("questions"):
        raise EvalInputError(f"{answers} holds {len(rows)} answers but its sidecar says {meta.get('questions')} "
                             "questions; rerun the benchmark to finish or repair it.")
    model = meta.get("model_name")
    others = sorted({str(row.get("model_id")) for _, row in rows} - {model})
    if others:
        raise EvalInputError(f"{answers}: answers by model_id {', '.join(others)}, but its sidecar says {model!r}; "
                             "the file mixes runs. Rerun into a fresh answers file.")


def _stats(values: list) -> dict:
    ordered = sorted(values)
    return {"min": ordered[0], "median": statistics.median(ordered), "max": ordered[-1],
            "mean": sum(ordered) / len(ordered)}


def per_image_summary(metadata: list[dict]) -> dict | None:
    """min / median / max / mean over every image of the answers of its V, its kept N and its
    average-token equivalent (each with the image's own V), or None when no answer records them."""
    columns: dict[str, list] = {"visual_tokens": [], "kept_tokens": [], "avg_tokens": []}
    for m in metadata:
        if m.get("visual_tokens") is None:
            continue
        for key, values in columns.items():
            values += m.get(key) or ()
    if not columns["visual_tokens"]:
        return None
    return {**{key: _stats(values) for key, values in columns.items()}, "images": len(columns["visual_tokens"]),
            "capped_images": sum(m.get("capped_images", 0) for m in metadata)}


def build_record(benchmark: str, run_name: str, answers: str, scores_json: str | None, wall_time: float | None,
                 submission: str | None = None) -> dict:
    if benchmark not in BENCHMARKS:
        raise EvalInputError(f"unknown --benchmark {benchmark!r}; choose one of {', '.join(BENCHMARKS)}")
    answer_rows = read_jsonl(answers, "answers file", required=("question_id", "text"))
    n_answers = len(answer_rows)
    meta_file = answers + ".meta.json"
    meta = load_json(meta_file, "answers sidecar", "It is written by the llava.eval.model_vqa* drivers (and "
                     "`python -m llava.eval.driver merge`); rerun the benchmark script.")
    if not meta.get("complete", False):
        raise EvalInputError(f"{meta_file} says the answers are incomplete ({meta.get('answers')} of "
                             f"{meta.get('questions')}); finish the run before recording it.")
    check_answers(answers, answer_rows, meta)
    summary = load_json(scores_json, "scorer summary") if scores_json else None
    scores = extract_scores(benchmark, summary)
    settings = meta.get("settings", {})
    prune = settings.get("prune")
    budget = None
    if prune:
        budget = {k: prune[k] for k in ("keep", "avg_tokens", "ratio") if prune.get(k) is not None}
    headline, note = BENCHMARKS[benchmark]
    commit, dirty = git_state()
    kept, avg = meta.get("kept_tokens"), meta.get("avg_tokens_equivalent")
    chosen = None
    if meta.get("adaptive"):  # each image's count was the method's choice: its answers say what it kept
        counts = [n for _, row in answer_rows for n in ((row.get("metadata") or {}).get("kept_tokens") or ())]
        if counts:
            kept = avg = sum(counts) / len(counts)  # at the vision stage every layer sees what was kept
            chosen = {"mean": kept, "min": min(counts), "max": max(counts), "images": len(counts)}
    visual = meta.get("num_visual_tokens")
    per_image = None
    if meta.get("per_image"):  # LLaVA-1.6: each answer's metadata says what its images had and kept
        per_image = per_image_summary([(row.get("metadata") or {}) for _, row in answer_rows])
        if per_image:
            visual, kept, avg = (per_image[k]["mean"] for k in ("visual_tokens", "kept_tokens", "avg_tokens"))
    return {
        "run_name": run_name,
        "benchmark": benchmark,
        "model": meta.get("model_name"),
        "model_path": settings.get("model_path"),
        "method": meta.get("method"),
        "layer": meta.get("layer"),
        "keep": kept,
        "avg_tokens": avg,
        "kept_per_image": chosen,
        "ratio": prune.get("ratio") if prune else None,
        "states": prune.get("states") if prune else None,
        "variant": prune.get("variant") if prune else None,
        "budget": budget,
        "prune": prune,
        "num_layers": meta.get("num_layers"),
        "visual_tokens": visual,
        "per_image": per_image,
        "scores": scores,
        "score_name": headline,
        "score": scores.get(headline),
        "score_note": None if headline in scores else note,
        "answers": n_answers,
        # prompts cut at the model's context, as LLaVA cuts them (each such answer's metadata says so)
        "truncated_prompts": sum(1 for _, row in answer_rows if (row.get("metadata") or {}).get("truncated")),
        "questions": meta.get("questions"),
        "answers_file": os.path.abspath(answers),
        "scores_file": os.path.abspath(scores_json) if scores_json else None,
        "submission": os.path.abspath(submission) if submission else (summary or {}).get("submission"),
        "generation": {k: settings.get(k) for k in ("conv_mode", "temperature", "top_p", "num_beams",
                                                    "max_new_tokens")},
        "options": settings.get("options"),
        "device": meta.get("device"),
        "dtype": meta.get("torch_dtype"),
        "batch_size": meta.get("batch_size"),
        "bucket_window": meta.get("bucket_window"),
        "wall_time_s": wall_time,
        "version": package_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "scorer": scorer_identity(benchmark),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def format_table(record: dict) -> str:
    scores = record["scores"]
    if record["benchmark"] == "mme":
        # The scorer has just printed the 14 subtasks; the record's summary keeps to the sums.
        scores = {k: v for k, v in scores.items() if k in ("perception", "cognition", "total")}
    elif record["benchmark"] in _OVERALL:
        # The per-category numbers are in the record and the scorer summary; the table keeps the totals.
        scores = {k: v for k, v in scores.items() if k in _OVERALL[record["benchmark"]][0]}
    rows = [(name, f"{value:.2f}" if isinstance(value, float) else str(value)) for name, value in scores.items()]
    width = max([len(n) for n, _ in rows] + [len("score")])
    lines = [f"{record['benchmark']} | {record['run_name']}"]
    prune = f"{record['method']} at layer {record['layer']}" if record["method"] else "none"
    per = record.get("per_image")
    if per:
        v, n, a = (per[k] for k in ("visual_tokens", "kept_tokens", "avg_tokens"))
        lines.append(f"pruning: {prune}; visual tokens per image (mean, min-max over {per['images']} images): kept "
                     f"{n['mean']:.4g} ({n['min']}-{n['max']}) of {v['mean']:.4g} ({v['min']}-{v['max']}); "
                     f"average over layers {a['mean']:.4g}")
        if per.get("capped_images"):
            lines.append(f"{per['capped_images']} image(s) had fewer visual tokens than the budget and kept them all")
    else:
        lines.append(f"pruning: {prune}; visual tokens kept per image: {record['keep']} of {record['visual_tokens']} "
                     f"(average over layers: {record['avg_tokens']:.4g})" if record["keep"] is not None else "")
    lines.append(f"{'score':<{width}}  value")
    lines += [f"{name:<{width}}  {value}" for name, value in rows]
    if record["score_note"]:
        lines.append(f"note: {record['score_note']}")
    return "\n".join(line for line in lines if line)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--benchmark", required=True, choices=sorted(BENCHMARKS))
    ap.add_argument("--run-name", required=True)
    ap.add_argument("--answers", required=True, help="the (merged) answers jsonl, with its .meta.json sidecar")
    ap.add_argument("--scores-json", default=None, help="the scorer's JSON summary (omit when there is none)")
    ap.add_argument("--wall-time", type=float, default=None, help="seconds taken by inference and scoring")
    ap.add_argument("--submission", default=None, help="file to submit for official scores (MM-Vet, MMBench)")
    ap.add_argument("--results-dir", default="results")
    ap.add_argument("--output", default=None, help="record path (default: <results-dir>/<benchmark>/<run>.json)")
    args = ap.parse_args(argv)
    if "/" in args.run_name or args.run_name in ("", ".", ".."):
        raise EvalInputError(f"--run-name {args.run_name!r} must be a plain file name")
    record = build_record(args.benchmark, args.run_name, args.answers, args.scores_json, args.wall_time,
                          args.submission)
    out = args.output or os.path.join(args.results_dir, args.benchmark, f"{args.run_name}.json")
    write_json(out, record)
    print(format_table(record))
    print(f"record: {out}")
    return record


if __name__ == "__main__":
    run_cli(main)
