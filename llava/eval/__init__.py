"""Benchmark drivers (`model_vqa_*.py`) and scorers (`eval_*.py`).

The helpers below are shared by the scorers. They use only the standard library so that scoring a
finished run never needs torch, and they turn every kind of bad input into one `EvalInputError` whose
message names the file (and line) and says how to fix it; the CLIs print that message and exit 2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

from entropyprune.files import warn, write_json_atomic
from llava.utils import run_cli  # noqa: F401  (the scorers' entry point)

__all__ = [
    "EvalInputError",
    "default_summary_path",
    "load_json",
    "read_jsonl",
    "require_file",
    "run_cli",
    "warn",
    "write_json",
]


class EvalInputError(ValueError):
    """Bad scorer input (missing file, malformed line, missing field); the message says what to fix."""


def require_file(path: str | os.PathLike, what: str, fix: str = "") -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        hint = f" {fix}" if fix else ""
        raise EvalInputError(f"{what} not found: {path}.{hint}")
    return path


def load_json(path: str | os.PathLike, what: str, fix: str = "") -> Any:
    path = require_file(path, what, fix)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise EvalInputError(
                f"{what} {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}). "
                "Re-download or regenerate the file."
            ) from e


def read_jsonl(
    path: str | os.PathLike, what: str, required: Iterable[str] = (), fix: str = ""
) -> list[tuple[int, dict]]:
    """Read a JSONL file into (1-based line number, record) pairs; blank lines are skipped.

    Line numbers travel with the records so later errors (an unmatched question, say) can point at the
    exact line of the answers file.
    """
    path = require_file(path, what, fix)
    required = tuple(required)
    records = []
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise EvalInputError(f"{path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start}); save the "
                                     "file as UTF-8.") from None
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise EvalInputError(
                    f"{path}:{lineno}: malformed JSON ({e.msg}). An interrupted run can leave a truncated "
                    "last line: delete that line and resume the run, or regenerate the file."
                ) from e
            if not isinstance(record, dict):
                raise EvalInputError(f"{path}:{lineno}: expected a JSON object, got {type(record).__name__}.")
            missing = [k for k in required if k not in record]
            if missing:
                raise EvalInputError(
                    f"{path}:{lineno}: missing field(s) {', '.join(missing)}; this does not look like a "
                    f"{what} line (needs {', '.join(required)})."
                )
            records.append((lineno, record))
    return records


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> str:
    """Write JSON atomically, so an interrupted scorer never leaves a half-written summary behind."""
    return write_json_atomic(path, obj, indent)


def default_summary_path(result_file: str | os.PathLike) -> str:
    # Next to the answers file, with a .json (not .jsonl) suffix so globs over answers/*.jsonl skip it.
    return os.path.splitext(os.fspath(result_file))[0] + "_scores.json"
