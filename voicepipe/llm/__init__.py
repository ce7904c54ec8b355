"""Qwen3.5 chat engines behind one API (``ChatModel``), and ``load_chat`` to pick one.

Engine classes are imported lazily (``from voicepipe.llm import Qwen35LlamaCppChat`` imports llama.cpp only then), so
listing plugins and validating configs never pulls a heavy backend.
"""

from __future__ import annotations

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
