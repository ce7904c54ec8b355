"""The VAD stage: AudioFrames in (any rate, any channel count), speech events and user audio out.

Per turn it emits ``SpeechStartedFrame`` (with a new turn id: the barge-in signal), ``UserAudioFrame(final=False)``
after ``early_ms`` of a pause (early transcription), ``SpeechResumedFrame`` if the user then goes on, then
``SpeechEndedFrame`` and ``UserAudioFrame(final=True)``, all with that turn id. AudioFrames are consumed; every other
frame is forwarded.

End of turn (``end_of_turn``): with ``smart-turn`` (the default) the Smart Turn v3 model is asked once per pause, after
``pause_ms`` of silence, whether the utterance is finished (Whisper has been transcribing the same audio since
``early_ms``, so the transcript is close behind); if it is, the turn ends there (``SpeechEndedFrame.predicted``),
otherwise the stage keeps listening up to ``hangover_ms``. If the user goes on before the hangover would have ended a
turn the model ended, the stage sends an ``InterruptionFrame`` for that turn (its reply is dropped) and a new turn
whose audio contains it (``SpeechStartedFrame.resumes_turn``). With ``hangover``, or when the model cannot be had (one
warning), only the hangover ends a turn.
"""

from __future__ import annotations

import collections
import logging
import time
from typing import ClassVar, Literal

import numpy as np
from pydantic import Field, model_validator

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE, StreamResampler, to_mono
from voicepipe.cores import schedule
from voicepipe.engine import EngineStageConfig
from voicepipe.errors import UserError
from voicepipe.frames import (
    AudioFrame,
    CancelFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    MetricsFrame,
    SpeechEndedFrame,
    SpeechResumedFrame,
    SpeechStartedFrame,
    UserAudioFrame,
)
from voicepipe.stage import Stage
from voicepipe.vad.base import VADEngine
from voicepipe.vad.segmenter import (
    EndCheck,
    Event,
    Pause,
    Resume,
    Segment,
    Segmenter,
    SegmenterConfig,
    SpeechEnd,
    SpeechStart,
)

__all__ = ["VADStage", "VADConfig"]

log = logging.getLogger("voicepipe.vad")


class VADConfig(EngineStageConfig):
    """``vad`` stage settings (pipeline.yaml); the engine's own settings (``aggressiveness``...) sit beside them."""

    role: ClassVar[str] = "vad"

    engine: str = Field("webrtc", description="VAD engine: webrtc (fast), silero (robust to noise), or module:Class")
    threshold: float = Field(0.5, gt=0.0, le=1.0, description="speech probability that counts as voiced")
    start_ms: int = Field(90, ge=0, description="voiced audio needed before speech counts as started")
    hangover_ms: int = Field(500, gt=0, description="silence that ends a turn")
    pause_ms: int = Field(200, gt=0, description="silence after which the end-of-turn model is asked")
    early_ms: int = Field(
        10,
        gt=0,
        description="silence after which transcription starts early, before the turn has ended (<= pause_ms; "
        "10: one webrtcvad frame)",
    )
    preroll_ms: int = Field(300, ge=0, description="audio kept before the onset so the first word is not clipped")
    min_speech_ms: int = Field(250, ge=0, description="shorter segments are dropped")
    max_segment_s: float = Field(15.0, gt=1.0, description="longer speech is split")
    early_transcription: bool = True
    end_of_turn: Literal["smart-turn", "hangover"] = Field(
        "smart-turn", description="smart-turn: a model ends a finished utterance at the pause; hangover: silence only"
    )
    end_of_turn_threshold: float = Field(
        0.5, gt=0.0, lt=1.0, description="Smart Turn probability above which the turn counts as finished"
    )
    smart_turn_model: str | None = Field(
        None, description="local Smart Turn v3 .onnx; default: fetched once from the pipecat-ai wheel on PyPI"
    )
    smart_turn_threads: int = Field(1, ge=1, description="onnxruntime threads for Smart Turn")

    @model_validator(mode="after")
    def _timings(self) -> VADConfig:
        self.segmenter_config().check()
        return self

    def segmenter_config(self) -> SegmenterConfig:
        return SegmenterConfig(
            threshold=self.threshold,
            start_ms=self.start_ms,
            hangover_ms=self.hangover_ms,
            pause_ms=self.pause_ms,
            early_ms=self.early_ms,
            preroll_ms=self.preroll_ms,
            min_speech_ms=self.min_speech_ms,
            max_segment_s=self.max_segment_s,
            early=self.early_transcription,
            end_check=self.end_of_turn == "smart-turn",
        )


