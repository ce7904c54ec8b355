"""Typed frames: the only things that travel between stages.

Two tiers, as in Pipecat: *system* frames (interruptions, errors, cancellation) overtake queued data frames and are
never dropped by an interruption; *data* frames travel strictly in order. Every frame carries the id of the turn it
belongs to (0 = no turn yet) and a monotonic timestamp, so latency can be measured end to end.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "Frame",
    "SystemFrame",
    "DataFrame",
    "AudioFrame",
    "SpeechStartedFrame",
    "SpeechEndedFrame",
    "UserAudioFrame",
    "SpeechResumedFrame",
    "TranscriptFrame",
    "ReplyFrame",
    "LLMTokenFrame",
    "LLMResponseEndFrame",
    "TextChunkFrame",
    "TTSAudioFrame",
    "PlaybackFrame",
    "BotSpeakingFrame",
    "EndOfTurnFrame",
    "SpeculationStartFrame",
    "SpeculationConfirmFrame",
    "SpeculationDiscardFrame",
    "InterruptionFrame",
    "ErrorFrame",
    "MetricsFrame",
    "EndFrame",
    "CancelFrame",
]


@dataclass(kw_only=True)
class Frame:
    """Base of every frame. ``turn_id`` ties the frame to a user turn; ``timestamp`` is ``time.monotonic()``."""

    turn_id: int = 0
    timestamp: float = field(default_factory=time.monotonic)
    #: Name of the stage that produced this frame, set by the pipeline when the frame is first pushed. Observers are
    #: told about a frame once, there; stages that forward it unchanged do not make it count again.
    origin: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def is_system(self) -> bool:
        return isinstance(self, SystemFrame)


@dataclass(kw_only=True)
class SystemFrame(Frame):
    """Overtakes queued data frames; survives interruptions."""


@dataclass(kw_only=True)
class DataFrame(Frame):
    """Travels in order; queued data frames of an interrupted turn are dropped."""


# --- audio ---------------------------------------------------------------------------------------------------------


@dataclass
class AudioFrame(DataFrame):
    """A block of input audio. ``pcm`` is float32 in [-1, 1], shape (samples,) for mono or (samples, channels)."""

    pcm: np.ndarray
    sample_rate: int

    @property
    def num_channels(self) -> int:
        return 1 if self.pcm.ndim == 1 else int(self.pcm.shape[1])

    @property
    def duration(self) -> float:
        return len(self.pcm) / float(self.sample_rate)


@dataclass
class SpeechStartedFrame(DataFrame):
    """The VAD heard the user start speaking. ``audio_time`` is the stream position in seconds.

    ``resumes_turn``: the user went on within the hangover after the end-of-turn model had ended turn N: this turn's
    audio contains N's, an ``InterruptionFrame`` for N came just before, and N's transcript should not stay in the
    conversation as a separate message.
    """

    audio_time: float = 0.0
    resumes_turn: int | None = None


@dataclass
class SpeechEndedFrame(DataFrame):
    """The VAD confirmed the end of the user's turn: the hangover passed, or the end-of-turn model said it was done.

    ``audio_time`` is the stream position of the last voiced sample; ``speech_end_timestamp`` is the monotonic time at
    which that sample arrived, the zero point of voice-to-voice latency. ``predicted`` is True when the end-of-turn
    model ended the turn at the pause, before the hangover; ``end_of_turn_probability`` is what that model said at the
    pause (None when it was not asked).
    """

    audio_time: float = 0.0
    speech_end_timestamp: float | None = None
    predicted: bool = False
    end_of_turn_probability: float | None = None


@dataclass
class UserAudioFrame(DataFrame):
    """One segment of user speech (mono float32), with its position in the input stream.

    ``final`` is False for a provisional segment sent when a pause begins (early transcription); a final segment for
    the same turn supersedes it.
    """

    pcm: np.ndarray
    sample_rate: int
    start_time: float = 0.0
    end_time: float = 0.0
    final: bool = True

    @property
    def duration(self) -> float:
        return len(self.pcm) / float(self.sample_rate)


@dataclass
class SpeechResumedFrame(DataFrame):
    """The user went on speaking after a pause that sent a provisional segment: that segment, and anything started
    on it (a provisional transcript, a speculative reply), is void."""

    audio_time: float = 0.0


@dataclass
class TranscriptFrame(DataFrame):
    """Text recognised from the user. Interim transcripts (``final=False``) may be revised; a final one starts a reply."""

    text: str
    final: bool = True
    language: str | None = None


# --- reply ----------------------------------------------------------------------------------------------------------


@dataclass(kw_only=True)
class ReplyFrame(DataFrame):
    """Base of the frames that carry the assistant's reply (what a speculation gate holds and may drop)."""


