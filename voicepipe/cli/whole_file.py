"""``voicepipe transcribe --vad none``: a stage in the VAD's place that makes the whole file one turn.

It keeps the command one pipeline (source, this, ASR) whatever ``--vad`` says, instead of a second path that calls
the ASR engine by hand.
"""

from __future__ import annotations

import numpy as np

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.frames import AudioFrame, EndFrame, Frame, SpeechEndedFrame, SpeechStartedFrame, UserAudioFrame
from voicepipe.stage import Stage

__all__ = ["WholeFileTurn"]


class WholeFileTurn(Stage):
    """``--vad none``: the whole file is one turn, unless it is silence (no VAD guards against transcribing that)."""

    def __init__(self, *, name: str | None = None) -> None:
        super().__init__(name=name)
        self._blocks: list[np.ndarray] = []
        self._rate = SPEECH_SAMPLE_RATE

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            self._blocks.append(frame.pcm)
            self._rate = frame.sample_rate
            return
        if isinstance(frame, EndFrame):
            await self._one_turn()
        await self.push(frame)

    async def _one_turn(self) -> None:
        from voicepipe.asr.base import is_silent

        pcm = np.concatenate(self._blocks) if self._blocks else np.zeros(0, dtype=np.float32)
        self._blocks = []
        if is_silent(pcm):
            return
        turn, end = self.turns.next(), len(pcm) / self._rate
        await self.push(SpeechStartedFrame(turn_id=turn, audio_time=0.0))
        await self.push(SpeechEndedFrame(turn_id=turn, audio_time=end))
        await self.push(UserAudioFrame(pcm=pcm, sample_rate=self._rate, start_time=0.0, end_time=end, turn_id=turn))
