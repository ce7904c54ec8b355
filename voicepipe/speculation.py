"""The speculation gate: holds a speculative reply in front of the sink until the turn is confirmed.

An LLM stage may answer a provisional transcript before the user's turn has ended (LiveKit calls it preemptive
generation). Its reply frames flow through the chunker and the TTS like any other, so the audio is ready early; this
gate keeps them from the speaker. The protocol (``voicepipe.frames``):

- ``SpeculationStartFrame`` (data, in order, ahead of the reply): from here on, reply frames of that turn are held.
- ``SpeculationConfirmFrame`` (system, overtakes queued work): the held frames go out at once, later ones pass.
- ``SpeculationDiscardFrame`` (data, in order, behind the reply): the held frames are dropped.

Only ``ReplyFrame``s of the speculative turn are held; everything else passes. What the gate lets through of a
speculative turn's reply it sends as new frames of its own: observers see each frame once, where it was produced, and
for such a turn "reached the speaker" happens here (the metrics take its first audio from the gate). The pipeline puts a gate in front of
the sink by itself when a stage speculates (``Stage.speculates``), so no pipeline file has to name it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from voicepipe.frames import (
    CancelFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    ReplyFrame,
    SpeculationConfirmFrame,
    SpeculationDiscardFrame,
    SpeculationStartFrame,
)
from voicepipe.stage import Stage, StageConfig

__all__ = ["SpeculationGate"]

log = logging.getLogger("voicepipe.speculation")


class SpeculationGate(Stage):
    """Holds, releases or drops speculative replies (entry point ``speculation-gate``; see the module docstring)."""

    def __init__(self, config: StageConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name or "speculation-gate")
        self._held_id: int | None = None  # the speculation being held
        self._held_turn = 0
        self._held: list[Frame] = []
        self._confirmed_early: set[int] = set()  # confirmations that overtook their start marker
        self._release: asyncio.Task[None] | None = None  # pushes released frames, ahead of any later data
        self._speculative_turns: set[int] = set()  # turns whose reply goes out as the gate's own frames

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, SpeculationConfirmFrame):
            self._confirm(frame)  # system lane: at once, even while reply frames wait in the queues before us
            return
        if isinstance(frame, InterruptionFrame | CancelFrame):
            self._drop_all()
        if frame.is_system:
            await self.push(frame)
            return
        release = self._release
        if release is not None:
            await asyncio.wait([release])  # released frames go out before anything that arrived after them
            if self._release is release:
                self._release = None
        if isinstance(frame, SpeculationStartFrame):
            log.debug("%s: speculation %d of turn %d starts", self.name, frame.speculation, frame.turn_id)
            self._speculative_turns.add(frame.turn_id)
            if frame.speculation in self._confirmed_early:
                self._confirmed_early.discard(frame.speculation)
            else:
                self._held_id, self._held_turn, self._held = frame.speculation, frame.turn_id, []
        elif isinstance(frame, SpeculationDiscardFrame):
            self._confirmed_early.discard(frame.speculation)
            if frame.speculation == self._held_id:
                log.debug("%s: dropped %d frame(s) of speculation %d", self.name, len(self._held), frame.speculation)
                self._held_id, self._held = None, []
        elif self._held_id is not None and isinstance(frame, ReplyFrame) and frame.turn_id == self._held_turn:
            self._held.append(frame)
        else:
            await self._out(frame)

    def _confirm(self, frame: SpeculationConfirmFrame) -> None:
        log.debug("%s: speculation %d confirmed (holding %s)", self.name, frame.speculation, self._held_id)
        if frame.speculation != self._held_id:
            self._confirmed_early.add(frame.speculation)
            return
        held, self._held_id, self._held = self._held, None, []
        previous = self._release
        self._release = asyncio.get_running_loop().create_task(self._push_all(previous, held))

    async def _push_all(self, previous: asyncio.Task[None] | None, frames: list[Frame]) -> None:
        if previous is not None:
            await previous
        for frame in frames:
            await self._out(frame)

    async def _out(self, frame: Frame) -> None:
        """Push ``frame``; a speculative turn's reply as a new frame of the gate's (released to the speaker here)."""
        if isinstance(frame, ReplyFrame) and frame.turn_id in self._speculative_turns:
            if isinstance(frame, LLMResponseEndFrame):
                self._speculative_turns.discard(frame.turn_id)  # the turn's reply is complete
            frame = dataclasses.replace(frame)
        await self.push(frame)

    def _drop_all(self) -> None:
        if self._held_id is not None or self._confirmed_early:
            log.debug(
                "%s: interrupted: drops speculation %s, forgets %s", self.name, self._held_id, self._confirmed_early
            )
        self._held_id, self._held = None, []
        self._confirmed_early.clear()
        if self._release is not None:
            self._release.cancel()
            self._release = None
