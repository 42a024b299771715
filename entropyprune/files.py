"""Standard-library helpers for what every tool writes or says: atomic JSON files and warnings.

No torch here: the benchmark scorers (``llava.eval``) use these too and must run without it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import tempfile
from contextlib import contextmanager
from typing import Any


def warn(message: str) -> None:
    # Warnings go to stderr so that stdout keeps only the grep-able `Name: number` lines.
    print(f"warning: {message}", file=sys.stderr)


def _finite(obj: Any) -> Any:
    # NaN (e.g. an accuracy over zero items) is not valid JSON; write null instead.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", fsync: bool = False):
    """Open a temporary file next to ``path`` and rename it over ``path`` when the block ends.

    A reader never sees a half-written file, and a failure leaves the old file (or none). The file gets
    the permissions a plain ``open(path, "w")`` would give (0666 minus the umask): ``mkstemp`` alone
    creates it 0600, which would hide results from the user's group.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=parent)
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"encoding": "utf-8"})) as f:
            yield f
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as err:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # a full disk: say which file it refused
            err.filename = path
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> str:
    """Write ``obj`` as JSON with :func:`atomic_file`; non-finite floats become null. Returns the path."""
    with atomic_file(path) as f:
        # ensure_ascii=False keeps MMBench-CN text readable in the summaries.
        json.dump(_finite(obj), f, indent=indent, ensure_ascii=False, allow_nan=False)
        f.write("\n")
    return os.fspath(path)
