"""Command-line options made from a config model's fields, so a flag and the setting it fills share one default.

``add_model_options(parser, Model, ["threads", ...])`` adds ``--threads`` with the field's type, its bounds checked
by the model, and a help text made of the field's description and default; ``values_from_args`` gives back only the
options the user typed, so whatever is left out keeps the model's default. argparse has no pydantic bridge and the
libraries that have one replace argparse altogether, hence these few lines.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from voicepipe.errors import UserError

__all__ = ["add_model_options", "values_from_args", "option_error", "flag"]


def flag(field: str) -> str:
    """The option that fills ``field`` (``sample_rate`` -> ``--sample-rate``)."""
    return "--" + field.replace("_", "-")


def _plain_type(annotation: Any) -> Any:
    """``int | None`` -> ``int``: the type a typed value must have (None is the option left out)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_model_options(parser: argparse.ArgumentParser, model_cls: type[BaseModel], fields: Sequence[str]) -> None:
    """Add one ``--option`` per field of ``model_cls``; its default is the model's (shown in the help, not set here)."""
    for name in fields:
        info = model_cls.model_fields[name]
        kind = _plain_type(info.annotation)
        default = info.get_default(call_default_factory=True)
        shown = "" if default is None else f" (default {str(default).lower() if kind is bool else default})"
        help_text = (info.description or name.replace("_", " ")).rstrip(".") + shown
        if kind is bool:
            parser.add_argument(flag(name), action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(kind) is typing.Literal:
            choices = typing.get_args(kind)
            parser.add_argument(flag(name), choices=choices, type=type(choices[0]), default=None, help=help_text)
        else:
            kind = kind if kind in (int, float) else str
            parser.add_argument(flag(name), type=kind, default=None, metavar=name.upper(), help=help_text)


def values_from_args(args: argparse.Namespace, model_cls: type[BaseModel], fields: Sequence[str]) -> dict[str, Any]:
    """The values of the options ``add_model_options`` added that were given (left-out ones keep the model's)."""
    unknown = [name for name in fields if name not in model_cls.model_fields]
    if unknown:
        raise ValueError(f"{model_cls.__name__} has no field {', '.join(unknown)}")
    return {name: getattr(args, name) for name in fields if getattr(args, name, None) is not None}


def option_error(exc: ValidationError) -> UserError:
    """One line for the first problem a config model found in the options, naming the option."""
    problem = exc.errors()[0]
    msg = problem["msg"]
    if problem["type"] == "value_error" and "error" in problem.get("ctx", {}):
        msg = str(problem["ctx"]["error"])  # our own validators' words, without pydantic's "Value error, "
    where = [str(p) for p in problem["loc"] if not str(p).startswith("function-")]
    return UserError(f"{flag(where[-1])}: {msg}" if where else msg)
