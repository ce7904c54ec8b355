"""The sink's half of a turn, written once for every audio sink (speaker, file): what was heard, and when it ended.

A reply ends at a sink, so the sink tells the rest of the pipeline two things:

- upstream, what the user has heard of the reply (``PlaybackFrame``; ``finished=True`` once per turn), so the LLM's
  history keeps only that, also after a barge-in;
- downstream, ``EndOfTurnFrame`` once the turn's audio is out (``interrupted=True`` after a barge-in).

A turn ends when its reply is complete and its audio heard (``LLMResponseEndFrame``), when the user interrupts it
(what already left for the device still counts as heard), or, without a report of its end, when the next turn's audio
starts. A ``turn_only`` interruption of another turn (one the VAD withdrew) leaves the playing reply alone. The
pipeline drops the interrupted reply's late audio before it gets here.

``AudioSink`` keeps that protocol; a subclass says only how audio gets out: ``play`` a block (and record it in
``heard`` once it was heard), ``drain`` until everything played is heard, ``stop`` at once. The speaker and the WAV
sink extend ``_start_turn``/``_end_turn`` for what only they do (the speaker's ``BotSpeakingFrame``).
"""

from __future__ import annotations

from voicepipe.audio.playback import HeardText
from voicepipe.frames import (
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction, Sink, StageConfig

__all__ = ["AudioSink"]


class AudioSink(Sink):
    """Base of the sinks that play or write reply audio (see the module docstring)."""

    def __init__(self, config: StageConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self.heard = HeardText()  # what has been heard of the current turn's reply
        self.turn = 0  # the turn whose audio is playing (or was written last)
        self.ended_turns: set[int] = set()

    # -- how audio gets out (subclasses) ---------------------------------------------------------------------------

    async def play(self, frame: TTSAudioFrame) -> None:
        """Play or write one block of the current turn; record it in ``heard`` once it has been heard."""
        raise NotImplementedError(f"{type(self).__name__}.play() is not implemented")

    async def drain(self) -> None:
        """Wait until every block given to ``play`` has been heard (and is in ``heard``). The default: at once."""

    async def stop(self) -> None:
        """Stop the output now (a barge-in); what was heard already stays in ``heard``. The default: nothing to do."""

    # -- the protocol -----------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSAudioFrame):
            if frame.turn_id != self.turn:
                if self.turn > 0 and self.turn not in self.ended_turns:  # the last reply never ended: end it now
                    await self._end_turn(self.turn, self.heard.text)
                self._start_turn(frame.turn_id)
            await self.play(frame)
            return  # audio ends here
        if isinstance(frame, LLMResponseEndFrame):
            await self._finish_turn(frame)
            return
        if isinstance(frame, InterruptionFrame):
            await self._interrupt(frame)
        elif isinstance(frame, EndFrame):
            await self.drain()
        await self.push(frame)

    def _start_turn(self, turn: int) -> None:
        """The first audio of ``turn`` arrived."""
        self.turn = turn
        self.heard.reset(turn)

    async def _end_turn(self, turn: int, heard: str) -> None:
        """Report ``turn`` heard in full (as far as it was): the one finished ``PlaybackFrame`` of the turn."""
        self.ended_turns.add(turn)
        await self.push(PlaybackFrame(text=heard, finished=True, turn_id=turn), Direction.UPSTREAM)

    async def _finish_turn(self, frame: LLMResponseEndFrame) -> None:
        """The reply is complete: once its audio has been heard, report it and end the turn."""
        turn = frame.turn_id
        if turn <= 0 or turn in self.ended_turns:
            await self.push(frame)
            return
        text = ""
        if turn == self.turn:
            await self.drain()
            text = self.heard.text
        await self._end_turn(turn, text)
        await self.push(frame)
        await self.push(EndOfTurnFrame(turn_id=turn, interrupted=frame.interrupted))

    async def _interrupt(self, interruption: InterruptionFrame) -> None:
        """Stop the reply being played and end its turn with what was heard of it."""
        turn = self.turn
        if interruption.turn_only and interruption.turn_id != turn:
            return  # another turn was withdrawn: this reply plays on
        await self.stop()
        if turn == 0 or turn in self.ended_turns:
            return
        await self._end_turn(turn, self.heard.text)
        await self.push(EndOfTurnFrame(turn_id=turn, interrupted=True))
