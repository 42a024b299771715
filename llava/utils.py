"""What every command-line entry point shares: bad input becomes one message and exit status 2.

Library code raises exceptions (ValueError and its subclasses for bad values, FileNotFoundError and
other OSErrors for files, NotImplementedError for what the runtime does not support); only the entry
points, through :func:`run_cli`, turn them into ``error: ...`` on stderr. Set ``ENTROPYPRUNE_DEBUG=1``
to get the traceback instead. Standard library only, so scorers stay torch-free.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

# What a user can cause with a flag, a file or the data; anything else is a bug and keeps its traceback.
INPUT_ERRORS = (ValueError, OSError, NotImplementedError)
USAGE_EXIT = 2


def call_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> int:
    """Run ``main(argv)`` and return its exit status: its int return value (0 for anything else), or 2
    after printing one ``error:`` line when it raised an input error."""
    try:
        status = main(argv)
    except INPUT_ERRORS as err:
        if os.environ.get("ENTROPYPRUNE_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return USAGE_EXIT
    return status if isinstance(status, int) and not isinstance(status, bool) else 0


def run_cli(main: Callable[[list[str] | None], Any], argv: list[str] | None = None) -> None:
    """``python -m`` entry points: :func:`call_cli`, then exit with its status."""
    raise SystemExit(call_cli(main, argv))
