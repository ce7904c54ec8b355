"""VoicePipeline: links stages with bounded queues and runs them as asyncio tasks.

Each stage has one input queue with two lanes. Data frames wait in a bounded lane (backpressure: a slow sink slows
its producers instead of growing memory); system frames take an unbounded lane that is always read first, so an
interruption overtakes the data queued before it. Each stage runs two tasks: one processes data frames in order, the
other handles system frames at once. An interruption cancels the data frame in flight if it was queued before the
interruption, and drops the data frames queued before it (``EndFrame`` excepted); frames queued after it survive,
since they belong to the new turn.

The runner also owns the rest of an interrupted turn's lifetime: reply frames (``ReplyFrame``: tokens, text chunks,
audio) of an interrupted turn that still arrive after the interruption never reach the stage's ``process()``. An
interruption covers every turn up to the latest one whose reply had reached the stage; a ``turn_only`` interruption (a
turn the VAD ended too early and the user went on) covers that turn alone, so an older reply plays on and the resumed
turn's frames pass. System frames are never dropped, nor are the user's own frames (audio, transcripts) of any turn.
Stages therefore keep no record of interrupted turns; they only stop what they are doing when the interruption comes.

Observers (metrics, the live view) are told about each frame once, when the stage that produced it pushes it (the
pipeline tags it with ``Frame.origin``); stages that forward it unchanged, such as the memory governor's taps or a
plugin between two stages, do not show it again, so a reply or an error is never counted twice.

Setup order is a contract (``VoicePipeline.setup_order``; tests/test_pipeline.py asserts it): first every
``Source`` and ``Sink`` in chain order (they are cheap, and a wrong path or device fails before any model loads), then
every other stage in chain order. Each ``setup()`` is awaited before the next one starts, never two at once, so a
pass-through stage sees the stages before it set up and the ones after it not yet: the memory governor's taps
measure each model's load this way (``voicepipe.memory``). If a ``setup()`` fails, the stages already set up are
cleaned up again, in the same order.

How a run is assembled from ``pipeline.yaml`` (overrides of the source and sink, queue size, metrics, the memory
governor, observers such as the live view) is ``build_pipeline`` (``voicepipe.build``, re-exported here): the one
place that does it, for ``voicepipe run``, ``say``, ``transcribe``, the benchmarks and the tests.

A stage that raises does not take the pipeline down: the error is logged and an ``ErrorFrame`` goes downstream, so
only that turn fails. A fatal ``ErrorFrame`` (e.g. the microphone disappeared), the end of input (``EndFrame`` out of
the last stage) or cancellation (Ctrl-C) stops the pipeline; every task is cancelled and awaited and every stage is
cleaned up, whatever happened.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from voicepipe.errors import StageError, UserError
from voicepipe.frames import CancelFrame, EndFrame, ErrorFrame, Frame, InterruptionFrame, ReplyFrame
from voicepipe.speculation import SpeculationGate
from voicepipe.stage import Direction, Sink, Source, Stage, TurnCounter

if TYPE_CHECKING:
    from voicepipe.build import Overrides, PipelineRun, build_pipeline

__all__ = [
    "FrameQueue",
    "FrameObserver",
    "VoicePipeline",
    "PipelineError",
    "build_pipeline",
    "Overrides",
    "PipelineRun",
]

_ASSEMBLY = ("build_pipeline", "Overrides", "PipelineRun")


def __getattr__(name: str) -> object:
    """``build_pipeline`` and its types live in ``voicepipe.build``, which imports this module: re-exported lazily."""
    if name in _ASSEMBLY:
        from voicepipe import build

        return getattr(build, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


log = logging.getLogger("voicepipe.pipeline")


class PipelineError(Exception):
    """The pipeline stopped because of a fatal error; the message says which stage and why."""


class FrameQueue:
    """A stage's input queue: a bounded data lane and an unbounded system lane that is always read first."""

    def __init__(self, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be at least 1, got {maxsize}")
        self.maxsize = maxsize
        self._data: deque[tuple[int, Direction, Frame]] = deque()
        self._system: deque[tuple[int, Direction, Frame]] = deque()
        self._seq = itertools.count()
        self._cond = asyncio.Condition()

    def __len__(self) -> int:
        return len(self._data) + len(self._system)

    @property
    def data_size(self) -> int:
        return len(self._data)

    async def put(self, frame: Frame, direction: Direction = Direction.DOWNSTREAM) -> None:
        async with self._cond:
            if frame.is_system:
                self._system.append((next(self._seq), direction, frame))
            else:
                await self._cond.wait_for(lambda: len(self._data) < self.maxsize)
                self._data.append((next(self._seq), direction, frame))
            self._cond.notify_all()

    async def get_system(self) -> tuple[int, Direction, Frame]:
        async with self._cond:
            await self._cond.wait_for(lambda: bool(self._system))
            item = self._system.popleft()
            self._cond.notify_all()  # wake the data task waiting for this interruption to be taken
            return item

    def _data_ready(self) -> bool:
        """A data frame is handed out only once every interruption queued before it was taken: that interruption
        decides whether the frame is late (``_InterruptedTurns``)."""
        if not self._data:
            return False
        head = self._data[0][0]
        return not any(seq < head and isinstance(frame, InterruptionFrame) for seq, _, frame in self._system)

    async def get_data(self) -> tuple[int, Direction, Frame]:
        async with self._cond:
            await self._cond.wait_for(self._data_ready)
            item = self._data.popleft()
            self._cond.notify_all()  # wake producers waiting for room
            return item

    async def drop_data_before(self, seq: int, turn_id: int | None = None) -> int:
        """Drop queued data frames older than ``seq`` (of ``turn_id`` only, if given; never ``EndFrame``).

        Returns how many were dropped."""
        async with self._cond:
            kept = deque(
                item
                for item in self._data
                if item[0] > seq
                or isinstance(item[2], EndFrame)
                or (turn_id is not None and item[2].turn_id != turn_id)
            )
            dropped = len(self._data) - len(kept)
            self._data = kept
            self._cond.notify_all()
            return dropped


class FrameObserver(Protocol):
    """Sees every frame once, when the stage that produced it pushes it (metrics, live view); ``source`` is that
    stage. Forwarding a frame unchanged does not show it again, so an observer may accumulate what it sees. Must be
    quick and must not raise."""

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None: ...


class _InterruptedTurns:
    """Which turns' replies one stage must no longer see (see the module docstring)."""

    def __init__(self) -> None:
        self.reply_turn = 0  # the latest turn whose reply frames reached the stage
        self._up_to = 0  # replies of every turn up to this one were interrupted
        self._alone: set[int] = set()  # turns interrupted alone (InterruptionFrame.turn_only)

    def interrupt(self, interruption: InterruptionFrame) -> None:
        if interruption.turn_only:
            self._alone.add(interruption.turn_id)
        else:
            self._up_to = max(self._up_to, self.reply_turn)

    def is_late(self, frame: Frame) -> bool:
        """True for a reply frame of an interrupted turn; a reply frame that passes moves ``reply_turn`` on."""
        if not isinstance(frame, ReplyFrame) or frame.turn_id <= 0:
            return False
        if frame.turn_id <= self._up_to or frame.turn_id in self._alone:
            return True
        self.reply_turn = max(self.reply_turn, frame.turn_id)
        return False


class _StageRunner:
    """Drives one stage: a data task (in order) and a system task (at once); drops late frames of interrupted turns."""

    def __init__(self, pipeline: VoicePipeline, stage: Stage, queue: FrameQueue) -> None:
        self.pipeline = pipeline
        self.stage = stage
        self.queue = queue
        self.data_task: asyncio.Task[None] | None = None
        self.system_task: asyncio.Task[None] | None = None
        self._in_flight: tuple[int, Frame] | None = None
        self._in_flight_task: asyncio.Task[None] | None = None
        self._interrupted = _InterruptedTurns()
        self.finished = asyncio.Event()  # set once EndFrame has passed this stage

    def start(self) -> list[asyncio.Task[None]]:
        self.data_task = asyncio.create_task(self._data_loop(), name=f"{self.stage.name}:data")
        self.system_task = asyncio.create_task(self._system_loop(), name=f"{self.stage.name}:system")
        return [self.data_task, self.system_task]

    async def _call(self, frame: Frame, direction: Direction) -> None:
        try:
            if direction is Direction.DOWNSTREAM:
                await self.stage.process(frame)
            else:
                await self.stage.process_upstream(frame)
        except asyncio.CancelledError:
            raise
        except (Exception, SystemExit) as exc:  # isolate the failing stage (a plugin's sys.exit too): the turn fails
            message = f"{self.stage.name}: {type(exc).__name__}: {exc}"
            log.error("stage %s failed on %s (turn %d): %s", self.stage.name, type(frame).__name__, frame.turn_id, exc)
            log.debug("traceback", exc_info=exc)
            await self.pipeline.deliver_after(
                self.stage, ErrorFrame(message=message, stage=self.stage.name, turn_id=frame.turn_id, exception=exc)
            )

    async def _data_loop(self) -> None:
        while True:
            seq, direction, frame = await self.queue.get_data()
            if direction is Direction.DOWNSTREAM and self._interrupted.is_late(frame):
                log.debug(
                    "%s: dropped a late %s of interrupted turn %d", self.stage.name, type(frame).__name__, frame.turn_id
                )
                continue
            self._in_flight = (seq, frame)
            self._in_flight_task = asyncio.create_task(self._call(frame, direction), name=f"{self.stage.name}:frame")
            try:
                await asyncio.shield(self._in_flight_task)
            except asyncio.CancelledError:
                if self._in_flight_task.cancelled() and not self.data_task_cancelling():
                    continue  # only the frame was cancelled (interruption); keep serving
                self._in_flight_task.cancel()
                raise
            finally:
                self._in_flight = None
            if isinstance(frame, EndFrame):
                self.pipeline.ensure_end_forwarded(self.stage, frame)
                self.finished.set()
                return

    def data_task_cancelling(self) -> bool:
        task = self.data_task
        return task is not None and task.cancelling() > 0

    async def _system_loop(self) -> None:
        while True:
            seq, direction, frame = await self.queue.get_system()
            if isinstance(frame, InterruptionFrame) and direction is Direction.DOWNSTREAM:
                await self._interrupt(seq, frame)
            await self._call(frame, direction)
            if isinstance(frame, CancelFrame):
                return

    async def _interrupt(self, seq: int, interruption: InterruptionFrame) -> None:
        only = interruption.turn_id if interruption.turn_only else None
        self._interrupted.interrupt(interruption)
        dropped = await self.queue.drop_data_before(seq, only)
        in_flight, task = self._in_flight, self._in_flight_task
        cancelled = False
        if in_flight is not None and task is not None and not task.done():
            frame_seq, frame = in_flight
            if frame_seq < seq and not isinstance(frame, EndFrame) and only in (None, frame.turn_id):
                task.cancel()
                await asyncio.wait([task])  # unlike `await task`, never swallows our own cancellation
                cancelled = True
        if dropped or cancelled:
            log.debug(
                "%s: interruption dropped %d queued frame(s), cancelled in-flight: %s",
                self.stage.name,
                dropped,
                cancelled,
            )


def _with_gate(stages: Sequence[Stage]) -> list[Stage]:
    """Put a ``SpeculationGate`` in front of the first sink (or at the end) when a stage speculates and none is there."""
    stages = list(stages)
    if any(s.speculates for s in stages) and not any(isinstance(s, SpeculationGate) for s in stages):
        at = next((i for i, s in enumerate(stages) if isinstance(s, Sink)), len(stages))
        stages.insert(at, SpeculationGate())
    return stages


class VoicePipeline:
    """A linear chain of stages: the first is usually a ``Source``, the last a ``Sink``.

    A stage that speculates gets a ``SpeculationGate`` in front of the sink (``voicepipe.speculation``).
    ``run()`` sets every stage up (sources and sinks first: they are cheap and catch bad paths before models load),
    starts them, waits for the end of input or a fatal error, then tears everything down.
    """

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        queue_size: int = 32,
        observers: Sequence[FrameObserver] = (),
    ) -> None:
        if not stages:
            raise ValueError("a pipeline needs at least one stage")
        stages = _with_gate(stages)
        names = [s.name for s in stages]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"stage names must be unique; repeated: {', '.join(duplicates)}")
        self.stages = list(stages)
        self.queue_size = queue_size
        self.observers: list[FrameObserver] = list(observers)
        self.turns = TurnCounter()
        self._queues: list[FrameQueue] = []
        self._runners: list[_StageRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._done: asyncio.Future[None] | None = None
        self._end_pushed: set[int] = set()
        self._output_handlers: list[Callable[[Frame], None]] = []

    # -- wiring ----------------------------------------------------------------------------------------------------

    def stage(self, name: str) -> Stage:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)

    def on_output(self, handler: Callable[[Frame], None]) -> None:
        """Call ``handler`` for every frame that leaves the last stage."""
        self._output_handlers.append(handler)

    def _notify(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        for observer in self.observers:
            try:
                observer.on_frame(frame, source, direction)
            except Exception:  # an observer must never break the pipeline
                log.exception("observer %r failed", observer)

    def _make_push(self, index: int, direction: Direction) -> Callable[[Frame], object]:
        stage = self.stages[index]
        target = index + 1 if direction is Direction.DOWNSTREAM else index - 1

        async def push(frame: Frame) -> None:
            if frame.origin is None:  # first push: this stage produced it; later hops only forward it
                frame.origin = stage.name
                self._notify(frame, stage, direction)
            if isinstance(frame, EndFrame) and direction is Direction.DOWNSTREAM:
                self._end_pushed.add(index)
            if 0 <= target < len(self.stages):
                await self._queues[target].put(frame, direction)
            elif direction is Direction.DOWNSTREAM:
                self._on_pipeline_output(frame)
            # upstream frames leaving the first stage end there (observers have seen them)

        return push

    async def deliver_after(self, stage: Stage, frame: Frame) -> None:
        """Send ``frame`` downstream of ``stage`` on its behalf (used for errors)."""
        index = self.stages.index(stage)
        await self._make_push(index, Direction.DOWNSTREAM)(frame)

    def ensure_end_forwarded(self, stage: Stage, frame: EndFrame) -> None:
        """A stage that swallowed ``EndFrame`` would hang the pipeline: forward it on the stage's behalf."""
        index = self.stages.index(stage)
        if index not in self._end_pushed:
            log.debug("%s did not forward EndFrame; forwarding it", stage.name)
            self._end_pushed.add(index)
            task = asyncio.create_task(self._make_push(index, Direction.DOWNSTREAM)(frame))
            self._tasks.append(task)

    def _on_pipeline_output(self, frame: Frame) -> None:
        for handler in self._output_handlers:
            try:
                handler(frame)
            except Exception:
                log.exception("output handler failed")
        if self._done is None or self._done.done():
            return
        if isinstance(frame, EndFrame):
            self._done.set_result(None)
        elif isinstance(frame, ErrorFrame) and frame.fatal:
            self._done.set_exception(PipelineError(frame.message))
        elif isinstance(frame, CancelFrame):
            self._done.set_result(None)

    # -- running ---------------------------------------------------------------------------------------------------

    @property
    def setup_order(self) -> list[Stage]:
        """The order ``setup()`` runs in (see the module docstring): sources and sinks, then the rest, each group in
        chain order."""
        ends = [s for s in self.stages if isinstance(s, Source | Sink)]
        return ends + [s for s in self.stages if not isinstance(s, Source | Sink)]

    async def setup(self) -> None:
        """Set up every stage, one at a time, in ``setup_order``. On failure, what was set up is cleaned up again."""
        done: list[Stage] = []
        try:
            for stage in self.setup_order:
                stage.turns = self.turns
                try:
                    await stage.setup()
                except (UserError, StageError):  # already one line; a StageError (server, engine) exits 1
                    raise
                except (Exception, SystemExit) as exc:  # a plugin's bug: one line naming the stage, not a traceback
                    log.debug("setup of %s failed", stage.name, exc_info=exc)
                    raise UserError(f"stage '{stage.name}' failed to set up: {type(exc).__name__}: {exc}") from exc
                done.append(stage)
        except BaseException:
            await self._cleanup(done)
            raise

    async def run(self, *, setup: bool = True) -> None:
        """Run until the end of input, a fatal error (raised as ``PipelineError``) or cancellation."""
        loop = asyncio.get_running_loop()
        self._done = loop.create_future()
        self._queues = [FrameQueue(self.queue_size) for _ in self.stages]
        self._end_pushed.clear()
        for i, stage in enumerate(self.stages):
            stage.turns = self.turns
            stage.link(self._make_push(i, Direction.DOWNSTREAM), self._make_push(i, Direction.UPSTREAM))
        if setup:
            await self.setup()
        try:
            self._runners = [_StageRunner(self, s, q) for s, q in zip(self.stages, self._queues, strict=True)]
            for runner in self._runners:
                self._tasks.extend(runner.start())
            for i, stage in enumerate(self.stages):
                if isinstance(stage, Source):
                    self._tasks.append(asyncio.create_task(self._produce(i, stage), name=f"{stage.name}:produce"))
            await self._done
        finally:
            await self._teardown()

    async def _produce(self, index: int, source: Source) -> None:
        push = self._make_push(index, Direction.DOWNSTREAM)
        try:
            async for frame in source.frames():
                await push(frame)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # fatal: whoever runs the pipeline reports it (the CLI prints it once); an error log here printed it twice
            log.info("source %s failed: %s", source.name, exc)
            await push(ErrorFrame(message=f"{source.name}: {exc}", stage=source.name, fatal=True, exception=exc))
            return
        await push(EndFrame())

    async def interrupt(self, reason: str = "user speech") -> None:
        """Interrupt the reply from outside (e.g. a UI button): an InterruptionFrame enters after the first stage."""
        await self._make_push(0, Direction.DOWNSTREAM)(InterruptionFrame(reason=reason, turn_id=self.turns.current))

    async def _teardown(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._cleanup(self.stages)

    async def _cleanup(self, stages: Sequence[Stage]) -> None:
        for stage in stages:
            try:
                await stage.cleanup()
            except Exception:
                log.exception("cleanup of %s failed", stage.name)
            finally:
                stage.shutdown_worker()
