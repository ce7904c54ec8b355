"""The live view's state follows the conversation; --json prints one event per line; the panel renders."""

from __future__ import annotations

import io
import json

from voicepipe.cli.view import ConversationState, JsonView, LiveView, make_view
from voicepipe.frames import (
    BotSpeakingFrame,
    EndOfTurnFrame,
    ErrorFrame,
    InterruptionFrame,
    LLMTokenFrame,
    SpeechEndedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
)
from voicepipe.metrics import TurnMetrics
from voicepipe.stage import Direction, Stage

DOWN, UP = Direction.DOWNSTREAM, Direction.UPSTREAM


def test_state_follows_a_turn_with_barge_in():
    view = ConversationState()
    a = Stage(name="a")
    steps = [
        (SpeechStartedFrame(turn_id=1), DOWN, "hearing you"),
        (SpeechEndedFrame(turn_id=1), DOWN, "thinking"),
        (TranscriptFrame(text="what time is it", turn_id=1), DOWN, "thinking"),
        (LLMTokenFrame(text="It is", turn_id=1), DOWN, "thinking"),
        (BotSpeakingFrame(speaking=True, turn_id=1), UP, "speaking"),
        (LLMTokenFrame(text=" noon.", turn_id=1), DOWN, "speaking"),
        (SpeechStartedFrame(turn_id=2), DOWN, "hearing you"),
        (InterruptionFrame(turn_id=1), DOWN, "hearing you"),
        (BotSpeakingFrame(speaking=False, turn_id=1), UP, "listening"),
        (EndOfTurnFrame(turn_id=1, interrupted=True), DOWN, "listening"),
    ]
    for frame, direction, state in steps:
        view.on_frame(frame, a, direction)
        assert view.state == state, (frame, view.state)
    assert view.reply == "It is noon." and view.interrupted
    assert view.transcript == "what time is it"


def test_live_panel_renders_turns_and_memory():
    from rich.console import Console

    out = io.StringIO()
    view = LiveView(Console(file=out, width=100, force_terminal=False))
    view.on_frame(TranscriptFrame(text="hello there", turn_id=1), None, DOWN)
    view.on_frame(LLMTokenFrame(text="Hi!", turn_id=1), None, DOWN)
    turn = TurnMetrics(1, times={"speech_end": 0.0, "transcript": 0.1, "first_token": 0.3, "first_audio": 0.55})
    view.turn_finished(turn)
    view.console.print(view._render())
    text = out.getvalue()
    assert "you: hello there" in text and "assistant: Hi!" in text
    assert "550 ms" in text and "memory" in text and " MB" in text


def test_json_view_reports_each_event_once():
    out = io.StringIO()
    view = JsonView(out)
    interruption = InterruptionFrame(turn_id=3)
    view.on_frame(interruption, Stage(name="turn-taking"), DOWN)  # the pipeline shows a frame once
    view.on_frame(TranscriptFrame(text="stop", turn_id=4), None, DOWN)
    view.on_frame(ErrorFrame(message="mic: gone", fatal=True), None, DOWN)
    view.turn_finished(TurnMetrics(4, transcript="stop"))
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["interruption", "transcript", "error", "turn"]
    assert events[2]["fatal"] is True and events[3]["rss_mb"] > 0


def test_plain_lines_when_not_a_terminal():
    assert type(make_view(live=False)).__name__ == "PlainView"
    assert type(make_view(quiet=True)).__name__ == "QuietView"
    assert type(make_view(json_lines=True)).__name__ == "JsonView"
