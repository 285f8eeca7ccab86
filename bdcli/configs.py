"""Typed configs from plain values (YAML recipes, ``--set key=value``): unknown fields get the nearest
valid name, values are converted to the field's type, and every mistake is one sentence naming where."""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from typing import Any

from .errors import BdcliError, UsageError


def build_config(Config: type, values: dict[str, Any], where: str) -> Any:
    """``Config(**values)`` with each value converted to its field's type; ``where`` names the place
    in the recipe (``attacks.badnets.attack``) for the error message."""
    if not isinstance(values, dict):
        raise UsageError(f"{where} must be a mapping of option: value, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(Config)}
    hints = typing.get_type_hints(Config)
    converted = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid: {', '.join(sorted(fields))}"
            raise UsageError(f"{where}: unknown field {key!r}{hint}")
        converted[key] = convert(value, hints[key], f"{where}.{key}")
    try:
        return Config(**converted)
    except BdcliError as e:
        raise UsageError(f"{where}: {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"{where}: {e}") from None


def convert(value: Any, hint: Any, where: str) -> Any:
    """``value`` as type ``hint`` (int, float, bool, str, Optional[...], tuple[str, ...])."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return convert(value, a, where)
            except UsageError as e:
                errors.append(str(e))
        raise UsageError(errors[0] if errors else f"{where}: cannot take {value!r}")
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise UsageError(f"{where} must be a list, got {value!r}")
        return tuple(str(x).strip() for x in items if str(x).strip())
    if hint is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
        raise UsageError(f"{where} must be true or false, got {value!r}")
    if hint is int:
        number = _number(value, f"{where} must be an integer, got {value!r}")
        if not math.isfinite(number) or number != int(number):
            raise UsageError(f"{where} must be an integer, got {value!r}")
        return int(number)
    if hint is float:
        number = _number(value, f"{where} must be a number, got {value!r}")
        if not math.isfinite(number):
            raise UsageError(f"{where} must be a finite number, got {value!r}")
        return number
    if hint is str:
        if isinstance(value, (dict, list)):
            raise UsageError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def _number(value: Any, message: str) -> float:
    """``value`` as a float, or ``message`` as a usage error. YAML 1.1 reads 5e-5 (no dot) as a string:
    it is accepted as the number it is; a bool is not a number here."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise UsageError(message)
    try:
        return float(value)
    except ValueError:
        raise UsageError(message) from None
