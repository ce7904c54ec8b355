"""What ``voicepipe run`` prints while a conversation runs: the user's words, the reply, latencies per turn."""

from __future__ import annotations

import json
import sys
from typing import Any

from voicepipe.frames import ErrorFrame, Frame, TranscriptFrame
from voicepipe.metrics import TurnMetrics
from voicepipe.stage import Direction, Stage

__all__ = ["make_view", "PlainView", "JsonView", "QuietView"]


class QuietView:
    """Prints nothing (errors still reach stderr through logging)."""

    def start(self, pipeline: Any) -> None: ...

    def stop(self) -> None: ...

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None: ...

    def turn_finished(self, turn: TurnMetrics) -> None: ...


class PlainView(QuietView):
    """One line per event: what the user said, what the assistant replied, and the turn's latencies."""

    def __init__(self, stream=None) -> None:
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM:
            return
        if isinstance(frame, TranscriptFrame) and frame.final:
            self._print(f"you: {frame.text}")
        elif isinstance(frame, ErrorFrame):
            self._print(f"error in turn {frame.turn_id}: {frame.message}")

    def turn_finished(self, turn: TurnMetrics) -> None:
        lat = turn.latencies_ms()
        if turn.reply:
            self._print(f"assistant: {turn.reply.strip()}")
        if "voice_to_voice_ms" in lat:
            self._print(f"  (turn {turn.turn_id}: first audio {lat['voice_to_voice_ms']:.0f} ms after you stopped)")


class JsonView(QuietView):
    """One JSON object per line: transcripts, errors and finished turns, for scripts."""

    def _emit(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM:
            return
        if isinstance(frame, TranscriptFrame) and frame.final:
            self._emit({"event": "transcript", "turn": frame.turn_id, "text": frame.text})
        elif isinstance(frame, ErrorFrame):
            self._emit({"event": "error", "turn": frame.turn_id, "stage": frame.stage, "message": frame.message})

    def turn_finished(self, turn: TurnMetrics) -> None:
        self._emit({"event": "turn", **turn.as_dict()})


def make_view(*, quiet: bool = False, json_lines: bool = False) -> QuietView:
    if quiet:
        return QuietView()
    if json_lines:
        return JsonView()
    return PlainView()
