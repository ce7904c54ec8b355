"""One segmenter state machine for every VAD model: speech probabilities in, speech segments out.

Hand-written because neither webrtcvad nor Silero segments: they only classify frames.

States: *idle* (a ring buffer keeps the last ``preroll_ms`` + ``start_ms`` of audio) and *speaking*. Speech starts
after ``start_ms`` of consecutive voiced frames; the segment then begins ``preroll_ms`` before the first voiced frame
(Whisper clips the first word without it). While speaking, a pause of ``early_ms`` emits a provisional segment (so
transcription can start early), a pause of ``pause_ms`` is the moment an end-of-turn model may be asked
(``EndCheck``, with ``end_check``), and a pause of ``hangover_ms`` ends the segment. A segment always ends
``early_ms`` after its last voiced sample, so if the user does not resume, the final segment is identical to the
provisional one (and a transcript of it can be used as it is). An end-of-turn model may end the segment earlier,
during a pause of at least ``pause_ms`` (``end_turn``): the final segment is then the provisional one. If speech
starts again before the hangover would have ended that segment, the early end was wrong: the new segment resumes it
(it starts where the ended one started and holds everything since, ``SpeechStart.resumed``). Segments with less than
``min_speech_ms`` of voiced audio are dropped (the end is still reported). Speech longer than ``max_segment_s`` is
split: from 80% of the cap on at the first 100 ms pause (the next words start a new segment, with pre-roll), at the
cap at the latest (cut mid-speech, the next segment starts at the cut).

Positions are counted in samples of the 16 kHz stream fed in, reported in seconds.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

import numpy as np

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.vad.base import VADEngine

__all__ = [
    "SegmenterConfig",
    "Segment",
    "SpeechStart",
    "Pause",
    "EndCheck",
    "Resume",
    "SpeechEnd",
    "Event",
    "Segmenter",
]


@dataclass(frozen=True)
class SegmenterConfig:
    """Timing of the state machine (milliseconds unless the name says otherwise)."""

    threshold: float = 0.5
    #: While speaking, frames stay voiced down to this probability (hysteresis); None = threshold - 0.15.
    release_threshold: float | None = None
    start_ms: int = 90
    hangover_ms: int = 500
    pause_ms: int = 200
    #: Silence after which the provisional segment goes out (``Pause``); None: ``pause_ms``. At most ``pause_ms``.
    early_ms: int | None = None
    preroll_ms: int = 300
    min_speech_ms: int = 250
    max_segment_s: float = 15.0
    #: Emit ``Pause`` events (provisional segments) for early transcription.
    early: bool = True
    #: Emit ``EndCheck`` events (ask an end-of-turn model) after ``pause_ms`` of silence.
    end_check: bool = False

    @property
    def early_after_ms(self) -> int:
        """The silence after which a provisional segment goes out, and at which every segment ends."""
        return self.pause_ms if self.early_ms is None else self.early_ms

    def check(self) -> None:
        """Raise ValueError naming the field when the timings contradict each other."""
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1], not {self.threshold}")
        if self.release_threshold is not None and not 0.0 < self.release_threshold <= self.threshold:
            raise ValueError(
                f"release_threshold must be in (0, threshold={self.threshold}], not {self.release_threshold}"
            )
        if self.early_ms is not None and not 0 < self.early_ms <= self.pause_ms:
            raise ValueError(f"early_ms must be in (0, pause_ms={self.pause_ms}], not {self.early_ms}")
        if self.pause_ms >= self.hangover_ms:
            raise ValueError(f"pause_ms ({self.pause_ms}) must be shorter than hangover_ms ({self.hangover_ms})")
        if self.max_segment_s * 1000 <= self.start_ms + self.hangover_ms:
            raise ValueError(f"max_segment_s ({self.max_segment_s}) is too short for start_ms + hangover_ms")
        for name in ("start_ms", "pause_ms", "preroll_ms", "min_speech_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")


@dataclass
class Segment:
    """Mono float32 16 kHz audio of one stretch of speech and its position in the stream (seconds)."""

    pcm: np.ndarray
    start_time: float
    end_time: float


@dataclass
class SpeechStart:
    """Speech began; ``onset_time`` is the first voiced frame (the segment starts up to ``preroll_ms`` earlier).

    ``resumed``: the user went on within the hangover after ``end_turn`` ended the previous segment; this segment
    starts where that one started and contains it.
    """

    onset_time: float
    resumed: bool = False


@dataclass
class Pause:
    """A pause of ``early_ms`` began: ``segment`` is what the final segment will be if the user does not resume."""

    segment: Segment


@dataclass
class EndCheck:
    """The pause has lasted ``pause_ms``: ask an end-of-turn model now (``segment``: the audio up to here), and call
    ``Segmenter.end_turn`` if it says the turn is finished."""

    segment: Segment


@dataclass
class Resume:
    """Speech went on after a ``Pause`` was reported: that provisional segment is void. ``time``: the voiced frame."""

    time: float


@dataclass
class SpeechEnd:
    """Speech ended (``capped``: split near ``max_segment_s``; the speech goes on in a new segment; ``predicted``:
    ended in a pause by ``Segmenter.end_turn``, before the hangover).

    ``segment`` is None when it held less than ``min_speech_ms`` of voiced audio. ``last_voiced_time`` is the end of
    the last voiced frame.
    """

    segment: Segment | None
    last_voiced_time: float
    capped: bool = False
    predicted: bool = False


Event = SpeechStart | Pause | EndCheck | Resume | SpeechEnd


def _samples(ms: float) -> int:
    return int(round(ms * SPEECH_SAMPLE_RATE / 1000.0))


class Segmenter:
    """Feed 16 kHz mono audio of any length; get ``SpeechStart`` / ``Pause`` / ``Resume`` / ``SpeechEnd`` back."""

    def __init__(self, model: VADEngine, config: SegmenterConfig | None = None) -> None:
        self.model = model
        self.config = config or SegmenterConfig()
        self.config.check()
        c = self.config
        self._release = c.release_threshold if c.release_threshold is not None else max(0.01, c.threshold - 0.15)
        self._n = model.frame_samples
        self._start_n = _samples(c.start_ms)
        self._hangover_n = _samples(c.hangover_ms)
        self._pause_n = _samples(c.pause_ms)
        self._early_n = _samples(c.early_after_ms)
        self._preroll_n = _samples(c.preroll_ms)
        self._min_n = _samples(c.min_speech_ms)
        self._max_n = _samples(c.max_segment_s * 1000)
        self._soft_n = int(self._max_n * 0.8)  # from here on, split at the first short pause
        self._soft_pause_n = min(self._pause_n, _samples(100))
        self.reset()

    # -- public -----------------------------------------------------------------------------------------------------

    def reset(self) -> None:
        """Forget everything (new stream)."""
        self.model.reset()
        self._pending = np.zeros(0, dtype=np.float32)
        self._pos = 0  # stream position (samples) of the next frame
        self._ring: collections.deque[tuple[int, np.ndarray]] = collections.deque()
        self._run_start: int | None = None
        self._run_n = 0
        self.speaking = False
        self._buffer: list[np.ndarray] = []
        self._seg_start = 0
        self._last_voiced_end = 0
        self._voiced_n = 0
        self._silence_n = 0
        self._pause_sent = False
        self._check_sent = False
        self._resumable: tuple[int, int, int] | None = None  # (seg_start, voiced_n, until) after end_turn
        self._since_end: list[np.ndarray] = []  # the ended segment's audio and all audio after it, while resumable

    @property
    def position(self) -> float:
        """Seconds of audio classified so far."""
        return self._pos / SPEECH_SAMPLE_RATE

    def feed(self, pcm: np.ndarray) -> list[Event]:
        """Classify as many whole frames as ``pcm`` (plus what was left over last time) holds."""
        data = np.concatenate([self._pending, np.asarray(pcm, dtype=np.float32)])
        events: list[Event] = []
        whole = len(data) // self._n * self._n
        for offset in range(0, whole, self._n):
            frame = data[offset : offset + self._n]
            self._step(frame, self.model.speech_probability(frame), events)
        self._pending = data[whole:].copy()
        return events

    def flush(self) -> list[Event]:
        """End of input: close an open segment (the leftover partial frame counts as silence)."""
        events: list[Event] = []
        if self.speaking:
            if len(self._pending):
                self._buffer.append(self._pending)
                self._pos += len(self._pending)
            events.append(self._end(capped=False))
        self._pending = np.zeros(0, dtype=np.float32)
        return events

    @property
    def in_pause(self) -> bool:
        """Speaking, the last ``pause_ms`` or more were silent, and a ``Pause`` was reported for this pause."""
        return self.speaking and self._pause_sent and self._silence_n >= self._pause_n

    def end_turn(self) -> list[Event]:
        """End the segment now, before the hangover, if it is still in the pause that ``Pause`` reported.

        Returns ``[SpeechEnd(predicted=True)]``, or nothing when the user has resumed (or the segment has ended) since.
        """
        if not self.in_pause:
            return []
        seg_start, voiced_n = self._seg_start, self._voiced_n
        kept = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.float32)
        event = self._end(capped=False)
        event.predicted = True
        # the hangover would have waited hangover_ms after the last voiced sample: until then the end can be undone
        self._resumable = (seg_start, voiced_n, self._last_voiced_end + self._hangover_n)
        self._since_end = [kept]
        return [event]

    # -- the state machine ------------------------------------------------------------------------------------------

    def _step(self, frame: np.ndarray, probability: float, events: list[Event]) -> None:
        start, end = self._pos, self._pos + len(frame)
        self._pos = end
        if not self.speaking:
            self._idle_step(frame, start, end, probability >= self.config.threshold, events)
            return
        self._buffer.append(frame)
        if probability >= self._release:
            if self._pause_sent:
                events.append(Resume(start / SPEECH_SAMPLE_RATE))
            self._last_voiced_end = end
            self._voiced_n += len(frame)
            self._silence_n = 0
            self._pause_sent = self._check_sent = False
        else:
            self._silence_n += len(frame)
        length = end - self._seg_start
        if self._silence_n >= self._hangover_n:
            events.append(self._end(capped=False))
        elif length >= self._soft_n and self._silence_n >= self._soft_pause_n:
            # near the cap and in a short pause: split here; the next words start a new segment (with pre-roll)
            events.append(self._end(capped=True, cut=end))
        elif length >= self._max_n:
            # no pause before the cap: cut mid-speech and go on at once, so no audio is lost
            events.append(self._end(capped=True, cut=end))
            self._begin(end, end, [], events)
        elif self._voiced_n >= self._min_n and (self.config.early or self.config.end_check):
            if self.config.early and not self._pause_sent and self._silence_n >= self._early_n:
                self._pause_sent = True
                events.append(Pause(self._segment(self._last_voiced_end + self._early_n)))
            if self.config.end_check and not self._check_sent and self._silence_n >= self._pause_n:
                self._check_sent = self._pause_sent = True
                events.append(EndCheck(self._segment(self._last_voiced_end + self._pause_n)))

    def _idle_step(self, frame: np.ndarray, start: int, end: int, voiced: bool, events: list[Event]) -> None:
        if self._resumable is not None:
            self._since_end.append(frame)
            if start >= self._resumable[2] and not (voiced and self._run_start is not None):
                self._resumable, self._since_end = None, []  # the hangover has passed: the end stands
        self._ring.append((start, frame))
        keep_from = end - self._preroll_n - self._start_n - self._n
        while self._ring and self._ring[0][0] + len(self._ring[0][1]) <= keep_from:
            self._ring.popleft()
        if not voiced:
            self._run_start, self._run_n = None, 0
            return
        if self._run_start is None:
            self._run_start = start
        self._run_n += len(frame)
        if self._run_n >= self._start_n:
            onset, voiced_n = self._run_start, self._run_n
            # resume only what the length cap would keep in one segment anyway (a monologue is split regardless)
            if self._resumable is not None and onset < self._resumable[2] and end - self._resumable[0] < self._soft_n:
                seg_start, old_voiced, _ = self._resumable
                pieces, self._resumable, self._since_end = self._since_end, None, []
                self._begin(seg_start, onset, pieces, events, resumed=True)
                self._voiced_n = old_voiced + voiced_n
                self._last_voiced_end = end
                return
            self._resumable, self._since_end = None, []
            seg_start = max(onset - self._preroll_n, self._ring[0][0])
            pieces = []
            for frame_start, data in self._ring:
                if frame_start + len(data) > seg_start:
                    pieces.append(data[max(0, seg_start - frame_start) :])
            self._begin(seg_start, onset, pieces, events)
            self._voiced_n = voiced_n
            self._last_voiced_end = end

    def _begin(
        self, seg_start: int, onset: int, pieces: list[np.ndarray], events: list[Event], *, resumed: bool = False
    ) -> None:
        self.speaking = True
        self._buffer = pieces
        self._seg_start = seg_start
        self._last_voiced_end = onset
        self._voiced_n = 0
        self._silence_n = 0
        self._pause_sent = self._check_sent = False
        self._ring.clear()
        self._run_start, self._run_n = None, 0
        events.append(SpeechStart(onset / SPEECH_SAMPLE_RATE, resumed=resumed))

    def _segment(self, end: int) -> Segment:
        audio = np.concatenate(self._buffer) if self._buffer else np.zeros(0, dtype=np.float32)
        audio = audio[: max(0, end - self._seg_start)]
        return Segment(audio, self._seg_start / SPEECH_SAMPLE_RATE, (self._seg_start + len(audio)) / SPEECH_SAMPLE_RATE)

    def _end(self, *, capped: bool, cut: int | None = None) -> SpeechEnd:
        end = cut if cut is not None else self._last_voiced_end + self._early_n
        segment = self._segment(end) if self._voiced_n >= self._min_n else None
        event = SpeechEnd(segment, self._last_voiced_time(), capped)
        # the trailing audio becomes the next segment's pre-roll
        tail = np.concatenate(self._buffer)[-self._preroll_n :] if self._buffer and self._preroll_n else None
        self._ring.clear()
        if tail is not None and len(tail):
            self._ring.append((self._pos - len(tail), tail))
        self.speaking = False
        self._buffer = []
        self._run_start, self._run_n = None, 0
        return event

    def _last_voiced_time(self) -> float:
        return self._last_voiced_end / SPEECH_SAMPLE_RATE
