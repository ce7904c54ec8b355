"""The memory governor's three pass-through stages (taps), one class per point where it acts::

    ... ASR -> BeforeLLMTap -> LLM -> AfterLLMTap -> chunker -> TTS -> AfterTTSTap -> sink

Each tap's ``setup()`` runs between its neighbours' (the pipeline's documented setup order), so the governor
measures what loading the LLM and the TTS added to the process. On frames, a tap forwards everything and tells the
governor, through its public methods only, when a turn starts, when the reply is written and when it is synthesized.
What the governor then decides and does is in ``voicepipe.memory.governor``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from voicepipe.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    MetricsFrame,
    TranscriptFrame,
    TTSAudioFrame,
)
from voicepipe.memory.records import ReloadFailed
from voicepipe.stage import Direction, Stage

if TYPE_CHECKING:
    from voicepipe.memory.governor import MemoryGovernor

__all__ = ["GovernorTap", "BeforeLLMTap", "AfterLLMTap", "AfterTTSTap"]


class GovernorTap(Stage):
    """Base of the taps: forwards every frame, logs a model that loaded or unloaded itself, and turns a model that
    cannot be loaded again into a fatal ``ErrorFrame`` (every later turn would fail the same way)."""

    where = "tap"

    def __init__(self, governor: MemoryGovernor) -> None:
        super().__init__(name=f"memory-{self.where}")
        self.governor = governor

    async def process(self, frame: Frame) -> None:
        self.governor.check_state(self.name)
        try:
            await self.handle(frame)
        except ReloadFailed as exc:
            # the pipeline stops and the CLI prints this one line
            await self.push(ErrorFrame(message=str(exc), stage=self.name, fatal=True, turn_id=frame.turn_id))

    async def handle(self, frame: Frame) -> None:
        await self.push(frame)

    def from_llm(self, frame: Frame) -> bool:
        """An error the LLM stage raised on a turn: that turn's reply will never end."""
        return isinstance(frame, ErrorFrame) and frame.stage == self.governor.llm_name


class BeforeLLMTap(GovernorTap):
    """Before the LLM: measures the process before the LLM loads; a final transcript starts a turn (sequential turns
    wait here for the models); an interruption gives them up."""

    where = "before-llm"

    async def setup(self) -> None:
        await self.governor.before_llm_loads()

    async def handle(self, frame: Frame) -> None:
        g = self.governor
        if isinstance(frame, TranscriptFrame) and not frame.final and g.mode == "sequential":
            return  # no speculative reply while the models take turns in memory
        if isinstance(frame, TranscriptFrame) and frame.final and frame.text.strip() and frame.turn_id > 0:
            await g.turn_starts(frame.turn_id)
        elif isinstance(frame, InterruptionFrame):
            g.interrupted()
        await self.push(frame)


class AfterLLMTap(GovernorTap):
    """After the LLM: measures its load; in sequential turns holds the reply until the LLM has finished it, been
    unloaded and the TTS loaded; holds frames going up to the LLM while it is unloaded (``flush_upstream`` sends them
    once it is back), so it never reloads itself behind the governor's back."""

    where = "after-llm"

    def __init__(self, governor: MemoryGovernor) -> None:
        super().__init__(governor)
        self._held: list[Frame] = []
        self._held_upstream: list[Frame] = []

    async def setup(self) -> None:
        await self.governor.after_llm_loaded()

    async def handle(self, frame: Frame) -> None:
        if isinstance(frame, InterruptionFrame):
            self._held.clear()  # the interrupted reply is not spoken
            await self.push(frame)
            return
        if self.from_llm(frame):
            self._held = [f for f in self._held if f.turn_id != frame.turn_id]  # that reply will never end
        if self.governor.mode != "sequential" or frame.is_system:
            await self.push(frame)
            return
        if isinstance(frame, EndFrame):
            await self._release()
            await self.push(frame)
            return
        if frame.turn_id <= 0:
            await self.push(frame)
            return
        self._held.append(frame)
        if isinstance(frame, LLMResponseEndFrame):
            await self.governor.reply_written(frame.turn_id)
            await self._release()

    async def _release(self) -> None:
        held, self._held = self._held, []
        for frame in held:
            await self.push(frame)

    async def process_upstream(self, frame: Frame) -> None:
        if self.governor.llm_parked:
            self._held_upstream.append(frame)
            return
        await self.push(frame, Direction.UPSTREAM)

    async def flush_upstream(self) -> None:
        """The LLM is loaded again: send it what waited (e.g. what the user heard of the last reply)."""
        held, self._held_upstream = self._held_upstream, []
        for frame in held:
            await self.push(frame, Direction.UPSTREAM)


class AfterTTSTap(GovernorTap):
    """After the TTS: measures its load and decides the policy; models playback; at the end of a synthesized reply
    lets the governor swap back (and reports the turn's memory numbers in a ``MetricsFrame``); stops the governor."""

    where = "after-tts"

    async def setup(self) -> None:
        await self.governor.after_tts_loaded()

    async def cleanup(self) -> None:
        await self.governor.stop()

    async def handle(self, frame: Frame) -> None:
        g = self.governor
        if self.from_llm(frame):
            g.turn_failed(frame.turn_id)
        if isinstance(frame, TTSAudioFrame):
            g.audio_out(frame)
        elif isinstance(frame, LLMResponseEndFrame) and frame.turn_id > 0:
            values = await g.reply_synthesized(frame.turn_id)
            await self.push(MetricsFrame(stage="memory", turn_id=frame.turn_id, values=values))
        await self.push(frame)
