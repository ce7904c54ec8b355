"""LLMStage in a real pipeline with the llama.cpp engine on the tiny random Qwen3.5 (real vocabulary)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
    SpeechStartedFrame,
    TranscriptFrame,
)
from voicepipe.llm.stage import LLMConfig, LLMStage
from voicepipe.stage import Direction, Source, Stage
from voicepipe.testing.harness import Pause, run_pipeline, run_stage

pytest.importorskip("llama_cpp")


def _stage(gguf: Path, **overrides) -> LLMStage:  # noqa: ANN003
    config = dict(
        engine="llamacpp",
        model=str(gguf),
        temperature=0.0,
        repetition_penalty=1.0,
        max_tokens=12,
        n_ctx=2048,
        progress=False,
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


class ScriptedSource(Source):
    """Emits frames; an ``asyncio.Event`` among them makes it wait until a later stage sets it (no timing guesses)."""

    def __init__(self, items: list) -> None:  # noqa: ANN001
        super().__init__(name="scripted-source")
        self.items = items

    async def frames(self) -> AsyncIterator[Frame]:
        for item in self.items:
            if isinstance(item, asyncio.Event):
                await asyncio.wait_for(item.wait(), 120)
            elif isinstance(item, Pause):
                await asyncio.sleep(item.seconds)
            else:
                yield item


class Signal(Stage):
    """Sets ``event`` once ``count`` frames of ``kind`` went by; optionally reports them as heard (a sink cut off by
    barge-in reports the heard prefix upstream with ``PlaybackFrame``)."""

    def __init__(self, kind: type[Frame], count: int, heard_chars: int | None = None) -> None:
        super().__init__(name="signal")
        self.kind, self.count, self.heard_chars, self.seen = kind, count, heard_chars, 0
        self.event = asyncio.Event()

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, self.kind):
            self.seen += 1
            if self.heard_chars is not None and isinstance(frame, LLMResponseEndFrame):
                heard = PlaybackFrame(text=frame.text[: self.heard_chars], finished=False, turn_id=frame.turn_id)
                await self.push(heard, Direction.UPSTREAM)
            if self.seen == self.count:
                self.event.set()
        await self.push(frame)


async def test_interruption_stops_the_reply_and_history_keeps_what_was_emitted(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf, max_tokens=2000)
    signal = Signal(LLMTokenFrame, 3)
    source = ScriptedSource([TranscriptFrame(text="Tell me a long story.", turn_id=1), signal.event])
    source.items.append(InterruptionFrame(turn_id=1))
    out = await run_pipeline([source, stage, signal])
    tokens = [f.text for f in out if isinstance(f, LLMTokenFrame)]
    assert 3 <= len(tokens) < 2000
    assert not [f for f in out if isinstance(f, LLMResponseEndFrame)]  # the reply was cut, not finished
    assert any(isinstance(f, InterruptionFrame) for f in out)  # forwarded to TTS and the sink
    assert stage.history[-1].role == "assistant" and stage.history[-1].content == "".join(tokens)


async def test_barge_in_keeps_only_the_heard_prefix(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf)
    sink = Signal(LLMResponseEndFrame, 1, heard_chars=4)
    frames = [TranscriptFrame(text="Hello there.", turn_id=1), sink.event, InterruptionFrame(turn_id=2)]
    frames += [TranscriptFrame(text="Sorry, go on.", turn_id=2)]
    out = await run_pipeline([ScriptedSource(frames), stage, sink])
    first = next(f for f in out if isinstance(f, LLMResponseEndFrame) and f.turn_id == 1)
    assert len(first.text) > 4
    assert [m.role for m in stage.history] == ["user", "assistant", "user", "assistant"]
    assert stage.history[1].content == first.text[:4]  # what the user heard, not what was generated


class FullPlaybackSink(Stage):
    """Reports each reply as heard in full, as a sink does once the turn's audio is out."""

    def __init__(self) -> None:
        super().__init__(name="sink")
        self.event = asyncio.Event()

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, LLMResponseEndFrame):
            await self.push(PlaybackFrame(text=frame.text, finished=True, turn_id=frame.turn_id), Direction.UPSTREAM)
            self.event.set()
        await self.push(frame)


async def test_heard_reply_is_prefilled_before_the_next_turn(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf)
    sink = FullPlaybackSink()
    frames = [TranscriptFrame(text="Hello there.", turn_id=1), sink.event, Pause(0.5)]
    frames += [TranscriptFrame(text="What is Swift?", turn_id=2)]
    out = await run_pipeline([ScriptedSource(frames), stage, sink])
    metrics = [f for f in out if isinstance(f, MetricsFrame) and f.stage == "llm"]
    assert [m.turn_id for m in metrics] == [1, 2]
    from voicepipe.llm import ChatMessage

    new_tokens = len(stage.model.encode_chat([ChatMessage("user", "What is Swift?")], disable_thinking=True))
    stage.model.close()
    # the warmed snapshot held everything up to the end of reply 1: turn 2 prefilled only its own message
    assert metrics[1].values["llm_prefill_tokens"] == new_tokens
    assert stage.history[1].content == next(f.text for f in out if isinstance(f, LLMResponseEndFrame))


