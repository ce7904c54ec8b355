"""The ASR engine contract, what engines return, and the settings and hallucination guard Whisper engines share."""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.engine import Engine, EngineConfig

__all__ = [
    "ASREngine",
    "TranscriptSegment",
    "Transcription",
    "WhisperConfig",
    "apply_guards",
    "is_silent",
]


@dataclass
class TranscriptSegment:
    """One decoded Whisper window with the scores the guard reads."""

    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    rejected: str | None = None  # why the guard dropped it, or None


@dataclass
class Transcription:
    """The accepted text of one audio segment; ``segments`` includes rejected ones (with the reason)."""

    text: str
    language: str | None = None
    segments: list[TranscriptSegment] = field(default_factory=list)
    seconds: float = 0.0  # wall time spent transcribing


class WhisperConfig(EngineConfig):
    """The settings every Whisper engine shares; each engine's ``Config`` extends it.

    The guard thresholds are against Whisper inventing text on noise ("Thank you for watching"). A segment is dropped
    when its compression ratio is above ``compression_ratio_threshold`` (repetition loops), when ``no_speech_prob`` is
    above ``no_speech_threshold`` while ``avg_logprob`` is below ``logprob_threshold`` (Whisper's own silence rule),
    or when ``avg_logprob`` is below ``min_avg_logprob`` whatever the no-speech probability (greedy decoding without
    temperature fallback: such text is a guess). None disables a check.
    """

    model: str | None = Field(None, description="HF repo id or local directory; default: tiny.en for the engine")
    language: str | None = Field("en", description="spoken language code; None detects it (multilingual models only)")
    beam_size: int = Field(1, ge=1, description="1 = greedy, the fastest")
    no_speech_threshold: float | None = Field(0.6, description="with logprob_threshold: Whisper's silence rule")
    logprob_threshold: float | None = Field(-1.0, description="with no_speech_threshold: Whisper's silence rule")
    compression_ratio_threshold: float | None = Field(2.4, description="above: a repetition loop, dropped")
    min_avg_logprob: float | None = Field(-1.5, description="below: a guess, dropped")


def rejection(segment: TranscriptSegment, guard: WhisperConfig) -> str | None:
    """Why ``segment`` must be dropped, or None to keep it."""
    if not segment.text.strip():
        return "empty"
    if guard.compression_ratio_threshold is not None and segment.compression_ratio > guard.compression_ratio_threshold:
        return f"compression ratio {segment.compression_ratio:.2f} > {guard.compression_ratio_threshold}"
    if (
        guard.no_speech_threshold is not None
        and segment.no_speech_prob > guard.no_speech_threshold
        and (guard.logprob_threshold is None or segment.avg_logprob < guard.logprob_threshold)
    ):
        return f"no-speech probability {segment.no_speech_prob:.2f} > {guard.no_speech_threshold}"
    if guard.min_avg_logprob is not None and segment.avg_logprob < guard.min_avg_logprob:
        return f"average log-probability {segment.avg_logprob:.2f} < {guard.min_avg_logprob}"
    return None


def apply_guards(segments: list[TranscriptSegment], guard: WhisperConfig) -> str:
    """Mark rejected segments and join the accepted text."""
    kept = []
    for segment in segments:
        segment.rejected = rejection(segment, guard)
        if segment.rejected is None:
            kept.append(segment.text.strip())
    return " ".join(kept).strip()


def is_silent(pcm: np.ndarray, floor_dbfs: float = -60.0, window_s: float = 0.03) -> bool:
    """True when no 30 ms window of 16 kHz ``pcm`` rises above ``floor_dbfs`` (RMS): nothing anyone could say.

    Whisper's own scores do not catch every silence (half a minute of zeros reads as "you" with an average
    log-probability of -0.4), and without a VAD in front nothing else would; so audio this quiet is not transcribed.
    """
    n = max(1, int(SPEECH_SAMPLE_RATE * window_s))
    usable = len(pcm) - len(pcm) % n
    if usable == 0:
        return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) < 10 ** (floor_dbfs / 20) if len(pcm) else True
    windows = pcm[:usable].reshape(-1, n).astype(np.float64)
    loudest = float(np.sqrt(np.mean(windows**2, axis=1)).max())
    return loudest < 10 ** (floor_dbfs / 20)


class ASREngine(Engine):
    """Base of every speech recognition engine (``engine:`` of the ``asr`` stage)."""

    role: ClassVar[str] = "asr"

    @abc.abstractmethod
    def transcribe(self, pcm: np.ndarray) -> Transcription:
        """Transcribe mono float32 16 kHz audio, guards applied; loads the engine first when it is not loaded."""
