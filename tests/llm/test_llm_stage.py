"""LLMStage in a real pipeline with the llama.cpp engine on the tiny random Qwen3.5 (real vocabulary)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from voicepipe.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    PlaybackFrame,
    TranscriptFrame,
)
from voicepipe.llm.stage import LLMConfig, LLMStage
from voicepipe.stage import Direction, Stage
from voicepipe.testing.harness import Pause, run_pipeline, run_stage

pytest.importorskip("llama_cpp")


def _stage(gguf: Path, **overrides) -> LLMStage:  # noqa: ANN003
    config = dict(
        backend="llamacpp",
        model=str(gguf),
        temperature=0.0,
        repetition_penalty=1.0,
        max_tokens=12,
        options={"n_ctx": 2048, "progress": False},
    )
    config.update(overrides)
    return LLMStage(LLMConfig(**config), name="llm")


async def test_replies_stream_and_history_grows(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf)
    out = await run_stage(
        stage,
        [
            TranscriptFrame(text="Hello there.", turn_id=1),
            TranscriptFrame(text="partial", final=False, turn_id=2),
            TranscriptFrame(text="What is Swift?", turn_id=2),
        ],
    )
    ends = [f for f in out if isinstance(f, LLMResponseEndFrame)]
    assert [e.turn_id for e in ends] == [1, 2]
    for end in ends:
        deltas = [f.text for f in out if isinstance(f, LLMTokenFrame) and f.turn_id == end.turn_id]
        assert deltas and "".join(deltas) == end.text and not end.interrupted
    assert [m.role for m in stage.history] == ["user", "assistant", "user", "assistant"]
    assert stage.history[1].content == ends[0].text and stage.history[2].content == "What is Swift?"
    metrics = [f for f in out if isinstance(f, MetricsFrame)]
    assert len(metrics) == 2 and metrics[1].values["llm_cached_tokens"] > 0  # turn 2 reused turn 1's state
    assert not stage.is_loaded  # cleanup closed the model


async def test_interruption_stops_the_reply_and_history_keeps_what_was_emitted(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf, max_tokens=2000)
    out = await run_stage(
        stage, [TranscriptFrame(text="Tell me a long story.", turn_id=1), Pause(1.0), InterruptionFrame(turn_id=1)]
    )
    tokens = [f.text for f in out if isinstance(f, LLMTokenFrame)]
    assert 0 < len(tokens) < 2000
    assert not [f for f in out if isinstance(f, LLMResponseEndFrame)]  # the reply was cut, not finished
    assert any(isinstance(f, InterruptionFrame) for f in out)  # forwarded to TTS and the sink
    assert stage.history[-1].role == "assistant" and stage.history[-1].content == "".join(tokens)


class HeardPrefixSink(Stage):
    """Plays nothing: reports that only the first ``chars`` characters of each reply were heard (a sink cut off by
    barge-in), as a real sink does through ``PlaybackFrame`` upstream."""

    def __init__(self, chars: int) -> None:
        super().__init__(name="heard-prefix-sink")
        self.chars = chars

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, LLMResponseEndFrame):
            heard = PlaybackFrame(text=frame.text[: self.chars], finished=False, turn_id=frame.turn_id)
            await self.push(heard, Direction.UPSTREAM)
        await self.push(frame)


async def test_barge_in_keeps_only_the_heard_prefix(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf)
    frames = [TranscriptFrame(text="Hello there.", turn_id=1), Pause(3.0), InterruptionFrame(turn_id=2)]
    frames += [Pause(0.2), TranscriptFrame(text="Sorry, go on.", turn_id=2)]
    out = await run_pipeline([stage, HeardPrefixSink(chars=4)], frames)
    first = next(f for f in out if isinstance(f, LLMResponseEndFrame) and f.turn_id == 1)
    assert len(first.text) > 4
    assert [m.role for m in stage.history] == ["user", "assistant", "user", "assistant"]
    assert stage.history[1].content == first.text[:4]  # what the user heard, not what was generated


async def test_failing_model_fails_the_turn_not_the_pipeline(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf, options={"n_ctx": 64, "progress": False})  # too small for this prompt
    out = await run_stage(
        stage, [TranscriptFrame(text="Hello " * 40, turn_id=1), TranscriptFrame(text="Hi", turn_id=2)]
    )
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert errors and "n_ctx" in errors[0].message and not errors[0].fatal
    assert stage.history == [] or stage.history[0].content == "Hi"  # the failed question was forgotten


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="backend"):
        LLMConfig(backend="gpu")
    with pytest.raises(ValidationError, match="temprature"):
        LLMConfig(temprature=0.5)
    with pytest.raises(ValidationError, match="top_p"):
        LLMConfig(top_p=0)