async def test_the_system_prompt_is_prefilled_while_the_user_speaks_so_the_first_turn_prefills_only_its_message(
    tiny_gguf: Path,
) -> None:
    from voicepipe.llm import ChatMessage

    question = "What is Swift?"
    turn = [SpeechStartedFrame(turn_id=1), TranscriptFrame(text=question, turn_id=1)]
    cold = await run_stage(_stage(tiny_gguf, system_prompt="You are a voice assistant.", warm_cache=False), turn)
    stage = _stage(tiny_gguf, system_prompt="You are a voice assistant.")
    warm = await run_stage(stage, turn)
    new_tokens = len(stage.model.encode_chat([ChatMessage("user", question)], disable_thinking=True))
    stage.model.close()
    prefilled = [
        next(f.values["llm_prefill_tokens"] for f in out if isinstance(f, MetricsFrame) and f.stage == "llm")
        for out in (cold, warm)
    ]
    assert prefilled[1] == new_tokens
    assert prefilled[0] > new_tokens  # the control: without it the first turn prefills the system prompt too


async def test_failing_model_fails_the_turn_not_the_pipeline(tiny_gguf: Path) -> None:
    stage = _stage(tiny_gguf, n_ctx=64)  # too small for this prompt
    out = await run_stage(
        stage, [TranscriptFrame(text="Hello " * 40, turn_id=1), TranscriptFrame(text="Hi", turn_id=2)]
    )
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert errors and "n_ctx" in errors[0].message and not errors[0].fatal
    assert stage.history == [] or stage.history[0].content == "Hi"  # the failed question was forgotten


def test_config_errors_name_the_field() -> None:
    with pytest.raises(ValidationError, match="unknown llm engine 'gpu'"):
        LLMConfig(engine="gpu")
    with pytest.raises(ValidationError, match="n_ctx"):
        LLMConfig(engine="llamacpp", n_ctx=8)  # an engine field, checked by the engine's Config
    with pytest.raises(ValidationError, match="temprature"):
        LLMConfig(temprature=0.5)
    with pytest.raises(ValidationError, match="top_p"):
        LLMConfig(top_p=0)


def test_history_is_trimmed_to_half_the_window_so_the_prompt_cache_misses_rarely() -> None:
    """Each trim changes the prompt's prefix (a prompt-cache miss): trimming to half the window keeps misses rare."""
    from voicepipe.llm.chat_format import ChatMessage
    from voicepipe.llm.stage import LLMConfig, LLMStage, _trimmed

    stage = LLMStage(LLMConfig(max_history=8))
    trims = 0
    for turn in range(1, 21):
        before = list(stage.history)
        stage.history += [ChatMessage("user", f"q{turn}"), ChatMessage("assistant", f"a{turn}")]
        stage.history = _trimmed(stage.history, stage.config.max_history)
        if stage.history[: len(before)] != before:
            trims += 1
        assert len(stage.history) <= 8
        assert stage.history[0].role == "user"
        assert stage.history[-1] == ChatMessage("assistant", f"a{turn}")
    assert trims <= 20 // 2, f"{trims} of 20 turns changed the prefix"
    assert trims >= 3  # the window really is enforced


def test_an_old_pipeline_file_gets_the_fix_and_engine_fields_their_line() -> None:
    """``backend:``/``options:`` were renamed: each gets one line naming the fix; llama.cpp's fields sit flat beside
    the stage's and a wrong one is reported at its own line by the engine's config."""
    from voicepipe.config import parse_pipeline
    from voicepipe.errors import ConfigError

    old = "stages:\n  - type: llm\n    backend: llamacpp\n    model: x.gguf\n    options: {n_ctx: 512}\n"
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(old, "old.yaml")
    assert caught.value.problems == [
        "old.yaml:3: stages[0].backend: 'backend:' is now 'engine:'; write engine: llamacpp",
        "old.yaml:5: stages[0].options: 'options:' is gone: write its keys (n_ctx) beside 'engine:' in this stage",
    ]
    typo = "stages:\n  - type: llm\n    engine: llamacpp\n    model: x.gguf\n    n_ctxx: 512\n    temperature: 0\n"
    with pytest.raises(ConfigError) as caught:
        parse_pipeline(typo, "typo.yaml")
    assert caught.value.problems == ["typo.yaml:5: stages[0].n_ctxx: unknown field; remove it or check its spelling"]
    fixed = parse_pipeline(typo.replace("n_ctxx", "n_ctx"), "fixed.yaml").stages[0].config
    assert fixed.engine_config.n_ctx == 512 and fixed.sampling().temperature == 0.0
    assert fixed.model_dump()["n_ctx"] == 512  # flat again, as written
