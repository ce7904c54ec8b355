"""Qwen3.5 chat engines behind one API (``ChatModel``), and ``load_chat`` to pick one.

Engine classes are imported lazily (``from voicepipe.llm import Qwen35LlamaCppChat`` imports llama.cpp only then), so
listing plugins and validating configs never pulls a heavy backend.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import platform
import sys
from typing import Any

from voicepipe.errors import UserError
from voicepipe.llm.base import ChatModel, ChatSamplingConfig, GenerationStats
from voicepipe.llm.chat_format import ChatMessage

__all__ = [
    "ChatMessage",
    "ChatModel",
    "ChatSamplingConfig",
    "GenerationStats",
    "Qwen35MLXChat",
    "Qwen35LlamaCppChat",
    "Qwen35CoreMLChat",
    "RemoteChat",
    "BACKENDS",
    "auto_backend",
    "load_chat",
    "check_options",
]

log = logging.getLogger("voicepipe.llm")

# backend name -> (module, class)
BACKENDS: dict[str, tuple[str, str]] = {
    "mlx": ("voicepipe.llm.mlx", "Qwen35MLXChat"),
    "llamacpp": ("voicepipe.llm.llamacpp", "Qwen35LlamaCppChat"),
    "coreml": ("voicepipe.llm.coreml", "Qwen35CoreMLChat"),
    "remote": ("voicepipe.llm.remote", "RemoteChat"),
}
_LAZY = {cls: (mod, cls) for mod, cls in BACKENDS.values()}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module, cls = _LAZY[name]
        return getattr(importlib.import_module(module), cls)
    raise AttributeError(f"module 'voicepipe.llm' has no attribute {name!r}")


def auto_backend() -> str:
    """MLX on Apple Silicon (Metal kernels), llama.cpp everywhere else (MLX's CPU path is ~20x slower there)."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mlx"
    return "llamacpp"


def load_chat(backend: str = "auto", model: str | None = None, **kwargs: Any) -> ChatModel:
    """Build a chat model: ``backend`` is ``auto``, ``mlx``, ``llamacpp``, ``coreml`` or ``remote``.

    ``model`` is the engine's ``from_pretrained`` source (a path, a repo id, or for ``remote`` the server URL); other
    keyword arguments go to ``from_pretrained`` as they are (e.g. ``quantization``, ``load``).
    """
    chosen = auto_backend() if backend == "auto" else backend
    if chosen not in BACKENDS:
        raise UserError(f"llm backend {backend!r} is unknown: use one of auto, {', '.join(BACKENDS)}")
    if backend == "auto":
        log.info("llm backend auto -> %s (%s %s)", chosen, sys.platform, platform.machine())
    else:
        log.info("llm backend %s", chosen)
    module, cls = BACKENDS[chosen]
    engine = getattr(importlib.import_module(module), cls)
    if model is not None:
        return engine.from_pretrained(model, **kwargs)
    return engine.from_pretrained(**kwargs)


def check_options(backend: str, options: dict[str, Any]) -> list[str]:
    """Problems with ``llm.options`` for ``backend``, found without loading anything: each option must be a keyword of
    the engine's ``from_pretrained`` (or of the constructor it forwards ``**kwargs`` to), of the annotated type."""
    import inspect
    import typing

    from pydantic import TypeAdapter, ValidationError

    chosen = auto_backend() if backend == "auto" else backend
    if chosen not in BACKENDS or not options:
        return []
    module, cls_name = BACKENDS[chosen]
    try:
        engine = getattr(importlib.import_module(module), cls_name)
    except ImportError:  # cannot inspect what is not installed; loading reports the missing extra
        return []
    params: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for fn in (engine.from_pretrained, engine.__init__):
        sig = inspect.signature(fn)
        with contextlib.suppress(Exception):  # annotations that cannot be resolved here are not type-checked
            hints = {**typing.get_type_hints(fn), **hints}
        params.update({n: p for n, p in sig.parameters.items() if n not in params and n not in ("self", "cls")})
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
            break
    known = sorted(n for n, p in params.items() if p.kind is p.KEYWORD_ONLY or p.kind is p.POSITIONAL_OR_KEYWORD)
    known = [n for n in known if n not in ("repo_or_path", "base_url", "load")]
    problems = []
    for name, value in options.items():
        if name not in known:
            problems.append(f"'{name}' is not an option of the {chosen} engine; known: {', '.join(known)}")
            continue
        hint = hints.get(name)
        if hint is None or hint is Any:
            continue
        try:
            TypeAdapter(hint).validate_python(value, strict=True)
        except ValidationError:
            shown = getattr(hint, "__name__", None) or str(hint).replace("typing.", "")
            problems.append(f"'{name}' must be {shown}, got {value!r}")
        except Exception:  # a type pydantic cannot check (an engine's own protocol): leave it to the engine
            continue
    return problems
