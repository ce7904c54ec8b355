"""Chat models known to work with voicepipe, and how they were checked (shown by ``voicepipe plugins``).

Any GGUF chat model llama.cpp loads runs on the ``llamacpp`` engine with the chat template stored in its file; this
list says which ones were actually tried, on what, and what was seen, so nobody has to guess.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KnownModel", "KNOWN_CHAT_MODELS"]


@dataclass(frozen=True)
class KnownModel:
    name: str
    engines: str
    source: str
    checked: str


KNOWN_CHAT_MODELS: tuple[KnownModel, ...] = (
    KnownModel(
        "Qwen3.5-0.8B",
        "llamacpp, mlx, coreml",
        "Qwen/Qwen3.5-0.8B (the default)",
        "numerics equal transformers' on random checkpoints of the real architecture; own template, thinking control",
    ),
    KnownModel(
        "Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        "llamacpp",
        "any .gguf of it (model: path/to/file.gguf)",
        "spoken conversations in the test suite: true answers heard back, two-turn memory, barge-in",
    ),
    KnownModel(
        "Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
        "llamacpp",
        "any .gguf of it",
        "answers simple questions correctly with its stored ChatML template",
    ),
    KnownModel(
        "SmolLM2-135M-Instruct Q4_1",
        "llamacpp",
        "any .gguf of it",
        "runs with its stored template and stops at its end of turn; too small for reliable facts",
    ),
)
