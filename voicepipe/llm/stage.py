"""The LLM pipeline stage: final transcript in, streamed reply tokens out, conversation history kept.

History keeps only what the user actually heard: a sink reports playback upstream (``PlaybackFrame``), and when a
barge-in cuts the reply, the assistant message becomes the heard prefix (or what was generated, when no sink reports
playback). After a reply has been heard in full, the finished conversation is prefilled in the background
(``ChatModel.warm``), so the next turn prefills only the new user message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any, Literal

from pydantic import Field, model_validator

from voicepipe.frames import (
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    PlaybackFrame,
    TranscriptFrame,
)
from voicepipe.llm.base import ChatSamplingConfig
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.stage import Direction, Stage, StageConfig

__all__ = ["LLMConfig", "LLMStage"]

log = logging.getLogger("voicepipe.llm")

DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one to three short spoken sentences, without markdown or lists."
)


class LLMConfig(StageConfig):
    backend: Literal["auto", "mlx", "llamacpp", "coreml", "remote"] = Field(
        "auto", description="auto = MLX on Apple Silicon, llama.cpp elsewhere."
    )
    model: str | None = Field(
        None, description="A path, a Hugging Face repo (or repo + options.filename), or for remote the server URL."
    )
    quantization: str | None = Field(
        "default", description="Engine quantization (llama.cpp: q4_k_m, q4_0, q8_0, bf16, f32; MLX: int4, int8)."
    )
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    temperature: float = Field(0.6, ge=0, le=100)
    top_k: int = Field(50, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, ge=1)
    repetition_penalty: float = Field(1.1, gt=0, le=10)
    disable_thinking: bool = Field(True, description="Voice replies should start at once: no think block.")
    max_thinking_tokens: int = Field(100, ge=0)
    seed: int | None = Field(None, ge=0)
    max_history: int = Field(20, ge=2, description="Messages kept besides the system prompt.")
    warm_cache: bool = Field(True, description="Prefill the finished conversation while the user is silent.")
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for from_pretrained.")

    @model_validator(mode="after")
    def _options_fit_the_engine(self) -> LLMConfig:
        from voicepipe.llm import check_options

        problems = check_options(self.backend, self.options)
        if problems:
            raise ValueError("options: " + "; ".join(problems))
        return self

    def sampling(self) -> ChatSamplingConfig:
        return ChatSamplingConfig(
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            max_tokens=self.max_tokens,
            repetition_penalty=self.repetition_penalty,
            disable_thinking=self.disable_thinking,
            max_thinking_tokens=self.max_thinking_tokens,
            seed=self.seed,
        )


class LLMStage(Stage):
    """Replies to each final ``TranscriptFrame`` with ``LLMTokenFrame`` deltas and one ``LLMResponseEndFrame``.

    ``model`` may be given (any chat engine: ``ChatModel`` or ``RemoteChat``); otherwise ``setup()`` builds one from
    the config with ``voicepipe.llm.load_chat``.
    """

    Config = LLMConfig
    config: LLMConfig
    holds_model = True

    def __init__(self, config: LLMConfig | None = None, *, name: str | None = None, model: Any = None) -> None:
        super().__init__(config, name=name)
        self.model = model
        self.history: list[ChatMessage] = []
        self._sampling = self.config.sampling()
        self._reply_index: int | None = None  # history index of the assistant message still being played
        self._heard: str | None = None  # what playback reported for that reply (None: no report)
        self._turn = 0
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        if self.model is None:
            from voicepipe.llm import load_chat

            kwargs = dict(self.config.options)
            if self.config.quantization != "default":
                kwargs["quantization"] = self.config.quantization
            if self.config.backend != "remote":
                kwargs["load"] = False  # load on the model's own thread below
            self.model = await self.run_blocking(load_chat, self.config.backend, self.config.model, **kwargs)
        await self.model.aload()

    async def cleanup(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self.model is not None:
            await self.run_blocking(self.model.close)

    @property
    def memory_footprint(self) -> int:
        return self.model.memory_footprint if self.model is not None else 0

    @property
    def is_loaded(self) -> bool:
        return self.model is not None and self.model.is_loaded

    async def unload(self) -> None:
        if self.model is not None:
            await self.model.aunload()

    async def load(self) -> None:
        if self.model is not None:
            await self.model.aload()

    # -- frames ------------------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame):
            if frame.final and frame.text.strip():
                await self._reply(frame)
            return
        if isinstance(frame, InterruptionFrame):
            self._keep_only_heard()
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
        system = [ChatMessage("system", self.config.system_prompt)] if self.config.system_prompt else []
        return system + self.history

    async def _reply(self, frame: TranscriptFrame) -> None:
        # A new turn without a barge-in: the last reply plays on to the end, so history keeps all of it.
        self._reply_index, self._heard, self._turn = None, None, frame.turn_id
        self.history.append(ChatMessage("user", frame.text.strip()))
        self._trim_history()
        turn, parts = frame.turn_id, []
        if self._background:
            # A warm-up still running prefills exactly what this turn would prefill anyway: let it finish first.
            await asyncio.wait(set(self._background))
        failed = True
        try:
            async with contextlib.aclosing(self.model.agenerate_stream(self.messages(), self._sampling)) as stream:
                async for delta in stream:
                    parts.append(delta)
                    await self.push(LLMTokenFrame(text=delta, turn_id=turn))
            failed = False
        except asyncio.CancelledError:
            failed = False  # interrupted: the partial reply was emitted and stays (see _keep_only_heard)
            raise
        finally:
            if failed:
                self.history.pop()  # the turn failed: forget the question, the pipeline goes on
            else:
                self.history.append(ChatMessage("assistant", "".join(parts)))
                self._reply_index = len(self.history) - 1
        text = "".join(parts)
        await self.push(LLMResponseEndFrame(text=text, turn_id=turn))
        await self._push_metrics(turn)

    async def _push_metrics(self, turn: int) -> None:
        stats = getattr(self.model, "last_stats", None)
        if stats is None:
            return
        values = {
            "llm_prompt_tokens": float(stats.prompt_tokens),
            "llm_prefill_tokens": float(stats.prefill_tokens),
            "llm_cached_tokens": float(stats.cached_tokens),
            "llm_generated_tokens": float(stats.generated_tokens),
            "llm_decode_tokens_per_s": float(stats.decode_tokens_per_s),
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

    def _trim_history(self) -> None:
        # Dropping the oldest messages changes the prompt's prefix, so the prompt cache cannot serve the next turn.
        # Trimming one turn at a time would make every turn past the window a full prefill; trimming down to half
        # the window makes that one turn in every max_history / 4.
        if len(self.history) > self.config.max_history:
            del self.history[: len(self.history) - self.config.max_history // 2]
        while self.history and self.history[0].role != "user":
            del self.history[0]

    def _warm(self) -> None:
        """Prefill the finished conversation on the model's thread, in the background (see ``ChatModel.warm``)."""
        if not self.config.warm_cache or not hasattr(self.model, "awarm") or not self.history:
            return
        task = asyncio.get_running_loop().create_task(self._run_warm(self.messages()))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _run_warm(self, messages: list[ChatMessage]) -> None:
        try:
            await self.model.awarm(messages)
        except Exception as exc:  # only an optimisation: the next turn prefills more, nothing else changes
            log.warning("%s: warming the prompt cache failed: %s", self.name, exc)
