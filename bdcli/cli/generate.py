"""Build Typer commands from typed config dataclasses, so that the CLI, the recipes and the Python API
share one definition of every option and its default."""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from typing import Any, Callable, Optional

import typer

from .fields import FIELD_HELP


def _option_type(hint: Any) -> tuple[Any, Callable[[Any], Any]]:
    """The annotation Typer sees, and a converter back to the config's type."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        inner = next(a for a in args if a is not type(None))
        ann, conv = _option_type(inner)
        return Optional[ann], (lambda v: None if v is None else conv(v))
    if origin is tuple:
        # Typer has no variadic tuples: take "a,b,c".
        return str, (lambda v: v if isinstance(v, tuple) else tuple(x.strip() for x in str(v).split(",") if x.strip()))
    return hint, (lambda v: v)


def _cli_default(value: Any) -> Any:
    return ",".join(value) if isinstance(value, tuple) else value


def config_parameters(Config: type) -> tuple[list[inspect.Parameter], dict[str, Callable[[Any], Any]]]:
    hints = typing.get_type_hints(Config)
    params, converters = [], {}
    for f in dataclasses.fields(Config):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        ann, conv = _option_type(hints[f.name])
        flag = "--" + f.name.replace("_", "-")
        decls = [f"{flag}/--no-{flag[2:]}"] if ann is bool else [flag]
        # A field's own help (its metadata) wins; names shared by many configs keep one help in fields.py.
        help_text = f.metadata.get("help") or FIELD_HELP.get(f.name, "")
        opt = typer.Option(_cli_default(default), *decls, help=help_text, rich_help_panel="Config")
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=ann))
        converters[f.name] = conv
    return params, converters


def command_from_config(
    Config: type,
    extra: list[inspect.Parameter],
    run: Callable[..., None],
) -> Callable[..., None]:
    """A function whose signature is ``extra`` options plus one option per config field; calling it
    builds ``Config`` (validated by its __post_init__) and calls ``run(cfg, **extra_values)``."""
    params, converters = config_parameters(Config)
    names = set(converters)
    clash = names & {p.name for p in extra}
    if clash:
        raise ValueError(f"config fields clash with command options: {clash}")

    def command(**kwargs: Any) -> None:
        cfg_values = {k: converters[k](kwargs.pop(k)) for k in list(kwargs) if k in names}
        run(Config, cfg_values, **kwargs)

    command.__signature__ = inspect.Signature(extra + params)  # type: ignore[attr-defined]
    command.__annotations__ = {p.name: p.annotation for p in extra + params}
    return command
