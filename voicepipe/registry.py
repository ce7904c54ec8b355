"""The stage registry: every stage, built-in or third-party, is found the same way.

A stage type in ``pipeline.yaml`` is either a name registered in the entry-point group ``voicepipe.stages`` (voicepipe's
own stages are registered there by its ``pyproject.toml``, exactly like a plugin's) or a ``package.module:Class`` path.
Entry points are loaded one at a time and only when asked for, so a plugin that fails to import is reported and does
not take the others down; whatever is loaded must be a ``Stage`` subclass.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass

from voicepipe.errors import UserError
from voicepipe.stage import Stage

__all__ = ["ENTRY_POINT_GROUP", "StageInfo", "entry_points", "resolve_stage", "list_stages"]

ENTRY_POINT_GROUP = "voicepipe.stages"


@dataclass(frozen=True)
class StageInfo:
    """What ``voicepipe plugins`` shows for one registered stage."""

    name: str
    target: str
    origin: str
    stage_class: type[Stage] | None
    error: str | None = None


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Registered stage entry points by name (the first registration of a name wins)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)
    return found


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"


def _check_stage(obj: object, where: str) -> type[Stage]:
    if not (isinstance(obj, type) and issubclass(obj, Stage)):
        raise UserError(f"{where} is not a voicepipe stage (it must be a subclass of voicepipe.stage.Stage)")
    return obj


def _import_failure(exc: BaseException) -> str:
    """One line for why a plugin module failed to import (a syntax error names its file and line)."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


def _import_path(path: str) -> type[Stage]:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".")):
        raise UserError(f"stage type '{path}' must be a registered name or 'package.module:Class'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise UserError(f"stage type '{path}': cannot import module '{module_name}' ({exc}); is it installed?") from exc
    except (Exception, SystemExit) as exc:  # a plugin's own bug at import time: report it, do not crash
        raise UserError(
            f"stage type '{path}': module '{module_name}' failed to import: {_import_failure(exc)}"
        ) from exc
    try:
        obj = getattr(module, attr)
    except AttributeError as exc:
        raise UserError(f"stage type '{path}': module '{module_name}' has no attribute '{attr}'") from exc
    return _check_stage(obj, f"stage type '{path}'")


def resolve_stage(type_name: str) -> type[Stage]:
    """The stage class for a type name or ``module:Class`` path; a ``UserError`` that says the fix otherwise."""
    if ":" in type_name:
        return _import_path(type_name)
    eps = entry_points()
    ep = eps.get(type_name)
    if ep is None:
        known = ", ".join(sorted(eps)) or "none"
        raise UserError(
            f"unknown stage type '{type_name}'; registered types: {known} "
            "(or give 'package.module:Class'; 'voicepipe plugins' lists them)"
        )
    try:
        obj = ep.load()
    except (Exception, SystemExit) as exc:  # a broken plugin must be reported, not crash the caller
        raise UserError(
            f"stage type '{type_name}' ({ep.value}, from {_origin(ep)}) failed to import: {_import_failure(exc)}"
        ) from exc
    return _check_stage(obj, f"stage type '{type_name}' ({ep.value})")


def list_stages() -> list[StageInfo]:
    """Every registered stage with where it came from; a stage that fails to load carries its error."""
    infos = []
    for name, ep in sorted(entry_points().items()):
        try:
            cls = resolve_stage(name)
            infos.append(StageInfo(name, ep.value, _origin(ep), cls))
        except UserError as exc:
            infos.append(StageInfo(name, ep.value, _origin(ep), None, str(exc)))
    return infos
