"""Speculative replies with the real chat model (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, on llama.cpp).

A discarded speculation must leave no trace: not in the history, not in a prompt-cache snapshot, not in the live
state the next turn continues from; a confirmed one is adopted as generated and the next turn reuses its state.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
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
from voicepipe.stage import Direction, Source, Stage

pytest.importorskip("llama_cpp")


@pytest.fixture(scope="module")
def qwen05() -> Path:
    assets = pytest.importorskip("voicepipe.testing.llm_assets", reason="needs the real chat GGUF")
    return assets.qwen25_05b_gguf()


class Script(Source):
    """Emits frames; an ``asyncio.Event`` among them makes it wait until the pipeline has set it (no sleeps)."""

    def __init__(self, items: list[Frame | asyncio.Event]) -> None:
        super().__init__(name="script")
        self.items = items

    async def frames(self) -> AsyncIterator[Frame]:
        for item in self.items:
            if isinstance(item, asyncio.Event):
                await asyncio.wait_for(item.wait(), 300)
            else:
                yield item


class FirstTokens:
    """Observer: sets ``event`` once the LLM has pushed ``count`` tokens (the speculation is well under way)."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.event = asyncio.Event()

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM and isinstance(frame, LLMTokenFrame) and source and source.name == "llm":
            self.count -= 1
            if self.count <= 0:
                self.event.set()


async def test_a_discarded_speculation_leaves_no_trace_and_a_confirmed_one_is_kept(qwen05: Path) -> None:
    llm = LLMStage(
        LLMConfig(
            backend="llamacpp",
            model=str(qwen05),
            temperature=0.0,
            max_tokens=10,
            options={"n_ctx": 1024, "progress": False},
        ),
        name="llm",
    )
    started = FirstTokens(3)
    pipeline = VoicePipeline(
        [
            Script(
                [
                    SpeechStartedFrame(turn_id=1),
                    TranscriptFrame(text="What is the capital of France", final=False, turn_id=1),
                    started.event,  # the speculative reply about France is being generated ...
                    SpeechResumedFrame(turn_id=1),  # ... when the user goes on
                    TranscriptFrame(text="What is the capital of Italy?", final=False, turn_id=1),
                    TranscriptFrame(text="What is the capital of Italy?", turn_id=1),
                    TranscriptFrame(text="And of Spain?", turn_id=2),
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
    assert llm.discarded_speculations == 1

    model = llm.model
    assert model.prompt_cache._snapshots, "the confirmed turns left snapshots"
    for key in model.prompt_cache._snapshots:
        assert "France" not in model.detokenize(key)
    assert "France" not in model.detokenize(model._state_tokens or [])

    metrics = {f.turn_id: f.values for f in out if isinstance(f, MetricsFrame) and "llm_speculative" in f.values}
    assert metrics[1]["llm_speculative"] == 1.0  # turn 1's reply is the speculation, adopted as generated
    assert metrics[2]["llm_cached_tokens"] > 0  # turn 2 continued from the confirmed state
