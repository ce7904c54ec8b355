"""Command-line options made from pydantic config fields, so a setting is defined once: in its config model.

``voicepipe transcribe`` and ``voicepipe say`` expose some engine and stage settings as options (``--model``,
``--threads``...). Instead of restating each setting's type, default and help in argparse, a command names the fields
it exposes and this module derives the options from the model that defines them::

    add_model_options(parser, FasterWhisperTranscriber.Config, ["model", "language", "threads"])
    ...
    values = values_from_args(args, ["model", "language", "threads"])   # only what the user gave
    config = validate_options(ASRConfig, {"engine": args.engine, **values})

- ``beam_size`` becomes ``--beam-size`` (its ``dest`` stays ``beam_size``); the help is the field's description and its
  default; the type comes from the annotation: ``int``, ``float``, ``str``, ``Path``, a ``Literal`` (choices), ``bool``
  (``--x`` / ``--no-x``), each optionally ``| None`` (then the word ``none`` gives None).
- An option the user does not give is left out of the namespace (``argparse.SUPPRESS``), so the model's own default
  applies: the default lives in one place, and a model picked at run time (an engine with other defaults) keeps its own.
- ``validate_options`` reports a bad value against its option, as a one-line ``UserError``.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from voicepipe.errors import UserError

__all__ = ["add_model_options", "values_from_args", "validate_options", "option_name"]

M = TypeVar("M", bound=BaseModel)

_SCALARS: dict[Any, Callable[[str], Any]] = {int: int, float: float, str: str, Path: Path}
_NONE_WORD = "none"


def option_name(field: str) -> str:
    """``beam_size`` -> ``--beam-size``."""
    return "--" + field.replace("_", "-")


def _split_optional(annotation: Any) -> tuple[Any, bool]:
    """(the annotation without ``None``, whether ``None`` is allowed)."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _argument(name: str, info: FieldInfo) -> dict[str, Any]:
    """argparse keyword arguments for one field."""
    inner, nullable = _split_optional(info.annotation)
    kwargs: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS}
    if inner is bool and not nullable:
        kwargs["action"] = argparse.BooleanOptionalAction
        return kwargs
    if typing.get_origin(inner) is typing.Literal:
        choices = list(typing.get_args(inner))
        convert = _SCALARS.get(type(choices[0]))
        if convert is None or any(type(c) is not type(choices[0]) for c in choices):
            raise TypeError(f"{name}: only Literals of one scalar type can become options, not {inner!r}")
        kwargs["choices"] = [*choices, None] if nullable else choices
        kwargs["metavar"] = "{" + ",".join(str(c) for c in kwargs["choices"]).replace("None", _NONE_WORD) + "}"
    else:
        convert = _SCALARS.get(inner)
        if convert is None:
            raise TypeError(f"{name}: a field of type {inner!r} cannot become a command-line option")
        kwargs["metavar"] = name.upper()
    if nullable:

        def convert_or_none(text: str, convert: Callable[[str], Any] = convert) -> Any:
            return None if text.lower() == _NONE_WORD else convert(text)

        convert_or_none.__name__ = getattr(convert, "__name__", "value")  # argparse names it in "invalid int value"
        kwargs["type"] = convert_or_none
    else:
        kwargs["type"] = convert
    return kwargs


def _help(info: FieldInfo, nullable: bool) -> str:
    parts = [info.description or ""]
    if not info.is_required() and info.default is not None:
        default = info.default
        if isinstance(default, bool):
            default = "on" if default else "off"
        parts.append(f"(default: {default})")
    if nullable:
        parts.append(f"('{_NONE_WORD}' for None)")
    return " ".join(p for p in parts if p)


def add_model_options(parser: argparse.ArgumentParser, model_cls: type[BaseModel], fields: Iterable[str]) -> None:
    """Add one option per named field of ``model_cls`` to ``parser`` (or an argument group; see the module docstring)."""
    for name in fields:
        info = model_cls.model_fields.get(name)
        if info is None:
            raise KeyError(f"{model_cls.__name__} has no field {name!r}")
        kwargs = _argument(name, info)
        kwargs["help"] = _help(info, _split_optional(info.annotation)[1])
        parser.add_argument(option_name(name), **kwargs)


def values_from_args(args: argparse.Namespace, fields: Iterable[str]) -> dict[str, Any]:
    """The named fields the user gave on the command line (options left out are absent, not None)."""
    return {name: getattr(args, name) for name in fields if hasattr(args, name)}


def validate_options(model_cls: type[M], values: Mapping[str, Any], *, what: str = "this command") -> M:
    """``model_cls`` validated from ``values``; a problem becomes ``UserError('--option: problem')``.

    ``what`` names what an unknown setting does not apply to ("the mlx-whisper engine").
    """
    try:
        return model_cls.model_validate(dict(values))
    except ValidationError as exc:
        problem = exc.errors()[0]
        loc = [str(p) for p in problem["loc"]]
        where = option_name(loc[0]) if loc else "options"
        if problem["type"] == "extra_forbidden":
            message = f"does not apply to {what}"
        else:
            message = problem["msg"].removeprefix("Value error, ")
        raise UserError(f"{where}: {message}") from exc
