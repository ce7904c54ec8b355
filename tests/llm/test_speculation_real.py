"""Speculative replies with the real chat model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, on llama.cpp).

A discarded speculation must leave no trace: not in the history, not in a prompt-cache snapshot, not in the live
state the next turn continues from; a confirmed one is adopted as generated and the next turn reuses its state.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from voicepipe.frames import (
    Frame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    SpeechResumedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
)
from voicepipe.llm.stage import LLMConfig, LLMStage
from voicepipe.pipeline import VoicePipeline
from voicepipe.stage import Direction, Stage
from voicepipe.testing.harness import ListSource

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def qwen05() -> Path:
    assets = pytest.importorskip("tests.support.llm_assets", reason="needs the real chat GGUF")
    return assets.qwen25_05b_gguf()


def script(items: list) -> ListSource:
    """The scripted user: frames, and events that make it wait (a real model may take minutes here)."""
    return ListSource(items, name="script", event_timeout_s=300)


class FirstTokens:
    """Observer: ``event(turn)`` is set once the LLM has pushed ``count`` tokens of that turn (a reply under way)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.seen: dict[int, int] = {}
        self.events: dict[int, asyncio.Event] = {}

    def event(self, turn: int) -> asyncio.Event:
        return self.events.setdefault(turn, asyncio.Event())

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and isinstance(frame, LLMTokenFrame) and source and source.name == "llm":
            self.seen[frame.turn_id] = self.seen.get(frame.turn_id, 0) + 1
            if self.seen[frame.turn_id] >= self.count:
                self.event(frame.turn_id).set()


async def test_a_discarded_speculation_leaves_no_trace_and_a_confirmed_one_is_kept(qwen05: Path) -> None:
    llm = LLMStage(
        LLMConfig(
            engine="llamacpp",
            model=str(qwen05),
            temperature=0.0,
            max_tokens=10,
            n_ctx=1024,
            progress=False,
        ),
        name="llm",
    )
    started = FirstTokens(3)
    pipeline = VoicePipeline(
        [
            script(
                [
                    SpeechStartedFrame(turn_id=1),
                    TranscriptFrame(text="What is the capital of France", final=False, turn_id=1),
                    started.event(1),  # the speculative reply about France is being generated ...
                    SpeechResumedFrame(turn_id=1),  # ... when the user goes on
                    TranscriptFrame(text="What is the capital of Italy?", final=False, turn_id=1),
                    TranscriptFrame(text="What is the capital of Italy?", turn_id=1),
                    SpeechStartedFrame(turn_id=2),
                    TranscriptFrame(text="And of Portugal", final=False, turn_id=2),
                    started.event(2),  # a second turn's speculation, after a confirmed reply ...
                    TranscriptFrame(text="And of Spain?", turn_id=2),  # ... that the final words do not match
                ]
            ),
            llm,
        ],
        observers=[started],
    )
    out: list[Frame] = []
    pipeline.on_output(out.append)
    await asyncio.wait_for(pipeline.run(), 600)

    ends = [f for f in out if isinstance(f, LLMResponseEndFrame)]
    assert [(e.turn_id, e.interrupted) for e in ends] == [(1, False), (2, False)]
    assert [m.role for m in llm.history] == ["user", "assistant", "user", "assistant"]
    assert [llm.history[0].content, llm.history[2].content] == ["What is the capital of Italy?", "And of Spain?"]
    assert [llm.history[1].content, llm.history[3].content] == [e.text for e in ends]
    assert "France" not in "".join(m.content for m in llm.history)
    assert "Portugal" not in "".join(m.content for m in llm.history)
    assert llm.discarded_speculations == 2

    model = llm.model
    assert model.prompt_cache._snapshots, "the confirmed turns left snapshots"
    for key in model.prompt_cache._snapshots:
        assert "France" not in model.detokenize(key) and "Portugal" not in model.detokenize(key)
    assert "Portugal" not in model.detokenize(model._state_tokens or [])

    metrics = {f.turn_id: f.values for f in out if isinstance(f, MetricsFrame) and "llm_speculative" in f.values}
    assert metrics[1]["llm_speculative"] == 1.0  # turn 1's reply is the speculation, adopted as generated
    assert metrics[2]["llm_speculative"] == 0.0  # turn 2 was answered anew ...
    # ... and rewinding the discarded speculation kept turn 1's cached state: it was not prefilled again
    turn1 = model._call(model._history_tokens, llm.messages()[:2])  # the system prompt and the Italy question
    assert metrics[2]["llm_cached_tokens"] >= len(turn1)