class VADStage(Stage):
    """Segments microphone audio into user turns with webrtcvad or Silero (entry point ``vad``)."""

    Config = VADConfig
    config: VADConfig

    def __init__(self, config: VADConfig | None = None, *, name: str | None = None, engine: VADEngine | None = None):
        """``engine``: a ready engine to use instead of building the configured one (tests, benchmarks)."""
        super().__init__(config, name=name)
        self.engine = engine

    async def setup(self) -> None:
        if self.engine is None:
            self.engine = self.config.build_engine()
        await self.run_blocking(self.engine.load)
        self._segmenter = Segmenter(self.engine, self.config.segmenter_config())
        self._resampler = StreamResampler(SPEECH_SAMPLE_RATE)
        self._fed = 0  # samples at 16 kHz handed to the segmenter
        # (stream position after a frame, monotonic arrival time of that frame): maps a sample to when it arrived
        self._arrivals: collections.deque[tuple[int, float]] = collections.deque()
        self._turn_id = 0
        self._eot_probability: float | None = None
        self.end_of_turn_model = None
        if self.config.end_of_turn == "smart-turn":
            from voicepipe.vad.smart_turn import SmartTurn

            model = SmartTurn(self.config.smart_turn_model, threads=self.config.smart_turn_threads)
            try:
                await self.run_blocking(model.load)
                self.end_of_turn_model = model
            except UserError as exc:
                log.warning(
                    "%s: end_of_turn smart-turn unavailable, using the %d ms hangover: %s",
                    self.name,
                    self.config.hangover_ms,
                    exc,
                )

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            pcm = self._resample(frame)
            self._note_arrival(len(pcm), frame.timestamp)
            await self._emit(await self.run_blocking(self._segmenter.feed, pcm))
            return
        if isinstance(frame, EndFrame):
            pcm = self._resampler.flush()
            if len(pcm):
                if self._arrivals:
                    self._note_arrival(len(pcm), self._arrivals[-1][1])
                await self._emit(await self.run_blocking(self._segmenter.feed, pcm))
            await self._emit(await self.run_blocking(self._segmenter.flush))
        elif isinstance(frame, CancelFrame):
            self._segmenter.reset()
        await self.push(frame)

    # -- audio in -------------------------------------------------------------------------------------------------

    def _resample(self, frame: AudioFrame) -> np.ndarray:
        """Mono, then 16 kHz through one soxr stream (stateful, so block edges leave no clicks)."""
        return self._resampler(to_mono(np.asarray(frame.pcm, dtype=np.float32)), frame.sample_rate)

    def _note_arrival(self, samples: int, timestamp: float) -> None:
        self._fed += samples
        self._arrivals.append((self._fed, timestamp))
        horizon = self._fed - int((self.config.max_segment_s + 2) * SPEECH_SAMPLE_RATE)
        while len(self._arrivals) > 1 and self._arrivals[0][0] < horizon:
            self._arrivals.popleft()

    def _arrival_time(self, stream_time: float) -> float | None:
        """Monotonic time at which the sample at ``stream_time`` seconds arrived."""
        sample = int(round(stream_time * SPEECH_SAMPLE_RATE))
        for end, timestamp in self._arrivals:
            if end >= sample:
                return timestamp
        return self._arrivals[-1][1] if self._arrivals else None

    # -- events out -----------------------------------------------------------------------------------------------

    async def _emit(self, events: list[Event]) -> None:
        for index, event in enumerate(events):
            if isinstance(event, SpeechStart):
                resumed = self._turn_id if event.resumed else None
                if resumed is not None:  # the predicted end was wrong: drop the reply it started
                    reason = "the user went on after a predicted end"
                    await self.push(InterruptionFrame(reason=reason, turn_id=resumed, turn_only=True))
                self._turn_id = self.turns.next()
                self._eot_probability = None
                await self.push(
                    SpeechStartedFrame(turn_id=self._turn_id, audio_time=event.onset_time, resumes_turn=resumed)
                )
            elif isinstance(event, Pause):
                await self.push(self._user_audio(event.segment, final=False))
            elif isinstance(event, EndCheck):
                # ask the model only if this batch of audio did not already resume or end the turn
                last = index == len(events) - 1
                if self.end_of_turn_model is not None and last and self._segmenter.in_pause:
                    await self._emit(await self._predict_end(event.segment))
            elif isinstance(event, Resume):
                await self.push(SpeechResumedFrame(turn_id=self._turn_id, audio_time=event.time))
            elif isinstance(event, SpeechEnd):
                await self.push(
                    SpeechEndedFrame(
                        turn_id=self._turn_id,
                        audio_time=event.last_voiced_time,
                        speech_end_timestamp=self._arrival_time(event.last_voiced_time),
                        predicted=event.predicted,
                        end_of_turn_probability=self._eot_probability,
                    )
                )
                if event.segment is not None:
                    await self.push(self._user_audio(event.segment, final=True))

    async def _predict_end(self, segment: Segment) -> list[Event]:
        """Ask the end-of-turn model about the turn so far; end the turn now when it says finished."""
        started = time.perf_counter()
        probability = await self.run_blocking(self._end_of_turn_probability, segment.pcm)
        self._eot_probability = probability
        values = {"end_of_turn_probability": probability, "end_of_turn_model_s": time.perf_counter() - started}
        await self.push(MetricsFrame(turn_id=self._turn_id, stage=self.name, values=values))
        if probability <= self.config.end_of_turn_threshold:
            return []
        return self._segmenter.end_turn()

    def _end_of_turn_probability(self, pcm: np.ndarray) -> float:
        """On the worker thread: the user is waiting for this answer, so background work waits (voicepipe.cores)."""
        with schedule.critical(self.name):
            return self.end_of_turn_model.probability(pcm)

    def _user_audio(self, segment: Segment, *, final: bool) -> UserAudioFrame:
        return UserAudioFrame(
            turn_id=self._turn_id,
            pcm=segment.pcm,
            sample_rate=SPEECH_SAMPLE_RATE,
            start_time=segment.start_time,
            end_time=segment.end_time,
            final=final,
        )
