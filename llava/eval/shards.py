"""Which questions this process answers: LLaVA's chunking and torchrun sharding.

- Chunking as LLaVA's `split_list`/`get_chunk`: chunk size ceil(n / num_chunks), contiguous slices.
- `torchrun --nproc-per-node N`: without `--num-chunks`, RANK/WORLD_SIZE pick the chunk; each rank writes
  `<answers stem>/<W>_<rank>.jsonl` (the names the scripts give their chunks), and rank 0 waits until every
  shard holds all of its answers (a file-based barrier: no torch.distributed) before merging them.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

from llava.eval import EvalInputError
from llava.eval.answer_file import answered_keys, read_answers, utc_now
from llava.eval.questions import Benchmark

POLL_SECONDS = 1.0


def split_list(lst: list, n: int) -> list[list]:
    """LLaVA's split_list: contiguous chunks of ceil(len / n) items (possibly fewer than n chunks)."""
    if not lst:
        return []
    size = math.ceil(len(lst) / n)
    return [lst[i:i + size] for i in range(0, len(lst), size)]


def get_chunk(lst: list, n: int, k: int) -> list:
    """Chunk k of split_list(lst, n). Where ceil leaves fewer than n chunks, LLaVA raises IndexError for
    the missing ones; here they are empty, so a run on more GPUs than the data needs still succeeds."""
    chunks = split_list(lst, n)
    return chunks[k] if k < len(chunks) else []


@dataclass
class Shard:
    num: int
    idx: int
    mode: str  # "single", "chunks" (--num-chunks) or "torchrun" (RANK/WORLD_SIZE)
    answers_file: str  # where this process writes
    final_file: str | None = None  # torchrun: what rank 0 merges into
    local_rank: int | None = None


def shard_path(answers_file: str, num: int, idx: int) -> str:
    """`answers/ckpt.jsonl` -> `answers/ckpt/<num>_<idx>.jsonl`, the chunk names LLaVA's scripts use."""
    stem = os.path.splitext(answers_file)[0]
    return os.path.join(stem, f"{num}_{idx}.jsonl")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    value = env.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError:
        raise EvalInputError(f"environment variable {name}={value!r} is not an integer") from None


def resolve_shard(args: argparse.Namespace, env: Mapping[str, str]) -> Shard:
    answers = os.path.expanduser(args.answers_file)
    if args.num_chunks is not None:
        idx = args.chunk_idx or 0
        if idx >= args.num_chunks:
            raise EvalInputError(f"--chunk-idx {idx} is out of range for --num-chunks {args.num_chunks} (0..."
                                 f"{args.num_chunks - 1})")
        return Shard(args.num_chunks, idx, "chunks" if args.num_chunks > 1 else "single", answers)
    if args.chunk_idx not in (None, 0):
        raise EvalInputError(f"--chunk-idx {args.chunk_idx} needs --num-chunks")
    world = _env_int(env, "WORLD_SIZE")
    if world is not None and world > 1:
        rank = _env_int(env, "RANK")
        if rank is None or not 0 <= rank < world:
            raise EvalInputError(f"RANK={env.get('RANK')!r} is not in 0..{world - 1} (WORLD_SIZE={world}); "
                                 "launch with torchrun --nproc-per-node N")
        return Shard(world, rank, "torchrun", shard_path(answers, world, rank), answers,
                     _env_int(env, "LOCAL_RANK"))
    return Shard(1, 0, "single", answers)


# ------------------------------------------------------------------------------------------------ torchrun


def failure_marker(answers_file: str) -> str:
    return answers_file + ".failed"


def mark_failure(answers_file: str) -> None:
    try:
        os.makedirs(os.path.dirname(os.path.abspath(answers_file)), exist_ok=True)
        with open(failure_marker(answers_file), "w", encoding="utf-8") as f:
            f.write(utc_now() + "\n")
    except OSError:
        pass


def clear_failure(answers_file: str) -> None:
    if os.path.exists(failure_marker(answers_file)):
        os.remove(failure_marker(answers_file))


def wait_for_shards(bench: Benchmark, parts: list[str], expected: list[Counter], started: float,
                     timeout: float | None = None) -> None:
    """Rank 0's barrier: every shard file holds every answer of its chunk.

    Completeness is read from the files themselves, so markers left by an earlier run cannot fool it; a
    `.failed` marker newer than this run's start means a rank died and there is nothing to wait for.
    """
    last_note = time.time()
    while True:
        waiting = []
        for rank, (part, want) in enumerate(zip(parts, expected, strict=True)):
            marker = failure_marker(part)
            if os.path.exists(marker) and os.path.getmtime(marker) >= started - 1:
                raise EvalInputError(f"rank {rank} failed (see its error above; marker {marker}); rerun the "
                                     "same torchrun command to resume")
            have = answered_keys(bench, read_answers(part), part)
            if any(have[k] < n for k, n in want.items()):
                waiting.append(rank)
        if not waiting:
            return
        if timeout is not None and time.time() - started > timeout:
            raise EvalInputError(f"timed out waiting for rank(s) {waiting} to finish their shards")
        if time.time() - last_note > 60:
            print(f"rank 0: waiting for rank(s) {', '.join(map(str, waiting))} to finish", file=sys.stderr)
            last_note = time.time()
        time.sleep(POLL_SECONDS)
