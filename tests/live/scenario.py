"""Run a live pipeline (mic -> ... -> speaker) on the test PulseAudio server while a script plays the user."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import numpy as np

from tests.support.speech import SAMPLE_RATE, espeak, pad, piper
from voicepipe.audio.device import MicConfig, MicSource, SpeakerConfig, SpeakerSink
from voicepipe.frames import BotSpeakingFrame, EndOfTurnFrame, Frame, TranscriptFrame
from voicepipe.pipeline import VoicePipeline, build_pipeline
from voicepipe.stage import Direction, Stage
from voicepipe.testing.harness import FrameCollector
from voicepipe.vad.turn_taking import TurnTaking, TurnTakingConfig


class Timeline:
    """Observer: every frame that moves, with the monotonic time it moved and its direction."""

    def __init__(self) -> None:
        self.events: list[tuple[float, str, Direction, Frame]] = []

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        self.events.append((time.monotonic(), source.name if source else "", direction, frame))

    def of(self, kind: type[Frame], direction: Direction | None = None) -> list[tuple[float, str, Frame]]:
        return [(t, n, f) for t, n, d, f in self.events if isinstance(f, kind) and direction in (None, d)]

    def first_time(self, kind: type[Frame], **match: object) -> float | None:
        for t, _, _, f in self.events:
            if isinstance(f, kind) and all(getattr(f, k) == v for k, v in match.items()):
                return t
        return None


def live_pipeline(middle: list[Stage], *, mode: str | None = "echo-guard", barge_in_ms: int = 500) -> VoicePipeline:
    """mic -> turn-taking (left out when ``mode`` is None) -> ``middle`` -> speaker, on the "pulse" device."""
    turn_taking = [TurnTaking(TurnTakingConfig(mode=mode, barge_in_ms=barge_in_ms), name="turn-taking")] if mode else []
    stages = [
        MicSource(MicConfig(device="pulse"), name="mic"),
        *turn_taking,
        *middle,
        SpeakerSink(SpeakerConfig(device="pulse"), name="speaker"),
    ]
    return build_pipeline(stages).pipeline


def question(text: str) -> np.ndarray:
    """Spoken question at 16 kHz with a little silence around it."""
    return pad(espeak(text), lead=0.3, trail=0.3)


def neural_question(text: str, piper_model: str) -> np.ndarray:
    """The same, read by the Piper joe voice (see ``tests.support.speech.piper``)."""
    return pad(piper(text, piper_model), lead=0.3, trail=0.3)


async def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.02)


async def converse(
    pipeline: VoicePipeline, script: Callable[[Timeline, FrameCollector], Awaitable[None]], *, timeout: float = 120
) -> tuple[Timeline, FrameCollector]:
    """Set the pipeline up, run ``script`` against it while it runs, then stop it (as Ctrl-C would)."""
    timeline = Timeline()
    pipeline.observers.append(timeline)
    collector = FrameCollector(pipeline)
    await pipeline.setup()
    run = asyncio.create_task(pipeline.run(setup=False))
    try:
        await asyncio.wait_for(script(timeline, collector), timeout)
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    return timeline, collector


def ended_turns(collector: FrameCollector) -> list[EndOfTurnFrame]:
    return [f for f in collector.downstream if isinstance(f, EndOfTurnFrame)]


def transcripts(timeline: Timeline) -> list[TranscriptFrame]:
    return [f for _, _, f in timeline.of(TranscriptFrame, Direction.DOWNSTREAM) if f.final]


def bot_started(timeline: Timeline) -> bool:
    return any(f.speaking for _, n, f in timeline.of(BotSpeakingFrame, Direction.UPSTREAM) if n == "speaker")


__all__ = ["SAMPLE_RATE", "Timeline", "live_pipeline", "question", "wait_for", "converse", "ended_turns"]


def real_llm(gguf: str, *, max_tokens: int = 40, seed: int = 0, temperature: float = 0.6) -> Stage:
    """The LLM stage on llama.cpp with ``gguf``: the tiny random Qwen3.5 (real engine and tokenizer, gibberish words)
    or a real chat model (``chat_gguf``)."""
    from voicepipe.llm.stage import LLMConfig, LLMStage

    config = LLMConfig(
        engine="llamacpp",
        model=gguf,
        max_tokens=max_tokens,
        seed=seed,
        temperature=temperature,
        n_ctx=2048,
        progress=False,
    )
    return LLMStage(config, name="llm")
