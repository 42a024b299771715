"""The answers file a driver writes, and its sidecar.

- Answer lines in LLaVA's format, each appended, flushed and fsync'd as soon as it is made. A rerun
  resumes: questions already answered are skipped (no duplicates), a partial last line left by a killed
  run is cut off and that question is answered again.
- A sidecar `<answers-file>.meta.json`: the settings that shape the answers (checked on resume, so one
  file never mixes two configurations), the pruning config, N kept and its average-token equivalent, and
  for information how the run was batched (`batch_size`, `bucket_window`: not settings, since answers are
  the same at any batch size, so a file may be resumed at another batch size).
- Merging chunk files into one, refusing incomplete chunks or mixed settings:

    python -m llava.eval.driver merge --output answers/ckpt.jsonl answers/ckpt/2_0.jsonl answers/ckpt/2_1.jsonl
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import warnings
from collections import Counter
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any

from entropyprune.files import atomic_file
from llava.eval import EvalInputError, load_json, write_json
from llava.eval.questions import Benchmark, Item, answer_stub

META_SUFFIX = ".meta.json"
# Sidecar fields that describe how a run went, not what the answers are: a merged sidecar keeps each chunk's.
RUN_INFO = ("batch_size", "bucket_window")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _split_complete(data: bytes) -> tuple[bytes, int]:
    """(the complete lines, bytes after the last newline)."""
    cut = data.rfind(b"\n") + 1
    return data[:cut], len(data) - cut


def read_answers(path: str, truncate_partial: bool = False) -> list[dict]:
    """Answer records of a jsonl file we write, in order.

    A last line without its newline is what a run killed mid-write leaves; with truncate_partial it is cut
    off the file (its question gets answered again), otherwise it is ignored (another process may still
    be writing it). A complete line that is not JSON is damage this code cannot explain: an error.
    """
    if not os.path.isfile(path):
        return []
    with open(path, "rb") as f:
        data = f.read()
    complete, partial = _split_complete(data)
    if partial and truncate_partial:
        with open(path, "r+b") as f:
            f.truncate(len(complete))
            f.flush()
            os.fsync(f.fileno())
        warnings.warn(f"{path}: removed a partial last line ({partial} bytes) left by an interrupted run; "
                      "that question will be answered again", stacklevel=2)
    records = []
    for lineno, line in enumerate(complete.decode("utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise EvalInputError(f"{path}:{lineno}: malformed answer line ({err.msg}). Delete that line to "
                                 "resume, or pass --overwrite to start again.") from None
        if not isinstance(record, dict):
            raise EvalInputError(f"{path}:{lineno}: not an answer line (a JSON object expected).")
        records.append(record)
    return records


def answered_keys(bench: Benchmark, records: list[dict], path: str) -> Counter:
    keys: Counter = Counter()
    for n, record in enumerate(records, start=1):
        try:
            keys[bench.answer_key(record)] += 1
        except (KeyError, TypeError, ValueError):
            raise EvalInputError(f"{path}: answer {n} lacks the fields a {bench.name} answer has "
                                 f"({record!r:.120}); is this the right --answers-file?") from None
    return keys


def pending_items(bench: Benchmark, items: list[Item], done: Counter) -> list[Item]:
    """Items not yet answered. Keys are counted, so a question listed twice is answered twice."""
    left = Counter(done)
    todo = []
    for item in items:
        key = bench.answer_key(answer_stub(bench, item))
        if left[key] > 0:
            left[key] -= 1
        else:
            todo.append(item)
    return todo


LOCK_SUFFIX = ".lock"


@contextmanager
def answers_lock(answers_file: str):
    """Hold an exclusive OS-level lock on ``answers_file`` for the whole run: a second run pointed at the
    same file (the same RUN_NAME started twice, two budgets given one file) is refused at once, and a
    killed run releases the lock with its process. The lock file stays beside the answers (removing it
    would let a third run lock a new file while the second still holds the old one)."""
    path = answers_file + LOCK_SUFFIX
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            raise EvalInputError(f"{answers_file} is being written by another run (process {holder} holds "
                                 f"{path}); wait for it to finish, or give this run its own RUN_NAME / "
                                 "--answers-file") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


class AnswerWriter:
    """Appends answer lines; each is on disk (flushed and fsync'd) before the next question starts."""

    def __init__(self, path: str):
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        self._f = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        # One write call per line keeps an interruption to at most one partial (unterminated) line.
        try:
            self._f.write(json.dumps(record) + "\n")
            self._f.flush()
            os.fsync(self._f.fileno())
        except OSError as err:  # a full disk: name the file (a bare write error does not)
            if err.filename is None:
                err.filename = self._f.name
            raise

    def close(self) -> None:
        try:
            self._f.close()
        except OSError:  # the flush of a line that a full disk refused: the write above said so already
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# ------------------------------------------------------------------------------------------------ sidecar


def meta_path(answers_file: str) -> str:
    return answers_file + META_SUFFIX


def _normalise_model_path(path: str) -> str:
    expanded = os.path.expanduser(path)
    return os.path.abspath(expanded) if os.path.isdir(expanded) else path


def settings_of(bench: Benchmark, args: argparse.Namespace, prune) -> dict:
    """Everything that changes the answers; two runs may share an answers file only if these are equal."""
    return {
        "benchmark": bench.name,
        "model_path": _normalise_model_path(args.model_path),
        "model_base": args.model_base,
        "vision_tower": args.vision_tower,
        "conv_mode": args.conv_mode,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "num_beams": args.num_beams,
        "max_new_tokens": args.max_new_tokens,
        "dtype": args.dtype,
        "prune": prune.to_dict() if prune is not None else None,
        "options": bench.options(args),
    }


def load_meta(answers_file: str) -> dict | None:
    path = meta_path(answers_file)
    if not os.path.isfile(path):
        return None
    meta = load_json(path, "answers sidecar", "Delete it and rerun with --overwrite.")
    if not isinstance(meta, dict) or not isinstance(meta.get("settings"), dict):
        raise EvalInputError(f"{path} is not an answers sidecar (no 'settings'); delete it and rerun with "
                             "--overwrite.")
    return meta


def check_resumable(answers_file: str, settings: dict) -> dict | None:
    """The existing sidecar, after checking that resuming would not mix configurations."""
    meta = load_meta(answers_file)
    if not (os.path.isfile(answers_file) and os.path.getsize(answers_file)):
        return None  # no answers to mix with: a sidecar left alone is stale and gets replaced
    if meta is None:
        if os.path.isfile(answers_file) and os.path.getsize(answers_file):
            warnings.warn(f"{answers_file} has no {META_SUFFIX} sidecar, so its settings cannot be checked; "
                          "resuming it as is", stacklevel=2)
        return None
    old = meta["settings"]
    diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} before, {settings.get(k)!r} now" for k in diff)
        raise EvalInputError(f"{answers_file} was written with other settings ({shown}). Pass another "
                             "--answers-file, or --overwrite to start it again.")
    return meta




