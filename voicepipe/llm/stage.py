"""The LLM pipeline stage: final transcript in, streamed reply tokens out, conversation history kept.

Speculative replies (``speculative: true``, the default): a provisional transcript (``TranscriptFrame(final=False)``,
sent when the user pauses) starts the reply at once, marked by ``SpeculationStartFrame`` so a gate before the sink
holds it (``voicepipe.speculation``). When the final transcript has the same words, a ``SpeculationConfirmFrame``
releases it; when the user goes on (``SpeechResumedFrame``) or says something else, it is cancelled, dropped
(``SpeculationDiscardFrame``) and rewound out of the model's state (``ChatEngine.rewind``), and the history never sees
it: a reply enters the history only once its turn is confirmed.

History keeps only what the user actually heard: a sink reports playback upstream (``PlaybackFrame``), and when a
barge-in cuts the reply, the assistant message becomes the heard prefix (or what was generated, when no sink reports
playback). After a reply has been heard in full, the finished conversation is prefilled in the background
(``ChatEngine.warm``), so the next turn prefills only the new user message; the system prompt is prefilled the same
way while the user speaks the first time, so the first turn does too.

The config holds the stage's own settings and the sampling settings (``ChatSamplingConfig``'s fields, flat); the
chosen engine's settings (``model``, ``n_ctx``, ``base_url``, ...) sit beside them and are validated by its ``Config``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import platform
import re
import sys
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from pydantic import Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from voicepipe.engine import Engine, EngineStageConfig
from voicepipe.errors import StageError, UserError
from voicepipe.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    PlaybackFrame,
    SpeculationConfirmFrame,
    SpeculationDiscardFrame,
    SpeculationStartFrame,
    SpeechResumedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
)
from voicepipe.llm.base import ChatEngine, GenerationStats
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.llm.sampling import ChatSamplingConfig
from voicepipe.stage import Direction, Stage

__all__ = ["LLMConfig", "LLMStage", "auto_engine"]

log = logging.getLogger("voicepipe.llm")
T = TypeVar("T")

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one to three short spoken sentences, without markdown or lists."
)


def auto_engine() -> str:
    """MLX on Apple Silicon (Metal kernels), llama.cpp everywhere else (MLX's CPU path is ~20x slower there)."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "mlx"
    return "llamacpp"


#: Keys of older pipeline files, and the fix each needs.
_RETIRED = {
    "backend": "'backend:' is now 'engine:'; write engine: {value}",
    "options": "'options:' is gone: write its keys ({keys}) beside 'engine:' in this stage",
}


class LLMConfig(EngineStageConfig, ChatSamplingConfig):
    """Settings of the LLM stage: its own, the sampling ones (``ChatSamplingConfig``), and the engine's beside them."""

    role: ClassVar[str] = "llm"

    engine: str = Field(
        "auto",
        description="The chat engine: auto (MLX on Apple Silicon, llama.cpp elsewhere), llamacpp, mlx, coreml, remote, "
        "or a registered plugin / 'package.module:Class'.",
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    max_history: int = Field(20, ge=2, description="Messages kept besides the system prompt.")
    warm_cache: bool = Field(
        True,
        description="Prefill the system prompt when the user first speaks, and the finished conversation after a reply.",
    )
    speculative: bool = Field(
        True, description="Start the reply when the user pauses; it is held until the turn ends with the same words."
    )
    retries: int = Field(2, ge=0, le=10, description="Tries again after a retryable failure before any reply text.")
    retry_backoff_s: float = Field(0.5, ge=0, le=60, description="Wait before the first retry; doubles each time.")
    # Declared only so that an older pipeline.yaml gets the fix at the line of the retired key.
    backend: SkipJsonSchema[Any] = Field(None, exclude=True, repr=False)
    options: SkipJsonSchema[Any] = Field(None, exclude=True, repr=False)

    @field_validator("backend", "options", mode="before")
    @classmethod
    def _retired(cls, value: Any, info: Any) -> None:
        if value is None:
            return None
        keys = ", ".join(map(str, value)) if isinstance(value, dict) and value else "each one"
        raise ValueError(_RETIRED[info.field_name].format(value=value, keys=keys))

    @classmethod
    def engine_class(cls, name: str) -> type[Engine]:
        """``auto`` is the engine that suits this machine (``auto_engine``); other names come from the registry."""
        if name == "auto":
            chosen = auto_engine()
            log.debug("llm engine auto -> %s (%s %s)", chosen, sys.platform, platform.machine())
            name = chosen
        return super().engine_class(name)


class LLMStage(Stage):
    """Replies to each final ``TranscriptFrame`` with ``LLMTokenFrame`` deltas and one ``LLMResponseEndFrame``.

    ``model`` may be given (a ready ``ChatEngine``, for tests and benchmarks); otherwise ``setup()`` builds the one the
    config names. Either is loaded in ``setup()``.
    """

    Config = LLMConfig
    config: LLMConfig
    holds_model = True

    def __init__(
        self, config: LLMConfig | None = None, *, name: str | None = None, model: ChatEngine | None = None
    ) -> None:
        super().__init__(config, name=name)
        self.model: ChatEngine | None = model
        self.history: list[ChatMessage] = []
        self._sampling = self.config.sampling()
        self._reply_index: int | None = None  # history index of the assistant message still being played
        self._heard: str | None = None  # what playback reported for that reply (None: no report)
        self._turn = 0
        self._before_turn: tuple[int, list[ChatMessage]] | None = None  # (turn, history before it was answered)
        self._background: set[asyncio.Task[None]] = set()
        self._speculation: _Speculation | None = None
        self._speculation_ids = itertools.count(1)
        #: Speculative replies cancelled because the user went on or said something else.
        self.discarded_speculations = 0

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        if self.model is None:
            engine = self.config.build_engine()
            if not isinstance(engine, ChatEngine):
                raise UserError(f"llm engine '{self.config.engine}' is not a ChatEngine (voicepipe.llm.base)")
            log.info("%s: llm engine %s", self.name, type(engine).__name__)
            self.model = engine
        await self.run_blocking(self.model.load)

    async def cleanup(self) -> None:
        if self._speculation is not None and self._speculation.task is not None:
            self._speculation.task.cancel()
        for task in list(self._background):
            task.cancel()
        if self.model is not None:
            await self.run_blocking(self.model.close)

    @property
    def speculates(self) -> bool:
        return self.config.speculative

    @property
    def memory_footprint(self) -> int:
        return self.model.memory_footprint if self.model is not None else 0

    @property
    def is_loaded(self) -> bool:
        return self.model is not None and self.model.is_loaded

    async def unload(self) -> None:
        if self.model is not None:
            await self.run_blocking(self.model.unload)

    async def load(self) -> None:
        if self.model is not None:
            await self.run_blocking(self.model.load)

    # -- frames ------------------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame):
            if not frame.text.strip():
                return
            if not frame.final:
                if self.config.speculative:
                    await self._speculate(frame)
            elif not await self._confirm(frame):
                await self._reply(frame)
            return
        if isinstance(frame, InterruptionFrame | CancelFrame):
            self._abandon_speculation()  # system lane: no waiting here; the gate drops what it held
            if isinstance(frame, InterruptionFrame):
                self._keep_only_heard()
        elif isinstance(frame, SpeechResumedFrame | EndFrame) or (
            isinstance(frame, SpeechStartedFrame)
            and self._speculation is not None
            and frame.turn_id != self._speculation.turn
        ):
            await self._discard_speculation()  # the user went on, a new turn began, or the input ended
        if isinstance(frame, SpeechStartedFrame):
            if frame.resumes_turn is not None:
                await self._forget_turn(frame.resumes_turn)
            self._warm_system_prompt()
        await self.push(frame)

    async def process_upstream(self, frame: Frame) -> None:
        if isinstance(frame, PlaybackFrame) and (not frame.turn_id or not self._turn or frame.turn_id == self._turn):
            self._heard = frame.text
            if frame.finished and self._reply_index is not None:
                self._reply_index = None  # heard in full: keep the whole reply
                self._warm()
        await self.push(frame, Direction.UPSTREAM)

    def messages(self) -> list[ChatMessage]:
        """What the model sees: the system prompt and the kept history."""
        return self._messages(self.history)

    async def _reply(self, frame: TranscriptFrame) -> None:
        self._begin_turn(frame.turn_id)
        history = self._with_question(frame.text)
        await self._settle_background()
        turn, parts = frame.turn_id, []
        await self._commit(history, parts, self._generate(turn, self._messages(history), parts))
        await self.push(LLMResponseEndFrame(text="".join(parts), turn_id=turn))
        await self._push_metrics(turn, self.model.last_stats)

    def _begin_turn(self, turn: int) -> None:
        # A new turn without a barge-in: the last reply plays on to the end, so history keeps all of it.
        self._reply_index, self._heard, self._turn = None, None, turn
        self._before_turn = (turn, list(self.history))

    async def _forget_turn(self, turn: int) -> None:
        """The VAD ended ``turn`` too early and the user went on: the new turn's audio holds its words, so neither
        its question nor its (dropped) reply stays in the history or in the model's state."""
        if self._before_turn is None or self._before_turn[0] != turn:
            return
        self.history, self._before_turn = self._before_turn[1], None
        self._reply_index, self._heard = None, None
        await self._settle_background()
        await self.run_blocking(self.model.rewind, self.messages())

    def _with_question(self, text: str) -> list[ChatMessage]:
        """The history this turn answers: the kept history plus the user's words (``self.history`` is untouched)."""
        return _trimmed(self.history + [ChatMessage("user", text.strip())], self.config.max_history)

    def _messages(self, history: list[ChatMessage]) -> list[ChatMessage]:
        """The system prompt and ``history``."""
        system = [ChatMessage("system", self.config.system_prompt)] if self.config.system_prompt else []
        return system + history

    async def _settle_background(self) -> None:
        if self._background:
            # A warm-up still running prefills exactly what this turn would prefill anyway: let it finish first.
            await asyncio.wait(set(self._background))

    async def _generate(self, turn: int, messages: list[ChatMessage], parts: list[str]) -> GenerationStats:
        """Stream the reply as ``LLMTokenFrame``s (collected in ``parts``); returns the generation's stats.

        A ``StageError`` marked retryable (a server that was not reachable, a connection dropped before any text) is
        tried again up to ``retries`` times with a doubling backoff; once text went out a retry would repeat words.
        """
        attempt = 0
        while True:
            attempt += 1
            try:
                async with contextlib.aclosing(self.model.agenerate_stream(messages, self._sampling)) as stream:
                    async for delta in stream:
                        parts.append(delta)
                        await self.push(LLMTokenFrame(text=delta, turn_id=turn))
                return self.model.last_stats
            except StageError as exc:
                if not exc.retryable or parts or attempt > self.config.retries:
                    raise
                delay = self.config.retry_backoff_s * 2 ** (attempt - 1)
                log.warning(
                    "%s: %s; trying again in %.1f s (%d/%d)", self.name, exc, delay, attempt, self.config.retries
                )
                await asyncio.sleep(delay)

    async def _commit(self, history: list[ChatMessage], parts: list[str], work: Awaitable[T]) -> T:
        """Await the reply's generation, then make ``history`` plus the reply the conversation.

        A failed reply leaves the history as it was (the question is forgotten, the pipeline goes on); an interrupted
        one keeps what was generated (``_keep_only_heard`` then cuts it to what was heard).
        """
        failed = True
        try:
            result = await work
            failed = False
        except asyncio.CancelledError:
            failed = False
            raise
        finally:
            if not failed:
                self.history = history + [ChatMessage("assistant", "".join(parts))]
                self._reply_index = len(self.history) - 1
        return result

    # -- speculative replies -----------------------------------------------------------------------------------------

    async def _speculate(self, frame: TranscriptFrame) -> None:
        """Start answering a provisional transcript; the reply is held before the sink until the turn is confirmed."""
        spec = self._speculation
        if spec is not None and spec.turn == frame.turn_id and _same_words(spec.text, frame.text):
            return  # already answering these words
        await self._discard_speculation()
        history = self._with_question(frame.text)
        await self._settle_background()
        spec = _Speculation(next(self._speculation_ids), frame.turn_id, frame.text, history)
        await self.push(SpeculationStartFrame(turn_id=spec.turn, speculation=spec.id))
        log.debug("%s: speculation %d answers turn %d: %r", self.name, spec.id, spec.turn, spec.text)
        spec.task = asyncio.get_running_loop().create_task(self._run_speculation(spec))
        self._speculation = spec

    async def _run_speculation(self, spec: _Speculation) -> Any:
        stats = await self._generate(spec.turn, self._messages(spec.history), spec.parts)
        spec.finished = True
        await self.push(LLMResponseEndFrame(text="".join(spec.parts), turn_id=spec.turn))
        return stats

    async def _confirm(self, frame: TranscriptFrame) -> bool:
        """The final transcript: if a speculation answered these words, release its reply and adopt it."""
        spec = self._speculation
        if spec is None or spec.turn != frame.turn_id or not _same_words(spec.text, frame.text):
            if spec is not None:
                log.debug(
                    "%s: turn %d ends with %r: speculation %d discarded", self.name, frame.turn_id, frame.text, spec.id
                )
            await self._discard_speculation()
            return False
        self._speculation = None
        assert spec.task is not None  # noqa: S101 - set right after creation
        await self.push(SpeculationConfirmFrame(turn_id=spec.turn, speculation=spec.id))
        self._begin_turn(spec.turn)
        stats = await self._commit(spec.history, spec.parts, spec.task)
        await self._push_metrics(spec.turn, stats, speculative=True)
        return True

    def _abandon_speculation(self) -> None:
        """Cancel the speculation at once (interruption, shutdown); its rewind runs in the background."""
        spec, self._speculation = self._speculation, None
        if spec is None or spec.task is None:
            return
        spec.task.cancel()
        self.discarded_speculations += 1
        task = asyncio.get_running_loop().create_task(self.run_blocking(self.model.rewind, self.messages()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _discard_speculation(self) -> None:
        """Cancel the speculation, drop its held reply downstream and every trace of it in the model's state."""
        spec, self._speculation = self._speculation, None
        if spec is None or spec.task is None:
            return
        spec.task.cancel()
        await asyncio.wait([spec.task])
        if not spec.task.cancelled() and spec.task.exception() is not None:
            log.debug("%s: discarded speculation %d had failed: %s", self.name, spec.id, spec.task.exception())
        if not spec.finished:  # the chunker must not keep its unfinished text
            await self.push(LLMResponseEndFrame(text="", interrupted=True, turn_id=spec.turn))
        await self.push(SpeculationDiscardFrame(turn_id=spec.turn, speculation=spec.id))
        self.discarded_speculations += 1
        await self.run_blocking(self.model.rewind, self.messages())

    async def _push_metrics(self, turn: int, stats: GenerationStats, *, speculative: bool = False) -> None:
        values = {
            "llm_prompt_tokens": float(stats.prompt_tokens),
            "llm_prefill_tokens": float(stats.prefill_tokens),
            "llm_cached_tokens": float(stats.cached_tokens),
            "llm_generated_tokens": float(stats.generated_tokens),
            "llm_decode_tokens_per_s": float(stats.decode_tokens_per_s),
            "llm_speculative": 1.0 if speculative else 0.0,
        }
        if stats.ttft_s is not None:
            values["llm_ttft_s"] = float(stats.ttft_s)
        await self.push(MetricsFrame(stage=self.name, values=values, turn_id=turn))

    def _keep_only_heard(self) -> None:
        """The reply being played was cut: keep the heard prefix in history (or drop a reply nobody heard)."""
        index, heard = self._reply_index, self._heard
        self._reply_index, self._heard = None, None
        if index is None or index >= len(self.history) or heard is None:
            return  # no playback report: history keeps what was emitted
        if heard.strip():
            self.history[index] = ChatMessage("assistant", heard)
        else:
            del self.history[index]
        log.debug("%s: reply cut by barge-in; history keeps %d heard chars", self.name, len(heard))
        self._warm()

    def _warm(self) -> None:
        """Prefill the finished conversation in the background (see ``ChatEngine.warm``)."""
        if not self.config.warm_cache or self.model is None or not self.history:
            return
        self._start_warm(self.messages())

    def _warm_system_prompt(self) -> None:
        """The user started speaking and nothing has been said yet: prefill the system prompt meanwhile, so the first
        turn prefills only its own message, like every later one.

        Not in ``setup``: a memory governor measures what loading the model adds, not its working buffers; and not
        while a governor has the model unloaded (warming would load it behind the governor's back).
        """
        if not self.config.warm_cache or self.model is None or self.history or not self.model.is_loaded:
            return
        if messages := self.messages():  # a cached prompt makes this a lookup, so every fresh turn may ask
            self._start_warm(messages)

    def _start_warm(self, messages: list[ChatMessage]) -> None:
        task = asyncio.get_running_loop().create_task(self._run_warm(messages))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_warm(self, messages: list[ChatMessage]) -> None:
        try:
            await self.run_blocking(self.model.warm, messages)
        except Exception as exc:  # only an optimisation: the next turn prefills more, nothing else changes
            log.warning("%s: warming the prompt cache failed: %s", self.name, exc)


@dataclass
class _Speculation:
    """A reply started on a provisional transcript (see ``LLMStage._speculate``)."""

    id: int
    turn: int
    text: str  # the provisional transcript it answers
    history: list[ChatMessage]  # the conversation it answers (the kept history plus ``text``)
    parts: list[str] = field(default_factory=list)
    task: asyncio.Task[Any] | None = None
    finished: bool = False  # its LLMResponseEndFrame went out


def _same_words(a: str, b: str) -> bool:
    """Transcripts that differ only in case, spacing or punctuation say the same thing (as LiveKit compares them)."""
    return _words(a) == _words(b)


def _words(text: str) -> list[str]:
    return re.sub(r"[^\w\s']", " ", text.lower()).split()


def _trimmed(history: list[ChatMessage], max_history: int) -> list[ChatMessage]:
    """``history`` within ``max_history`` messages, starting with a user message.

    Dropping the oldest messages changes the prompt's prefix, so the prompt cache cannot serve the next turn.
    Trimming one turn at a time would make every turn past the window a full prefill; trimming down to half the
    window makes that one turn in every max_history / 4.
    """
    if len(history) > max_history:
        history = history[len(history) - max_history // 2 :]
    while history and history[0].role != "user":
        history = history[1:]
    return history
