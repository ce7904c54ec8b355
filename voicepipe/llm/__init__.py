"""Chat engines behind one contract (``ChatEngine``): in-process models (``ChatModel``: llama.cpp, MLX, CoreML) and a
remote OpenAI-compatible server (``RemoteChat``).

Engines are registered in the entry-point group ``voicepipe.engines.llm`` and picked by the LLM stage's ``engine:``
(``voicepipe.registry``). Engine classes are imported lazily (``from voicepipe.llm import Qwen35LlamaCppChat`` imports
llama.cpp only then), so listing plugins and validating configs never pulls a heavy engine.
"""

from __future__ import annotations

import importlib
from typing import Any

from voicepipe.llm.base import ChatEngine, GenerationStats
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.llm.chat_model import ChatModel
from voicepipe.llm.sampling import ChatSamplingConfig

__all__ = [
    "ChatEngine",
    "ChatMessage",
    "ChatModel",
    "ChatSamplingConfig",
    "GenerationStats",
    "Qwen35MLXChat",
    "Qwen35LlamaCppChat",
    "Qwen35CoreMLChat",
    "RemoteChat",
]

_LAZY = {
    "Qwen35MLXChat": "voicepipe.llm.mlx",
    "Qwen35LlamaCppChat": "voicepipe.llm.llamacpp",
    "Qwen35CoreMLChat": "voicepipe.llm.coreml",
    "RemoteChat": "voicepipe.llm.remote",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'voicepipe.llm' has no attribute {name!r}")