# ------------------------------------------------------------------------------------------------ merge


def merge_answers(output: str, parts: list[str]) -> dict:
    """Concatenate complete chunk answer files in the order given, and merge their sidecars.

    Unlike `cat`, this refuses a chunk that was interrupted (partial last line, or a sidecar that says it
    is incomplete) or that was run with other settings, so a merged file is always one whole configuration.
    """
    if not parts:
        raise EvalInputError("merge needs at least one chunk answers file")
    metas = []
    blobs = []
    for part in parts:
        if not os.path.isfile(part):
            raise EvalInputError(f"chunk answers file not found: {part}; did that chunk run?")
        with open(part, "rb") as f:
            data = f.read()
        _, partial = _split_complete(data)
        if partial:
            raise EvalInputError(f"{part} ends with a partial line (an interrupted run); rerun that chunk to "
                                 "complete it, then merge")
        read_answers(part)  # every line must be valid JSON
        blobs.append(data)
        meta = load_meta(part)
        if meta is not None and not meta.get("complete", False):
            raise EvalInputError(f"{part} is incomplete ({meta.get('answers')} of {meta.get('questions')} "
                                 "answers); rerun that chunk to complete it, then merge")
        metas.append((part, meta))

    known = [(p, m) for p, m in metas if m is not None]
    merged: dict[str, Any] = {}
    if known:
        first_part, first = known[0]
        for part, meta in known[1:]:
            if meta["settings"] != first["settings"]:
                diff = [k for k in first["settings"] if first["settings"][k] != meta["settings"].get(k)]
                raise EvalInputError(f"{part} and {first_part} were run with different settings "
                                     f"({', '.join(diff)}); they cannot be merged")
        merged = {k: v for k, v in first.items() if k not in ("chunk", "questions", "answers", "complete")}
        merged["questions"] = sum(m.get("questions", 0) for _, m in known)
        if any("capped_images" in m for _, m in known):  # LLaVA-1.6 images that kept all their tokens
            merged["capped_images"] = sum(m.get("capped_images", 0) for _, m in known)
        for key in RUN_INFO:
            values = [m.get(key) for _, m in known]
            merged[key] = values[0] if all(v == values[0] for v in values) else values  # one per chunk
    if len(known) != len(metas):
        missing = [p for p, m in metas if m is None]
        warnings.warn(f"no sidecar for {', '.join(missing)}; the merged sidecar cannot vouch for them",
                      stacklevel=2)

    with atomic_file(output, "wb", fsync=True) as f:
        for data in blobs:
            f.write(data)
    merged.update(
        chunk={"num_chunks": len(parts), "parts": [os.path.abspath(p) for p in parts], "mode": "merged"},
        answers=len(read_answers(output)),
        complete=bool(known) and len(known) == len(metas),
        updated=utc_now(),
    )
    write_json(meta_path(output), merged)
    return merged


def merge_main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m llava.eval.driver merge",
                                 description="Merge chunk answer files, in the order given, into one.")
    ap.add_argument("--output", required=True, help="the merged answers file")
    ap.add_argument("parts", nargs="+", help="chunk answers files, in chunk order")
    args = ap.parse_args(argv)
    meta = merge_answers(args.output, args.parts)
    print(f"merged {len(args.parts)} chunk(s), {meta['answers']} answers -> {args.output}")
    return meta


