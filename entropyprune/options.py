"""Method options: each method declares a dataclass of options whose defaults are its official code's.

Set from the command line with the one repeatable flag ``--prune-option NAME=VALUE`` or from Python with
``PruneConfig(options={...})``. Values are checked against the dataclass's field types; an unknown name
or a bad value is an error that lists the method's options with their defaults.

Supported field types: ``bool``, ``int``, ``float``, ``str`` (optionally restricted by a ``choices``
entry in the field's metadata) and tuples of ``int`` or ``float`` (written ``8,16,24`` on the command line).
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

OPTION_FLAG = "--prune-option"


def describe_options(cls: type | None) -> str:
    if cls is None or not dataclasses.fields(cls):
        return "it has no options"
    parts = []
    for f in dataclasses.fields(cls):
        choices = f.metadata.get("choices")
        extra = f" (one of {', '.join(choices)})" if choices else ""
        parts.append(f"{f.name}={_show(f.default)}{extra}")
    return "its options are " + "; ".join(parts)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(_show(v) for v in value)
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _convert(method: str, cls: type, f: dataclasses.Field, value: Any) -> Any:
    kind = typing.get_type_hints(cls)[f.name]
    where = f"{OPTION_FLAG} {f.name}={_show(value) if not isinstance(value, str) else value}"
    bad = ValueError(f"{where}: not a valid value for {method!r}'s option {f.name} "
                     f"({describe_options(cls)})")
    origin = typing.get_origin(kind)
    if origin is tuple:
        item = typing.get_args(kind)[0]
        parts = value.split(",") if isinstance(value, str) else list(value)
        try:
            return tuple(_scalar(item, p) for p in parts if not (isinstance(p, str) and not p.strip()))
        except (TypeError, ValueError):
            raise bad from None
    try:
        out = _scalar(kind, value)
    except (TypeError, ValueError):
        raise bad from None
    choices = f.metadata.get("choices")
    if choices and out not in choices:
        raise bad
    return out


def _scalar(kind: type, value: Any) -> Any:
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if text in ("1", "true", "yes", "on"):
            return True
        if text in ("0", "false", "no", "off"):
            return False
        raise ValueError(value)
    if kind is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return int(str(value).strip()) if isinstance(value, str) else int(value)
    if kind is float:
        if isinstance(value, bool):
            raise ValueError(value)
        out = float(value)
        if not math.isfinite(out):
            raise ValueError(value)
        return out
    if kind is str:
        if not isinstance(value, str):
            raise TypeError(value)
        return value
    raise TypeError(f"unsupported option type {kind!r}")


def build_options(method: str, cls: type | None, values: dict[str, Any] | None) -> Any:
    """The options dataclass of ``method`` with ``values`` applied (strings are parsed), or None."""
    values = dict(values or {})
    if cls is None:
        if values:
            raise ValueError(f"{OPTION_FLAG}: method {method!r} has no options, got {', '.join(sorted(values))}")
        return None
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"{OPTION_FLAG}: {', '.join(unknown)} is not an option of {method!r}; "
                         f"{describe_options(cls)}")
    opts = cls(**{name: _convert(method, cls, names[name], v) for name, v in values.items()})
    check = getattr(opts, "check", None)
    if check is not None:
        try:
            check()
        except ValueError as err:
            raise ValueError(f"{OPTION_FLAG} for {method!r}: {err}") from None
    return opts


def parse_option_args(items: list[str] | None) -> dict[str, str]:
    """``["a=1", "b=x,y"]`` -> ``{"a": "1", "b": "x,y"}``; each item must be NAME=VALUE, names once."""
    out: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise ValueError(f"{OPTION_FLAG} {item!r}: expected NAME=VALUE, e.g. {OPTION_FLAG} pivot_image=4")
        if name in out:
            raise ValueError(f"{OPTION_FLAG} {name} is given twice")
        out[name] = value.strip()
    return out


def options_to_dict(opts: Any) -> dict[str, Any]:
    """All options with their values (defaults included), JSON-ready, for run records and sidecars."""
    if opts is None:
        return {}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(opts).items()}
