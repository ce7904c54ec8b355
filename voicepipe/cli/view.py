"""What ``voicepipe run`` shows while a conversation runs.

- ``LiveView`` (a terminal): one rich ``Live`` panel with the state (listening / hearing you / thinking / speaking),
  what the user said, the reply as it streams, the latencies of recent turns and the process's memory.
- ``PlainView`` (output is not a terminal): one line per transcript, reply and turn.
- ``JsonView`` (``--json``): one JSON object per event, for scripts. ``QuietView`` (``--quiet``): nothing.

Fatal errors are not shown by the views: the command prints them once, as its last line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from voicepipe.frames import (
    AudioFrame,
    BotSpeakingFrame,
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMTokenFrame,
    MetricsFrame,
    SpeculationConfirmFrame,
    SpeculationDiscardFrame,
    SpeculationStartFrame,
    SpeechEndedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
    TTSAudioFrame,
    UserAudioFrame,
)
from voicepipe.memory.rss import MB, rss_bytes
from voicepipe.metrics import TurnMetrics
from voicepipe.stage import Direction, Stage
from voicepipe.text.control import strip_control

__all__ = ["make_view", "LiveView", "PlainView", "JsonView", "QuietView", "ConversationState"]


class QuietView:
    """Prints nothing (errors still reach stderr through logging)."""

    def start(self, pipeline: Any) -> None: ...

    def stop(self) -> None: ...

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None: ...

    def turn_finished(self, turn: TurnMetrics) -> None: ...


class PlainView(QuietView):
    """One line per event: what the user said, what the assistant replied, and the turn's latencies."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _print(self, text: str) -> None:
        print(strip_control(text), file=self.stream, flush=True)  # model text must not drive the terminal

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM:
            return
        if isinstance(frame, TranscriptFrame) and frame.final:
            self._print(f"you: {frame.text}")
        elif isinstance(frame, ErrorFrame) and not frame.fatal:
            self._print(f"error in turn {frame.turn_id}: {frame.message}")

    def turn_finished(self, turn: TurnMetrics) -> None:
        lat = turn.latencies_ms()
        if turn.reply:
            cut = " [interrupted]" if turn.interrupted else ""
            self._print(f"assistant: {turn.reply.strip()}{cut}")
        if "voice_to_voice_ms" in lat:
            self._print(f"  (turn {turn.turn_id}: first audio {lat['voice_to_voice_ms']:.0f} ms after you stopped)")


