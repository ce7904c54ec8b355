"""Run stages and pipelines in tests: feed frames in, collect what comes out.

``run_stage(stage, frames)`` wires ``ListSource(frames) -> stage`` into a real ``VoicePipeline`` (same queues, same
interruption and error handling as production) and returns the frames the stage pushed downstream. A ``Pause(s)``
among the frames makes the source wait, so tests can place an interruption in time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass

from voicepipe.frames import EndFrame, Frame
from voicepipe.pipeline import VoicePipeline
from voicepipe.stage import Direction, Source, Stage

__all__ = ["Pause", "ListSource", "FrameCollector", "run_stage", "run_pipeline"]


@dataclass(frozen=True)
class Pause:
    """Among the frames given to ``ListSource``: wait this many seconds before the next frame."""

    seconds: float


class ListSource(Source):
    """A source that emits the given frames, then ends. A ``Pause`` item waits that long; an ``asyncio.Event`` item
    waits until the pipeline has set it (e.g. "the reply has been streamed"), at most ``event_timeout_s``."""

    def __init__(
        self,
        items: Iterable[Frame | Pause | asyncio.Event],
        *,
        name: str = "list-source",
        event_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(name=name)
        self.items = list(items)
        self.event_timeout_s = event_timeout_s

    async def frames(self) -> AsyncIterator[Frame]:
        for item in self.items:
            if isinstance(item, Pause):
                await asyncio.sleep(item.seconds)
            elif isinstance(item, asyncio.Event):
                await asyncio.wait_for(item.wait(), self.event_timeout_s)
            else:
                yield item


class FrameCollector:
    """An observer that records frames leaving the last stage (downstream) and frames sent upstream by any stage."""

    def __init__(self, pipeline: VoicePipeline) -> None:
        self.downstream: list[Frame] = []
        self.upstream: list[tuple[str, Frame]] = []
        self._last = pipeline.stages[-1]
        pipeline.on_output(self.downstream.append)
        pipeline.observers.append(self)

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is Direction.UPSTREAM:
            self.upstream.append((source.name if source else "", frame))

    def of_type(self, *types: type[Frame]) -> list[Frame]:
        return [f for f in self.downstream if isinstance(f, types)]


async def run_pipeline(
    stages: Sequence[Stage],
    frames: Iterable[Frame | Pause] = (),
    *,
    timeout: float = 120.0,
    queue_size: int = 32,
    keep_end: bool = False,
) -> list[Frame]:
    """Run ``ListSource(frames) -> stages...`` to the end of input and return the frames leaving the last stage.

    If the first stage is already a ``Source``, ``frames`` must be empty and no ``ListSource`` is added.
    """
    collector, _ = await run_pipeline_collect(stages, frames, timeout=timeout, queue_size=queue_size)
    return [f for f in collector.downstream if keep_end or not isinstance(f, EndFrame)]


async def run_pipeline_collect(
    stages: Sequence[Stage],
    frames: Iterable[Frame | Pause] = (),
    *,
    timeout: float = 120.0,
    queue_size: int = 32,
) -> tuple[FrameCollector, VoicePipeline]:
    """Like ``run_pipeline`` but returns the collector (downstream and upstream frames) and the pipeline."""
    chain = list(stages)
    items = list(frames)
    if not (chain and isinstance(chain[0], Source)):
        chain.insert(0, ListSource(items))
    elif items:
        raise ValueError("the first stage is a Source already; pass no frames")
    pipeline = VoicePipeline(chain, queue_size=queue_size)
    collector = FrameCollector(pipeline)
    await asyncio.wait_for(pipeline.run(), timeout)
    return collector, pipeline


async def run_stage(
    stage: Stage, frames: Iterable[Frame | Pause], *, setup: bool = True, timeout: float = 120.0
) -> list[Frame]:
    """Feed ``frames`` through one stage and return everything it pushed downstream (without the final EndFrame).

    With ``setup=False`` the stage's ``setup()`` is not called (for stages a test prepared itself).
    """
    source = ListSource(frames)
    pipeline = VoicePipeline([source, stage])
    collector = FrameCollector(pipeline)
    if not setup:
        # Mark the stage as set up by skipping VoicePipeline.setup and setting up only the source.
        source.turns = stage.turns = pipeline.turns
        await asyncio.wait_for(_run_without_setup(pipeline, source), timeout)
    else:
        await asyncio.wait_for(pipeline.run(), timeout)
    return [f for f in collector.downstream if not isinstance(f, EndFrame)]


async def _run_without_setup(pipeline: VoicePipeline, source: Source) -> None:
    await source.setup()
    await pipeline.run(setup=False)
