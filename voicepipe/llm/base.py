"""``ChatEngine``: what the LLM stage needs from a chat model, whether it runs here or behind a server.

Every chat engine is an ``Engine`` (``voicepipe.engine``: a ``Config``, a cheap constructor, ``load``/``unload``,
``is_loaded``, ``memory_footprint``, ``cancel``) with the calls below. Two kinds implement it:

- ``ChatModel`` (``voicepipe.llm.chat_model``): a model run in this process; an engine subclass writes only the
  token-level hooks (llama.cpp, MLX, CoreML), and gets prompts, thinking, streaming and the prompt cache from it.
- ``RemoteChat`` (``voicepipe.llm.remote``): an OpenAI-compatible server that owns the weights and its own cache.

``warm``, ``rewind`` and ``reset_state`` concern state kept between turns; an engine that keeps none (a server)
inherits the defaults here, which have nothing to do.
"""

from __future__ import annotations

import abc
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import ValidationError

from voicepipe.engine import Engine
from voicepipe.errors import UserError
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.llm.sampling import ChatSamplingConfig

__all__ = ["ChatEngine", "ChatMessage", "ChatSamplingConfig", "GenerationStats"]


@dataclass
class GenerationStats:
    """What the last reply cost. ``cached_tokens`` came from the live state or a snapshot, ``prefill_tokens`` were
    computed; ``first_token_s`` is the time from the call to the first sampled token, ``ttft_s`` to the first answer
    text (later when the reply starts with a think block)."""

    prompt_tokens: int = 0
    cached_tokens: int = 0
    prefill_tokens: int = 0
    generated_tokens: int = 0
    thinking_tokens: int = 0
    forced_think_close: bool = False
    stop_reason: str = ""
    prefill_s: float = 0.0
    first_token_s: float | None = None
    ttft_s: float | None = None
    total_s: float = 0.0
    _start: float = field(default_factory=time.perf_counter, repr=False)

    @property
    def decode_tokens_per_s(self) -> float:
        decode_s = self.total_s - self.prefill_s
        return (self.generated_tokens - 1) / decode_s if self.generated_tokens > 1 and decode_s > 0 else 0.0


class ChatEngine(Engine):
    """A chat model: streams a reply to a conversation. Blocking calls run on the caller's thread (a stage's worker);
    ``agenerate_stream`` is the one async call, since a reply is consumed token by token on the event loop."""

    role: ClassVar[str] = "llm"
    #: The ``Config`` field ``from_pretrained``'s first argument fills (where the model comes from).
    source_field: ClassVar[str] = "model"

    #: What the last reply cost (set when a reply starts).
    last_stats: GenerationStats
    #: Think text of the last reply (never part of the result or the stream).
    last_thinking: str

    def __init__(self, config: Any = None) -> None:
        super().__init__(config)
        self.last_stats = GenerationStats()
        self.last_thinking = ""

    @classmethod
    def from_pretrained(cls, source: str | Path | None = None, /, *, load: bool = True, **fields: Any) -> Self:
        """The engine for ``source`` (the ``Config``'s ``source_field``) and other ``Config`` fields; loaded unless
        ``load=False``. Keywords that are not ``Config`` fields go to the constructor (e.g. a test's runtime).
        A field that does not fit is one ``UserError`` line naming it."""
        if source is not None:
            fields[cls.source_field] = str(source)
        extra = {k: fields.pop(k) for k in list(fields) if k not in cls.Config.model_fields}
        try:
            config = cls.Config(**fields)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or cls.source_field}: {e.get('ctx', {}).get('error') or e['msg']}"
                for e in exc.errors()
            )
            raise UserError(f"{cls.__name__}: {problems}") from exc
        engine = cls(config, **extra)
        if load:
            engine.load()
        return engine

    # -- replies -----------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def generate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> Iterator[str]:
        """Text deltas of the reply as they are generated; none contains think text."""

    @abc.abstractmethod
    def agenerate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> AsyncIterator[str]:
        """The async twin of ``generate_stream``; closing it (``contextlib.aclosing``) stops the reply at once."""

    def generate(self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None) -> str:
        """The whole reply (think text excluded; see ``last_thinking``)."""
        return "".join(self.generate_stream(messages, sampling))

    # -- state kept between turns (none by default) ------------------------------------------------------------------

    def warm(self, messages: Sequence[ChatMessage]) -> None:
        """Prefill the finished conversation ``messages`` so the next turn starts sooner (optional; default: nothing
        to prefill)."""

    def rewind(self, messages: Sequence[ChatMessage]) -> None:
        """Forget every state beyond the finished conversation ``messages`` (a discarded reply); default: none kept."""

    def reset_state(self) -> None:
        """Forget the conversation; default: none kept."""

    def close(self) -> None:
        """Unload and release what the engine holds (its thread, its connections)."""
        self.unload()