class JsonView(QuietView):
    """One JSON object per line: transcripts, interruptions, errors and finished turns, for scripts."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout

    def _emit(self, obj: dict[str, Any]) -> None:
        print(json.dumps(obj), file=self.stream, flush=True)

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM:
            return
        if isinstance(frame, TranscriptFrame) and frame.final:
            self._emit({"event": "transcript", "turn": frame.turn_id, "text": frame.text})
        elif isinstance(frame, InterruptionFrame):
            self._emit({"event": "interruption", "turn": frame.turn_id, "reason": frame.reason})
        elif isinstance(frame, ErrorFrame):
            self._emit(
                {
                    "event": "error",
                    "turn": frame.turn_id,
                    "stage": frame.stage,
                    "message": frame.message,
                    "fatal": frame.fatal,
                }
            )

    def turn_finished(self, turn: TurnMetrics) -> None:
        self._emit({"event": "turn", **turn.as_dict(), "rss_mb": round(rss_bytes() / MB, 1)})


class ConversationState:
    """What the live view shows, updated from the frames that move (kept apart from rendering so it is testable)."""

    def __init__(self, history: int = 5) -> None:
        self.state = "starting"
        self.turn_id = 0
        self.transcript = ""
        self.reply = ""
        self.interrupted = False
        self.error = ""
        self.turns: deque[TurnMetrics] = deque(maxlen=history)
        self._speculative: dict[int, str] = {}  # turn -> reply text held until the turn is confirmed

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        # the pipeline shows each frame once, where it was produced: accumulating reply text here is safe
        if isinstance(frame, AudioFrame | TTSAudioFrame | UserAudioFrame | MetricsFrame):
            return
        if direction is Direction.UPSTREAM:
            if isinstance(frame, BotSpeakingFrame):
                self.state = "speaking" if frame.speaking else "listening"
            return
        if isinstance(frame, SpeechStartedFrame):
            self.state = "hearing you"  # the last exchange stays on screen until the new transcript
        elif isinstance(frame, SpeechEndedFrame):
            if self.state == "hearing you":
                self.state = "thinking"
        elif isinstance(frame, TranscriptFrame) and frame.final:
            self.turn_id = frame.turn_id
            self.transcript = frame.text
            self.reply = ""
            self.interrupted = False
            self.state = "thinking"
        elif isinstance(frame, SpeculationStartFrame):
            self._speculative[frame.turn_id] = ""  # a reply started at a pause: shown once the turn is confirmed
        elif isinstance(frame, SpeculationDiscardFrame):
            self._speculative.pop(frame.turn_id, None)
        elif isinstance(frame, SpeculationConfirmFrame):
            text = self._speculative.pop(frame.turn_id, "")
            if frame.turn_id == self.turn_id:
                self.reply = text + self.reply
        elif isinstance(frame, LLMTokenFrame) and frame.turn_id in self._speculative:
            self._speculative[frame.turn_id] += frame.text
        elif isinstance(frame, LLMTokenFrame) and frame.turn_id == self.turn_id:
            self.reply += frame.text
        elif isinstance(frame, InterruptionFrame):
            self.interrupted = True
        elif isinstance(frame, EndOfTurnFrame):
            if self.state != "hearing you":
                self.state = "listening"
        elif isinstance(frame, ErrorFrame) and not frame.fatal:
            self.error = frame.message
        if self.state == "starting" and not isinstance(frame, ErrorFrame):
            self.state = "listening"


class LiveView(QuietView):
    """A rich ``Live`` panel, refreshed a few times per second while the pipeline runs."""

    _STYLE = {"listening": "green", "hearing you": "bold green", "thinking": "yellow", "speaking": "cyan"}

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console

        self.console = console or Console()
        self.conversation = ConversationState()
        self._live: Any = None
        self._lock = threading.Lock()
        self._rss = 0
        self._rss_at = 0.0

    def start(self, pipeline: Any) -> None:
        from rich.live import Live

        self.conversation.state = "loading models"
        self._live = Live(console=self.console, get_renderable=self._render, refresh_per_second=8, transient=False)
        self._live.start()

    def stop(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        with self._lock:
            self.conversation.on_frame(frame, source, direction)

    def turn_finished(self, turn: TurnMetrics) -> None:
        with self._lock:
            self.conversation.turns.append(turn)

    def _memory_mb(self) -> float:
        now = time.monotonic()
        if now - self._rss_at > 1.0:  # psutil reads /proc: once a second is plenty
            self._rss, self._rss_at = rss_bytes(), now
        return self._rss / MB

    def _render(self) -> Any:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text

        with self._lock:
            c = self.conversation
            state, transcript, reply = c.state, strip_control(c.transcript), strip_control(c.reply)
            interrupted, error, turns = c.interrupted, c.error, list(c.turns)
        head = Text.assemble(
            ("● ", self._STYLE.get(state, "dim")),
            (state, self._STYLE.get(state, "dim")),
            (f"    memory {self._memory_mb():.0f} MB", "dim"),
        )
        lines: list[Any] = [head]
        if transcript:
            lines.append(Text.assemble(("you: ", "bold"), transcript))
        if reply:
            lines.append(
                Text.assemble(("assistant: ", "bold"), reply.strip(), (" [interrupted]" if interrupted else "", "red"))
            )
        if error:
            lines.append(Text(f"error: {error}", style="red"))
        if turns:
            table = Table(box=None, pad_edge=False, header_style="dim")
            for column in ("turn", "voice→voice", "asr", "llm 1st token", "1st chunk", "tts 1st audio"):
                table.add_column(column, justify="right")
            for t in turns:
                lat = t.latencies_ms()
                cells = [
                    lat.get(k)
                    for k in (
                        "voice_to_voice_ms",
                        "asr_ms",
                        "llm_first_token_ms",
                        "first_chunk_ms",
                        "tts_first_audio_ms",
                    )
                ]
                table.add_row(str(t.turn_id), *("-" if v is None else f"{v:.0f} ms" for v in cells))
            lines.append(table)
        return Panel(Group(*lines), title="voicepipe", title_align="left", border_style="dim")


def make_view(*, quiet: bool = False, json_lines: bool = False, live: bool | None = None) -> QuietView:
    """``--quiet`` / ``--json`` / the live panel on a terminal / plain lines otherwise."""
    if quiet:
        return QuietView()
    if json_lines:
        return JsonView()
    if live is None:
        live = sys.stdout.isatty()
    return LiveView() if live else PlainView()
