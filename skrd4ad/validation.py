"""Type and range checks for the settings dataclasses, by their annotations: a value of the
wrong kind is an error, never converted silently (``epochs: 1.5`` is not 1, ``true`` is not
1, a quoted ``"false"`` is not true)."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Any

from .errors import ConfigError

_KINDS = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}


def _check(field: str, value: Any, kind: Any) -> Any:
    """``value`` as ``kind`` (ints are accepted where floats are), or a ConfigError."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is typing.Literal:  # a choice, checked by check_choice
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _check(field, value, kind)
    if origin is tuple:
        if not isinstance(value, list | tuple) or len(value) != len(args):
            raise ConfigError(field, f"must be {len(args)} values, got {value!r}")
        return tuple(_check(field, v, a) for v, a in zip(value, args, strict=True))
    ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not ok:
        quoted = " (a quoted string: drop the quotes)" if isinstance(value, str) else ""
        raise ConfigError(field, f"must be {_KINDS.get(kind, kind)}, got {value!r}{quoted}")
    if kind is float and not math.isfinite(value):
        raise ConfigError(field, f"must be a finite number, got {value!r}")
    return value


def check_types(settings: Any, prefix: str = "") -> None:
    """Check (and normalise: ints to floats where floats are expected) every field of the
    dataclass instance ``settings`` against its annotation; errors name ``prefix + field``."""
    hints = typing.get_type_hints(type(settings))
    for f in dataclasses.fields(settings):
        value = _check(prefix + f.name, getattr(settings, f.name), hints[f.name])
        setattr(settings, f.name, value)


def check_choice(field: str, value: Any, choices: typing.Iterable[Any]) -> None:
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(field, f"must be one of {', '.join(map(str, choices))}; got {value!r}")
