"""The stage contract: override one method, ``process(frame)``, and push what you produce.

A stage handles the frame types it knows, pushes its output with ``await self.push(frame)``, and forwards every other
frame unchanged (the default ``process`` does exactly that). Model loading happens in ``setup()``, never in the
constructor; blocking model calls go through ``run_blocking`` so the event loop never blocks. Each stage gets one
dedicated worker thread for that (a ``voicepipe.worker.Worker``, started on first use): engines such as MLX tie
generation to one thread.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict

from voicepipe.frames import Frame
from voicepipe.worker import Worker

__all__ = ["Direction", "StageConfig", "Stage", "Source", "Sink", "TurnCounter"]

T = TypeVar("T")


class Direction(enum.Enum):
    DOWNSTREAM = "downstream"
    UPSTREAM = "upstream"


class StageConfig(BaseModel):
    """Base of every stage's config. Unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TurnCounter:
    """Hands out turn ids (1, 2, ...). One per pipeline, shared by its stages."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self.current = 0

    def next(self) -> int:
        self.current = next(self._ids)
        return self.current


PushFn = Callable[[Frame], Awaitable[None]]


class Stage:
    """Base of all stages. Subclasses set ``Config`` to their pydantic config model and override ``process``."""

    Config: ClassVar[type[StageConfig]] = StageConfig
    #: True for stages whose ``memory_footprint`` matters to the memory governor.
    holds_model: ClassVar[bool] = False

    def __init__(self, config: StageConfig | None = None, *, name: str | None = None) -> None:
        self.config = config if config is not None else self.Config()
        self.name = name or type(self).__name__
        self.turns = TurnCounter()
        self._downstream: PushFn | None = None
        self._upstream: PushFn | None = None
        self.worker = Worker(self.name)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        """Load models and open resources. Called once before the first frame; the default does nothing."""

    async def cleanup(self) -> None:
        """Release resources. Called once at shutdown, also after errors and Ctrl-C."""

    # -- the one method to override ------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        """Handle one frame travelling downstream. The default forwards it; subclasses forward what they do not handle.

        Data frames are processed one at a time, in order. System frames are processed as soon as they arrive, possibly
        while a data frame is still in ``process`` (an interruption first cancels that call if it belongs to the
        interrupted turn), so a stage's handling of system frames must be quick and must not assume exclusivity. Reply
        frames of an interrupted turn that arrive after the interruption never get here: the pipeline drops them.
        """
        await self.push(frame)

    async def process_upstream(self, frame: Frame) -> None:
        """Handle a frame travelling upstream (e.g. a sink's ``PlaybackFrame``). The default forwards it upstream."""
        await self.push(frame, Direction.UPSTREAM)

    # -- helpers -------------------------------------------------------------------------------------------------

    async def push(self, frame: Frame, direction: Direction = Direction.DOWNSTREAM) -> None:
        """Send a frame to the next stage (or, upstream, to the previous one). Waits while the next queue is full."""
        target = self._downstream if direction is Direction.DOWNSTREAM else self._upstream
        if target is not None:
            await target(frame)

    def link(self, downstream: PushFn | None, upstream: PushFn | None) -> None:
        """Called by the pipeline (or a test harness) to connect this stage."""
        self._downstream = downstream
        self._upstream = upstream

    async def run_blocking(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on this stage's own worker thread without blocking the event loop."""
        return await self.worker.run(fn, *args, **kwargs)

    def shutdown_worker(self) -> None:
        """Stop the worker thread (after cleanup). Work still running finishes in the background."""
        self.worker.shutdown()

    @property
    def speculates(self) -> bool:
        """True when this stage may send speculative replies (``SpeculationStartFrame``): the pipeline then puts a
        ``SpeculationGate`` in front of the sink."""
        return False

    # -- memory governor hooks (model-holding stages override) ---------------------------------------------------

    @property
    def memory_footprint(self) -> int:
        """Bytes of resident model weights this stage holds now (0 when it holds none or is unloaded)."""
        return 0

    @property
    def is_loaded(self) -> bool:
        return True

    async def unload(self) -> None:
        """Free model weights, keeping whatever state the next turn needs."""

    async def load(self) -> None:
        """Load the weights again after ``unload``."""


class Source(Stage):
    """A stage that produces frames by itself (microphone, file). The pipeline sends ``EndFrame`` after it ends."""

    async def frames(self) -> AsyncIterator[Frame]:
        """Yield input frames until the input ends. Must be overridden."""
        raise NotImplementedError(f"{type(self).__name__}.frames() is not implemented")
        yield  # pragma: no cover - makes this an async generator


class Sink(Stage):
    """The last stage (speaker, file). It reports playback upstream and sends ``EndOfTurnFrame`` per finished turn
    (``voicepipe.audio.sink.AudioSink`` implements that protocol for sinks of reply audio)."""
