"""Per-turn latency metrics, measured from the frames that flow between stages.

The observer notes, per turn, the first time each milestone is seen (end of user speech, final transcript, first LLM
token, first text chunk, first TTS audio) and derives the latencies a user feels. The zero point is the moment the
last voiced sample arrived (``SpeechEndedFrame.speech_end_timestamp``), so the endpointing delay is counted too.
Stages add their own numbers with ``MetricsFrame`` (e.g. peak memory, reload time). A turn answered speculatively
(``SpeculationStartFrame``) reaches the speaker only through the speculation gate, so for it the first audio is taken
where it leaves the gate, and the token and chunk milestones (earlier than the final transcript, or discarded) are
not counted. A turn is written when its
``EndOfTurnFrame`` leaves the pipeline, or at shutdown if it never got one (no reply, failure).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from voicepipe.frames import (
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    SpeculationStartFrame,
    SpeechEndedFrame,
    TextChunkFrame,
    TranscriptFrame,
    TTSAudioFrame,
)
from voicepipe.outfile import OutputError, OutputFile
from voicepipe.speculation import SpeculationGate
from voicepipe.stage import Direction, Stage

__all__ = ["TurnMetrics", "MetricsObserver", "JsonlWriter"]

_MILESTONES = {
    TranscriptFrame: "transcript",
    LLMTokenFrame: "first_token",
    TextChunkFrame: "first_chunk",
    TTSAudioFrame: "first_audio",
}


@dataclass
class TurnMetrics:
    turn_id: int
    times: dict[str, float] = field(default_factory=dict)
    values: dict[str, float] = field(default_factory=dict)
    transcript: str = ""
    reply: str = ""
    errors: list[str] = field(default_factory=list)
    interrupted: bool = False
    completed: bool = False
    speculative: bool = False  # a speculative reply was started in this turn

    def latencies_ms(self) -> dict[str, float]:
        """Derived latencies in milliseconds (only those whose endpoints were seen)."""
        t = self.times
        pairs = {
            "asr_ms": ("speech_end", "transcript"),
            "llm_first_token_ms": ("transcript", "first_token"),
            "first_chunk_ms": ("first_token", "first_chunk"),
            "tts_first_audio_ms": ("first_chunk", "first_audio"),
            "voice_to_voice_ms": ("speech_end", "first_audio"),
        }
        return {name: round((t[b] - t[a]) * 1000, 1) for name, (a, b) in pairs.items() if a in t and b in t}

    def as_dict(self) -> dict[str, Any]:
        return {
            "turn": self.turn_id,
            "transcript": self.transcript,
            "reply": self.reply,
            **self.latencies_ms(),
            **self.values,
            "interrupted": self.interrupted,
            "completed": self.completed,
            "speculative": self.speculative,
            "errors": self.errors,
        }


class MetricsObserver:
    """Pipeline observer that builds one ``TurnMetrics`` per turn and hands finished turns to ``on_turn``."""

    def __init__(
        self, on_turn: Callable[[TurnMetrics], None] | None = None, clock: Callable[[], float] = time.monotonic
    ):
        self.turns: dict[int, TurnMetrics] = {}
        self.finished: list[TurnMetrics] = []
        self._finished_ids: set[int] = set()  # per-frame lookup: scanning ``finished`` slowed every frame over a soak
        self._on_turn = on_turn
        self._clock = clock

    def _turn(self, turn_id: int) -> TurnMetrics:
        if turn_id not in self.turns:
            self.turns[turn_id] = TurnMetrics(turn_id)
        return self.turns[turn_id]

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if frame.turn_id <= 0 or direction is not Direction.DOWNSTREAM:
            return
        if frame.turn_id in self._finished_ids:
            return
        turn = self._turn(frame.turn_id)
        now = self._clock()
        if turn.speculative and type(frame) in _MILESTONES and not isinstance(frame, TranscriptFrame):
            if isinstance(source, SpeculationGate) and isinstance(frame, TTSAudioFrame):  # released to the speaker
                turn.times.setdefault("first_audio", now)
            return
        if isinstance(frame, SpeculationStartFrame):
            turn.speculative = True
        elif isinstance(frame, LLMResponseEndFrame):
            if turn.speculative and isinstance(source, SpeculationGate) and not frame.interrupted:
                turn.reply = frame.text
        elif isinstance(frame, SpeechEndedFrame):
            turn.times.setdefault("speech_end", frame.speech_end_timestamp or frame.timestamp)
        elif isinstance(frame, TranscriptFrame):
            if frame.final:
                turn.times.setdefault("transcript", now)
                turn.transcript = frame.text
        elif type(frame) in _MILESTONES:
            turn.times.setdefault(_MILESTONES[type(frame)], now)
            if isinstance(frame, LLMTokenFrame):
                turn.reply += frame.text
        elif isinstance(frame, MetricsFrame):
            turn.values.update(frame.values)
        elif isinstance(frame, ErrorFrame):
            turn.errors.append(frame.message)
        elif isinstance(frame, InterruptionFrame):
            turn.interrupted = True
        elif isinstance(frame, EndOfTurnFrame) and source is not None:
            turn.interrupted = turn.interrupted or frame.interrupted
            turn.completed = not turn.errors
            self._finish(turn)

    def _finish(self, turn: TurnMetrics) -> None:
        self.turns.pop(turn.turn_id, None)
        self.finished.append(turn)
        self._finished_ids.add(turn.turn_id)
        if self._on_turn is not None:
            self._on_turn(turn)

    def flush(self) -> None:
        """Write out turns that never finished (no reply, a failure, or stopped mid-turn)."""
        for turn in sorted(self.turns.values(), key=lambda m: m.turn_id):
            self._finish(turn)


class JsonlWriter:
    """Writes one JSON line per finished turn to ``--metrics out.jsonl``, through ``OutputFile``.

    ``open()`` (called before any model loads) starts this run's own file, so a run with zero turns leaves an empty
    file rather than a previous run's turns; each line is flushed as it is written, and ``close()`` moves the file
    into place (also after Ctrl-C or a failed turn: the metrics of what happened are kept). A failed write keeps the
    previous file and makes ``close()`` raise ``OutputError``.
    """

    def __init__(self, path: str | Path, *, what: str = "--metrics") -> None:
        self.path = Path(path)
        self.output = OutputFile(path, what=what)
        self._handle: TextIO | None = None
        self._error: str | None = None

    def open(self) -> None:
        self._handle = self.output.begin().open("w", encoding="utf-8")

    def __call__(self, turn: TurnMetrics) -> None:
        if self._error is not None:
            return
        try:
            if self._handle is None:
                self.open()
            self._handle.write(json.dumps(turn.as_dict()) + "\n")
            self._handle.flush()
        except OSError as exc:
            self._error = (
                f"{self.output.what} {self.path}: writing failed ({exc.strerror or exc}); the previous file is kept"
            )
            self._abandon()

    def _abandon(self) -> None:
        if self._handle is not None:
            with contextlib.suppress(OSError):
                self._handle.close()
            self._handle = None
        self.output.discard()

    def close(self) -> None:
        """Move the file into place; ``OutputError`` if any write failed (the previous file is kept then)."""
        if self._error is not None:
            self._abandon()
            raise OutputError(self._error)
        if self._handle is not None:
            try:
                self._handle.close()
            except OSError as exc:
                self._handle = None
                self.output.discard()
                raise OutputError(f"{self.output.what} {self.path}: writing failed ({exc.strerror or exc})") from exc
            self._handle = None
            self.output.commit()