@dataclass
class LLMTokenFrame(ReplyFrame):
    """A piece of the assistant's reply as it streams (never splits a UTF-8 character; think text excluded)."""

    text: str


@dataclass
class LLMResponseEndFrame(ReplyFrame):
    """The LLM finished (or stopped) its reply for this turn. ``text`` is the whole reply it produced."""

    text: str = ""
    interrupted: bool = False


@dataclass
class TextChunkFrame(ReplyFrame):
    """A speakable piece of the reply (a clause or sentence), cleaned of markdown and think text."""

    text: str
    index: int = 0


@dataclass
class TTSAudioFrame(ReplyFrame):
    """Synthesized reply audio (mono float32). ``chunk_index``/``char_end`` say which text this block speaks."""

    pcm: np.ndarray
    sample_rate: int
    chunk_index: int = 0
    chunk_text: str = ""
    char_start: int = 0
    char_end: int = 0

    @property
    def duration(self) -> float:
        return len(self.pcm) / float(self.sample_rate)


@dataclass
class PlaybackFrame(SystemFrame):
    """Sent upstream by a sink: this much of the reply has actually been played (so history keeps only what was heard).

    ``text`` is the reply text heard so far in this turn; ``finished`` is True once the whole turn's audio is out.
    """

    text: str = ""
    finished: bool = False


@dataclass
class BotSpeakingFrame(SystemFrame):
    """Sent upstream by a sink: the reply of ``turn_id`` started (``speaking``) or stopped playing on the device.

    The turn-taking stage gates the microphone on it (echo guard) and watches for barge-in while it is True.
    """

    speaking: bool = True


@dataclass
class EndOfTurnFrame(DataFrame):
    """Everything of this turn has passed the stage that sends it (the sink sends it once its audio is out)."""

    interrupted: bool = False


# --- speculative replies ------------------------------------------------------------------------------------------
# The LLM may start a reply on a provisional transcript, before the turn has ended. Its reply frames travel as usual
# (TTS synthesizes them) but a gate in front of the sink holds them: a start marker travels in order ahead of them,
# a discard marker in order behind them, and a confirmation overtakes everything (system lane) so the held audio
# plays the moment the turn is confirmed. ``speculation`` ids are unique per LLM stage.


@dataclass
class SpeculationStartFrame(DataFrame):
    """The reply frames of this turn that follow are speculative: hold them until confirmed."""

    speculation: int = 0


@dataclass
class SpeculationConfirmFrame(SystemFrame):
    """The turn ended with the words the speculation answered: play its held reply now and let the rest through."""

    speculation: int = 0


@dataclass
class SpeculationDiscardFrame(DataFrame):
    """The speculation is void (the user went on, or said something else): drop its held reply frames."""

    speculation: int = 0


# --- system ---------------------------------------------------------------------------------------------------------


@dataclass
class InterruptionFrame(SystemFrame):
    """The user barged in: stop what you are doing for the current reply and drop its queued data.

    ``turn_only``: drop the work of turn ``turn_id`` alone (a turn the VAD ended too early and the user went on);
    the work of other turns goes on.
    """

    reason: str = "user speech"
    turn_only: bool = False


@dataclass
class ErrorFrame(SystemFrame):
    """A stage failed. ``fatal`` stops the pipeline; otherwise only the turn failed and the pipeline goes on."""

    message: str
    stage: str = ""
    fatal: bool = False
    exception: BaseException | None = field(default=None, repr=False, compare=False)


@dataclass
class MetricsFrame(SystemFrame):
    """Measurements a stage reports (``name`` -> value), attributed to the turn."""

    stage: str = ""
    values: dict[str, float] = field(default_factory=dict)


@dataclass
class CancelFrame(SystemFrame):
    """Stop now (Ctrl-C or a fatal error): stages drop everything and shut down."""


@dataclass
class EndFrame(DataFrame):
    """End of input: every stage flushes, forwards it, and stops. Never dropped by an interruption."""
