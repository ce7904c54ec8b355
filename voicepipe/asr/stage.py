"""The ASR stage: user audio in, one final transcript per turn out (nothing for noise or hallucinations).

Early transcription: a provisional ``UserAudioFrame(final=False)`` (sent by the VAD when a pause begins) starts a
transcription in the background, whose text goes out at once as ``TranscriptFrame(final=False)`` (an LLM may start a
speculative reply on it). When the final segment arrives and is the same audio (the user did not resume), that
result is committed, so the hangover overlaps with Whisper; otherwise (``SpeechResumedFrame``, or other audio) it is
discarded and the final is transcribed. User audio frames are consumed; every other frame is forwarded.

Speed of the first transcript: ``setup()`` transcribes a second of silence once (``warm_up``), as the TTS stage
speaks a phrase, so the user's first turn does not pay for the engine's first run (faster-whisper tiny.en: ~30 ms
of a ~290 ms first transcription, in fresh processes).
"""

from __future__ import annotations

import asyncio
import time
from typing import ClassVar

import numpy as np
from pydantic import Field

from voicepipe.asr.base import ASREngine, Transcription
from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.engine import EngineStageConfig
from voicepipe.frames import (
    CancelFrame,
    EndFrame,
    Frame,
    MetricsFrame,
    SpeechEndedFrame,
    SpeechResumedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
    UserAudioFrame,
)
from voicepipe.stage import Stage

__all__ = ["ASRStage", "ASRConfig"]


class ASRConfig(EngineStageConfig):
    """``asr`` stage settings (pipeline.yaml); the engine's own settings (``model``, ``language``...) sit beside them."""

    role: ClassVar[str] = "asr"

    engine: str = Field("faster-whisper", description="ASR engine: faster-whisper, mlx-whisper, or module:Class")
    early_transcription: bool = Field(True, description="transcribe at each pause, before the turn has ended")
    warm_up: bool = Field(
        True, description="Transcribe a second of silence once at start-up so the first turn is fast."
    )


def _audio_key(frame: UserAudioFrame) -> tuple[int, float, float, int]:
    return (frame.turn_id, round(frame.start_time, 4), round(frame.end_time, 4), len(frame.pcm))


class ASRStage(Stage):
    """Whisper speech recognition (entry point ``asr``), faster-whisper or mlx-whisper."""

    Config = ASRConfig
    config: ASRConfig
    holds_model = True

    def __init__(self, config: ASRConfig | None = None, *, name: str | None = None, engine: ASREngine | None = None):
        """Cheap: the engine is built in ``setup`` (``engine``: a ready one to use instead, for tests and benchmarks)."""
        super().__init__(config, name=name)
        self.engine = engine
        self._provisional: tuple[tuple[int, float, float, int], asyncio.Future[Transcription]] | None = None
        self._speech_end: dict[int, float] = {}

    async def setup(self) -> None:
        await self.load()
        if self.config.warm_up:
            await self.run_blocking(self.engine.transcribe, np.zeros(SPEECH_SAMPLE_RATE, dtype=np.float32))

    async def cleanup(self) -> None:
        self._drop_provisional()

    # -- memory governor hooks ----------------------------------------------------------------------------------

    @property
    def memory_footprint(self) -> int:
        return self.engine.memory_footprint if self.engine is not None else 0

    @property
    def is_loaded(self) -> bool:
        return self.engine is not None and self.engine.is_loaded

    async def unload(self) -> None:
        self._drop_provisional()
        if self.engine is not None:
            await self.run_blocking(self.engine.unload)

    async def load(self) -> None:
        if self.engine is None:
            self.engine = self.config.build_engine()
        await self.run_blocking(self.engine.load)

    # -- frames ---------------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserAudioFrame):
            if frame.final:
                await self._finish(frame)
            elif self.config.early_transcription:
                self._start_provisional(frame)
            return
        if isinstance(frame, SpeechStartedFrame | SpeechResumedFrame):
            self._drop_provisional()
            self._speech_end = {t: v for t, v in self._speech_end.items() if t >= frame.turn_id - 1}
        elif isinstance(frame, SpeechEndedFrame) and frame.speech_end_timestamp is not None:
            self._speech_end[frame.turn_id] = frame.speech_end_timestamp
        elif isinstance(frame, (EndFrame, CancelFrame)):
            self._drop_provisional()
        await self.push(frame)

    def _start_provisional(self, frame: UserAudioFrame) -> None:
        self._drop_provisional()
        task = asyncio.ensure_future(self._transcribe_provisional(frame))
        self._provisional = (_audio_key(frame), task)

    async def _transcribe_provisional(self, frame: UserAudioFrame) -> Transcription:
        result = await self.run_blocking(self.engine.transcribe, frame.pcm)
        if result.text:
            await self.push(
                TranscriptFrame(turn_id=frame.turn_id, text=result.text, final=False, language=result.language)
            )
        return result

    def _drop_provisional(self) -> None:
        if self._provisional is not None:
            _, task = self._provisional
            task.cancel()  # never started: it will not run; running: its result is ignored
            self._provisional = None

    async def _finish(self, frame: UserAudioFrame) -> None:
        early_hit = self._provisional is not None and self._provisional[0] == _audio_key(frame)
        if early_hit:
            task = self._provisional[1]
            self._provisional = None
            result = await task
        else:
            self._drop_provisional()
            result = await self.run_blocking(self.engine.transcribe, frame.pcm)
        done = time.monotonic()
        values = {
            "asr_seconds": result.seconds,
            "audio_seconds": frame.duration,
            "rtf": result.seconds / max(frame.duration, 1e-6),
            "early_hit": 1.0 if early_hit else 0.0,
            "rejected": 0.0 if result.text else 1.0,
        }
        speech_end = self._speech_end.pop(frame.turn_id, None)
        if speech_end is not None:
            values["speech_end_to_transcript_s"] = done - speech_end
        if result.text:
            await self.push(
                TranscriptFrame(turn_id=frame.turn_id, text=result.text, final=True, language=result.language)
            )
        await self.push(MetricsFrame(turn_id=frame.turn_id, stage=self.name, values=values))
