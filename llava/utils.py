"""What every command-line entry point shares: bad input becomes one message and exit status 2.

Library code raises exceptions (ValueError and its subclasses for bad values, FileNotFoundError and
other OSErrors for files, NotImplementedError for what the runtime does not support); only the entry
points, through :func:`run_cli`, turn them into ``error: ...`` on stderr. Set ``ENTROPYPRUNE_DEBUG=1``
to get the traceback instead. Ctrl-C is one line too (exit status 130), and so is running out of GPU
memory (exit status 2, with what to lower). Standard library only, so scorers stay torch-free.
"""

from __future__ import annotations

import errno
import os
import sys
from collections.abc import Callable
from typing import Any

# What a user can cause with a flag, a file or the data; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, NotImplementedError)
USAGE_EXIT = 2
INTERRUPTED_EXIT = 130  # 128 + SIGINT, what a shell reports for Ctrl-C


# OS errors whose bare text ("[Errno 28] No space left on device") does not say what to do about them.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full; free space and rerun (the run resumes where it stopped)",
    errno.EFBIG: "a file-size limit was hit (ulimit -f) or the file system cannot hold a file this large; "
                 "rerun after raising it (the run resumes where it stopped)",
    errno.EDQUOT: "the disk quota is exhausted; free space and rerun (the run resumes where it stopped)",
    errno.EROFS: "the file system is read-only; choose another output place",
    errno.EACCES: "permission denied; choose another output place or fix the permissions",
}


def describe(err: BaseException) -> str:
    """The one line printed for an input error: the message, with the file and what to do for OS errors."""
    if isinstance(err, FileExistsError) and err.filename and not os.path.isdir(err.filename):
        text = f"cannot create the folder {err.filename}: a file of that name is in the way"
    elif isinstance(err, OSError) and err.errno in _OS_HINTS and err.strerror:
        where = f"{err.filename}: " if err.filename else ""
        text = f"{where}{err.strerror} ({_OS_HINTS[err.errno]})"
    else:
        text = str(err) or type(err).__name__
    return " ".join(text.split("\n"))  # one line, whatever the message held


def call_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None,
             exit_on_interrupt: bool = False) -> int:
    """Run ``main(argv)`` and return its exit status: its int return value (0 for anything else), or 2
    after printing one ``error:`` line when it raised an input error."""
    try:
        status = main(argv)
    except INPUT_ERRORS as err:
        if os.environ.get("ENTROPYPRUNE_DEBUG"):
            raise
        print(f"error: {describe(err)}", file=sys.stderr)
        return USAGE_EXIT
    except KeyboardInterrupt:
        if os.environ.get("ENTROPYPRUNE_DEBUG"):
            raise
        # What was written is on disk (answers are fsync'd one by one); a rerun picks it up.
        print("error: interrupted; what was finished is kept: rerun the same command to resume", file=sys.stderr)
        if exit_on_interrupt:  # here, while the interrupted frames (and the model in them) are still alive
            leave_now(INTERRUPTED_EXIT)
        return INTERRUPTED_EXIT
    except RuntimeError as err:
        if type(err).__name__ != "OutOfMemoryError":  # torch's, a RuntimeError: found by name, torch-free
            raise
        if os.environ.get("ENTROPYPRUNE_DEBUG"):
            raise
        print(f"error: out of device memory ({describe(err).split('. ')[0]}); lower --batch-size, or use a "
              "smaller --dtype, and rerun (the run resumes where it stopped)", file=sys.stderr)
        return USAGE_EXIT
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """``python -m`` entry points: :func:`call_cli`, then exit with its status."""
    raise SystemExit(call_cli(main, argv, exit_on_interrupt=True))


def leave_now(status: int) -> None:
    """Exit at once after Ctrl-C, skipping the interpreter's shutdown, where tearing down torch while its
    threads are busy can abort the process (status -6) after the message was printed. It still happens now
    and then (a torch thread aborts first); nothing is lost either way: answers are fsync'd line by line,
    records are renamed into place, and the OS releases the locks."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)
