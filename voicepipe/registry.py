"""The registry: every stage and every engine, built-in or third-party, is found the same way.

A stage type in ``pipeline.yaml`` is a name registered in the entry-point group ``voicepipe.stages``; an engine (the
model behind the ``vad``, ``asr``, ``llm`` and ``tts`` stages, picked with ``engine:``) is a name registered in
``voicepipe.engines.<role>``. voicepipe's own stages and engines are registered there by its ``pyproject.toml``,
exactly like a plugin's. Anywhere a name is accepted, a ``package.module:Class`` path is accepted too.

Entry points are loaded one at a time and only when asked for, so a plugin that fails to import is reported and does
not take the others down; whatever is loaded must be a subclass of the group's base class.
"""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from voicepipe.errors import UserError

__all__ = [
    "ENTRY_POINT_GROUP",
    "ENGINE_ROLES",
    "Registry",
    "RegisteredInfo",
    "StageInfo",
    "STAGES",
    "engine_registry",
    "entry_points",
    "resolve_stage",
    "resolve_engine",
    "list_stages",
]

ENTRY_POINT_GROUP = "voicepipe.stages"
#: The roles an engine can have; each has its group ``voicepipe.engines.<role>``.
ENGINE_ROLES = ("vad", "asr", "llm", "tts")


@dataclass(frozen=True)
class RegisteredInfo:
    """What ``voicepipe plugins`` shows for one registered stage or engine."""

    name: str
    target: str
    origin: str
    cls: type | None
    error: str | None = None

    @property
    def stage_class(self) -> type | None:  # the name ``voicepipe plugins`` and older tests use
        return self.cls


StageInfo = RegisteredInfo


def _origin(ep: importlib.metadata.EntryPoint) -> str:
    dist = ep.dist
    return f"{dist.metadata['Name']} {dist.version}" if dist is not None else "unknown distribution"


def _import_failure(exc: BaseException) -> str:
    """One line for why a plugin module failed to import (a syntax error names its file and line)."""
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} ({exc.filename}, line {exc.lineno})"
    return f"{type(exc).__name__}: {exc}"


class Registry:
    """One entry-point group and the base class its entries must subclass.

    ``base`` is a ``module:Class`` path, imported on first use, so building a registry imports nothing heavy.
    ``what`` names an entry in messages ("stage type", "tts engine").
    """

    def __init__(self, group: str, base: str, what: str, field: str) -> None:
        self.group = group
        self._base_path = base
        self.what = what
        self.field = field  # the pipeline.yaml key that names an entry ("type", "engine")

    @property
    def base(self) -> type:
        module, _, attr = self._base_path.partition(":")
        return getattr(importlib.import_module(module), attr)

    def entry_points(self) -> dict[str, importlib.metadata.EntryPoint]:
        """Registered entry points by name (the first registration of a name wins)."""
        found: dict[str, importlib.metadata.EntryPoint] = {}
        for ep in importlib.metadata.entry_points(group=self.group):
            found.setdefault(ep.name, ep)
        return found

    def names(self) -> list[str]:
        return sorted(self.entry_points())

    def _check(self, obj: object, where: str) -> type:
        base = self.base
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise UserError(f"{where} is not a voicepipe {self.what} (it must be a subclass of {self._base_path})")
        return obj

    def _import_path(self, path: str) -> type:
        module_name, _, attr = path.partition(":")
        if not module_name or not attr or not all(part.isidentifier() for part in module_name.split(".")):
            raise UserError(f"{self.what} '{path}' must be a registered name or 'package.module:Class'")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            raise UserError(
                f"{self.what} '{path}': cannot import module '{module_name}' ({exc}); is it installed?"
            ) from exc
        except (Exception, SystemExit) as exc:  # a plugin's own bug at import time: report it, do not crash
            raise UserError(
                f"{self.what} '{path}': module '{module_name}' failed to import: {_import_failure(exc)}"
            ) from exc
        try:
            obj = getattr(module, attr)
        except AttributeError as exc:
            raise UserError(f"{self.what} '{path}': module '{module_name}' has no attribute '{attr}'") from exc
        return self._check(obj, f"{self.what} '{path}'")

    def resolve(self, name: str) -> type:
        """The class for a registered name or ``module:Class`` path; a ``UserError`` that says the fix otherwise."""
        if ":" in name:
            return self._import_path(name)
        eps = self.entry_points()
        ep = eps.get(name)
        if ep is None:
            known = ", ".join(sorted(eps)) or "none"
            raise UserError(
                f"unknown {self.what} '{name}'; registered: {known} "
                "(or give 'package.module:Class'; 'voicepipe plugins' lists them)"
            )
        try:
            obj: Any = ep.load()
        except (Exception, SystemExit) as exc:  # a broken plugin must be reported, not crash the caller
            raise UserError(
                f"{self.what} '{name}' ({ep.value}, from {_origin(ep)}) failed to import: {_import_failure(exc)}"
            ) from exc
        return self._check(obj, f"{self.what} '{name}' ({ep.value})")

    def list(self) -> list[RegisteredInfo]:
        """Every registered entry with where it came from; one that fails to load carries its error."""
        infos = []
        for name, ep in sorted(self.entry_points().items()):
            try:
                infos.append(RegisteredInfo(name, ep.value, _origin(ep), self.resolve(name)))
            except UserError as exc:
                infos.append(RegisteredInfo(name, ep.value, _origin(ep), None, str(exc)))
        return infos


STAGES = Registry(ENTRY_POINT_GROUP, "voicepipe.stage:Stage", "stage type", "type")
_ENGINES = {
    role: Registry(f"voicepipe.engines.{role}", "voicepipe.engine:Engine", f"{role} engine", "engine")
    for role in ENGINE_ROLES
}


def engine_registry(role: str) -> Registry:
    """The registry of engines for ``role`` (one of ``ENGINE_ROLES``)."""
    try:
        return _ENGINES[role]
    except KeyError:
        raise ValueError(f"engine role {role!r} is unknown; roles: {', '.join(ENGINE_ROLES)}") from None


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    """Registered stage entry points by name."""
    return STAGES.entry_points()


def resolve_stage(type_name: str) -> type:
    """The stage class for a type name or ``module:Class`` path."""
    return STAGES.resolve(type_name)


def resolve_engine(role: str, name: str) -> type:
    """The engine class registered as ``name`` for ``role`` (or a ``module:Class`` path), checked for its role."""
    cls = engine_registry(role).resolve(name)
    if getattr(cls, "role", None) != role:
        raise UserError(
            f"{role} engine '{name}' is a {getattr(cls, 'role', '?')} engine; "
            f"pick one of: {', '.join(engine_registry(role).names())}"
        )
    return cls


def list_stages() -> list[RegisteredInfo]:
    """Every registered stage with where it came from."""
    return STAGES.list()
