"""Guarded imports of optional backends: the error names the pip extra that provides the module."""

from __future__ import annotations

import importlib
from types import ModuleType

from voicepipe.errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str, purpose: str | None = None) -> ModuleType:
    """Import ``module`` or raise a ``MissingDependencyError`` saying ``pip install 'voicepipe[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        what = purpose or module
        raise MissingDependencyError(
            f"{what} needs the '{extra}' extra, which is not installed ({exc}); "
            f"install it with: pip install 'voicepipe[{extra}]'"
        ) from exc
