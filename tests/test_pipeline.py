"""The pipeline core: ordering, interruption overtaking data, error isolation, shutdown, backpressure."""

from __future__ import annotations

import asyncio

import pytest

from voicepipe.frames import (
    EndFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    TextChunkFrame,
    TranscriptFrame,
)
from voicepipe.pipeline import FrameQueue, PipelineError, VoicePipeline
from voicepipe.stage import Sink, Source, Stage
from voicepipe.testing.harness import ListSource, Pause, run_pipeline, run_stage


class Upper(Stage):
    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame):
            await self.push(TextChunkFrame(text=frame.text.upper(), turn_id=frame.turn_id))
        else:
            await self.push(frame)


class Slow(Stage):
    """Takes ``delay`` seconds per transcript; records what it saw and what was cancelled."""

    def __init__(self, delay: float, **kw) -> None:
        super().__init__(**kw)
        self.delay = delay
        self.seen: list[str] = []
        self.cancelled: list[str] = []
        self.interruptions = 0

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame):
            self.seen.append(frame.text)
            try:
                await asyncio.sleep(self.delay)
            except asyncio.CancelledError:
                self.cancelled.append(frame.text)
                raise
            await self.push(frame)
        else:
            if isinstance(frame, InterruptionFrame):
                self.interruptions += 1
            await self.push(frame)


class Boom(Stage):
    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame) and frame.text == "bad":
            raise RuntimeError("engine exploded")
        await self.push(frame)


async def test_frames_pass_in_order_and_unknown_frames_pass_through():
    frames = [TranscriptFrame(text=f"t{i}", turn_id=i) for i in range(20)]
    out = await run_stage(Upper(), frames)
    assert [f.text for f in out] == [f"T{i}" for i in range(20)]
    assert [f.turn_id for f in out] == list(range(20))


async def test_interruption_overtakes_queued_data_and_cancels_in_flight():
    slow = Slow(0.5)
    items = [
        TranscriptFrame(text="old-1", turn_id=1),
        TranscriptFrame(text="old-2", turn_id=1),
        TranscriptFrame(text="old-3", turn_id=1),
        Pause(0.1),
        InterruptionFrame(turn_id=1),
        TranscriptFrame(text="new", turn_id=2),
    ]
    out = await run_stage(slow, items)
    texts = [f.text for f in out if isinstance(f, TranscriptFrame)]
    assert texts == ["new"], "queued frames of the interrupted turn must be dropped, the new turn's kept"
    assert slow.cancelled == ["old-1"], "the frame in flight must be cancelled"
    assert slow.seen == ["old-1", "new"], "the queued 0.5 s frames must be skipped, not processed"
    assert any(isinstance(f, InterruptionFrame) for f in out)


async def test_a_turn_only_interruption_drops_that_turn_and_leaves_the_others():
    """A turn the VAD ended too early and the user resumed: only its work goes, an older turn's goes on."""
    slow = Slow(0.3)
    items = [
        TranscriptFrame(text="older", turn_id=1),
        TranscriptFrame(text="fragment", turn_id=2),
        Pause(0.1),
        InterruptionFrame(turn_id=2, turn_only=True),
        TranscriptFrame(text="resumed", turn_id=3),
    ]
    out = await run_stage(slow, items)
    assert [f.text for f in out if isinstance(f, TranscriptFrame)] == ["older", "resumed"]
    assert slow.cancelled == [], "the older turn in flight must finish"


class Recorder(Stage):
    """Records every frame that reaches ``process()``."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.processed: list[Frame] = []

    async def process(self, frame: Frame) -> None:
        self.processed.append(frame)
        await self.push(frame)


def _texts(frames: list[Frame]) -> list[str]:
    return [f.text for f in frames if isinstance(f, TextChunkFrame | TranscriptFrame)]


async def test_late_reply_frames_of_an_interrupted_turn_never_reach_process():
    """The rest of an interrupted reply that arrives after the interruption is dropped by the pipeline, not by the
    stage; the user's own frames, system frames and the next turn's reply pass."""
    recorder = Recorder()
    items = [
        TextChunkFrame(text="reply-1", turn_id=1),
        Pause(0.05),
        InterruptionFrame(turn_id=1),
        TextChunkFrame(text="late-1", turn_id=1),  # still on its way when the user barged in
        TranscriptFrame(text="question-2", turn_id=2),
        TextChunkFrame(text="reply-2", turn_id=2),
    ]
    await run_stage(recorder, items)
    assert _texts(recorder.processed) == ["reply-1", "question-2", "reply-2"]
    assert [type(f) for f in recorder.processed if f.is_system] == [InterruptionFrame]


async def test_an_interruption_covers_every_reply_up_to_the_latest_the_stage_saw_not_its_turn_id():
    """A barge-in labelled with the next turn (as a UI may send it) still leaves that turn's reply alone."""
    recorder = Recorder()
    items = [
        TextChunkFrame(text="reply-1", turn_id=1),
        Pause(0.05),
        InterruptionFrame(turn_id=2),
        TextChunkFrame(text="reply-2", turn_id=2),
        TextChunkFrame(text="late-1", turn_id=1),
    ]
    await run_stage(recorder, items)
    assert _texts(recorder.processed) == ["reply-1", "reply-2"]


async def test_a_turn_only_interruption_drops_late_frames_of_that_turn_alone():
    """A resumed turn: its late reply is dropped; an older reply goes on and the new turn's frames pass."""
    recorder = Recorder()
    items = [
        TextChunkFrame(text="reply-1", turn_id=1),
        TextChunkFrame(text="reply-2", turn_id=2),
        Pause(0.05),
        InterruptionFrame(turn_id=2, turn_only=True),
        TextChunkFrame(text="late-2", turn_id=2),
        TextChunkFrame(text="more-1", turn_id=1),
        TranscriptFrame(text="resumed", turn_id=3),
        TextChunkFrame(text="reply-3", turn_id=3),
    ]
    await run_stage(recorder, items)
    assert _texts(recorder.processed) == ["reply-1", "reply-2", "more-1", "resumed", "reply-3"]


async def test_a_raising_stage_fails_the_turn_not_the_pipeline():
    frames = [
        TranscriptFrame(text="ok-1", turn_id=1),
        TranscriptFrame(text="bad", turn_id=2),
        TranscriptFrame(text="ok-3", turn_id=3),
    ]
    out = await run_stage(Boom(), frames)
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert len(errors) == 1 and errors[0].turn_id == 2 and "engine exploded" in errors[0].message
    assert errors[0].stage == "Boom" and not errors[0].fatal
    assert [f.text for f in out if isinstance(f, TranscriptFrame)] == ["ok-1", "ok-3"]


async def test_clean_shutdown_leaves_no_task_and_cleans_every_stage():
    cleaned: list[str] = []

    class Tracked(Stage):
        async def cleanup(self) -> None:
            cleaned.append(self.name)

    before = asyncio.all_tasks()
    await run_pipeline([Tracked(name="a"), Tracked(name="b")], [TranscriptFrame(text="x")])
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert sorted(cleaned) == ["a", "b"]


async def test_cancellation_like_ctrl_c_tears_down_without_leftover_tasks():
    cleaned: list[str] = []

    class Forever(Source):
        async def frames(self):
            while True:
                await asyncio.sleep(0.01)
                yield TranscriptFrame(text="tick")

        async def cleanup(self) -> None:
            cleaned.append("source")

    pipeline = VoicePipeline([Forever(), Upper()])
    before = asyncio.all_tasks()
    task = asyncio.create_task(pipeline.run())
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.sleep(0)
    assert asyncio.all_tasks() - before == set()
    assert cleaned == ["source"]


async def test_backpressure_bounds_memory_when_the_sink_is_slow():
    class CountingSink(Sink):
        def __init__(self) -> None:
            super().__init__()
            self.count = 0

        async def process(self, frame: Frame) -> None:
            if isinstance(frame, TranscriptFrame):
                await asyncio.sleep(0.002)
                self.count += 1
            await self.push(frame)

    produced = 0

    class Fast(Source):
        async def frames(self):
            nonlocal produced
            for i in range(200):
                produced += 1
                yield TranscriptFrame(text=str(i))

    sink = CountingSink()
    pipeline = VoicePipeline([Fast(), Stage(name="mid"), sink], queue_size=4)
    gaps: list[int] = []

    async def watch():
        while True:
            gaps.append(produced - sink.count)
            await asyncio.sleep(0.001)

    watcher = asyncio.create_task(watch())
    await pipeline.run()
    watcher.cancel()
    assert sink.count == 200
    assert max(gaps) <= 4 * 2 + 3, f"producer ran {max(gaps)} frames ahead of a slow sink"


async def test_a_stage_that_swallows_end_frame_does_not_hang_the_pipeline():
    class Swallow(Stage):
        async def process(self, frame: Frame) -> None:
            if not isinstance(frame, EndFrame):
                await self.push(frame)

    out = await run_pipeline([Swallow(), Upper()], [TranscriptFrame(text="a")], timeout=5, keep_end=True)
    assert isinstance(out[-1], EndFrame)


async def test_a_failing_source_stops_the_pipeline_with_a_pipeline_error():
    class Broken(Source):
        async def frames(self):
            yield TranscriptFrame(text="first")
            raise OSError("device disappeared")

    with pytest.raises(PipelineError, match="device disappeared"):
        await VoicePipeline([Broken(), Upper()]).run()


async def test_upstream_frames_reach_earlier_stages():
    from voicepipe.frames import PlaybackFrame
    from voicepipe.stage import Direction

    heard: list[str] = []

    class Listener(Stage):
        async def process_upstream(self, frame: Frame) -> None:
            if isinstance(frame, PlaybackFrame):
                heard.append(frame.text)
            await super().process_upstream(frame)

    class Reporter(Sink):
        async def process(self, frame: Frame) -> None:
            if isinstance(frame, TranscriptFrame):
                await self.push(PlaybackFrame(text=frame.text, finished=True), Direction.UPSTREAM)
            await self.push(frame)

    await run_pipeline([Listener(), Stage(name="mid"), Reporter()], [TranscriptFrame(text="hello")])
    assert heard == ["hello"]


async def test_frame_queue_system_lane_overtakes_and_drop_keeps_end_frame():
    q = FrameQueue(8)
    await q.put(TranscriptFrame(text="a"))
    await q.put(EndFrame())
    await q.put(InterruptionFrame())
    seq, _, frame = await q.get_system()
    assert isinstance(frame, InterruptionFrame)
    assert await q.drop_data_before(seq) == 1
    _, _, remaining = await q.get_data()
    assert isinstance(remaining, EndFrame)


async def test_frame_queue_hands_out_no_data_frame_queued_after_an_interruption_not_yet_taken():
    """Whether a data frame is late depends on the interruptions before it, so the system task must take them first
    (it may be busy with an earlier system frame while the data task waits)."""
    q = FrameQueue(4)
    await q.put(InterruptionFrame(turn_id=1))
    await q.put(TextChunkFrame(text="late", turn_id=1))
    data = asyncio.create_task(q.get_data())
    await asyncio.sleep(0.05)
    assert not data.done(), "a data frame overtook the interruption queued before it"
    _, _, first = await q.get_system()
    assert isinstance(first, InterruptionFrame)
    _, _, frame = await asyncio.wait_for(data, 1)
    assert frame.text == "late"


def test_duplicate_stage_names_are_rejected():
    with pytest.raises(ValueError, match="unique"):
        VoicePipeline([Stage(name="x"), Stage(name="x")])


async def test_list_source_is_a_source():
    assert isinstance(ListSource([]), Source)


async def test_setup_runs_sources_and_sinks_first_then_the_rest_in_chain_order_one_at_a_time():
    """The documented contract (pipeline.py): the memory governor's taps rely on each setup() finishing before the
    next starts, with the stages before a tap set up and the ones after it not yet."""
    log: list[str] = []
    running: list[str] = []

    class Recorded(Stage):
        async def setup(self) -> None:
            assert not running, f"{self.name} set up while {running} was still setting up"
            running.append(self.name)
            await asyncio.sleep(0)  # give a concurrent setup the chance to start
            log.append(self.name)
            running.remove(self.name)

    class Src(Recorded, Source):
        async def frames(self):
            yield TranscriptFrame(text="x", turn_id=1)

    class Out(Recorded, Sink):
        pass

    stages = [Src(name="src"), Recorded(name="a"), Recorded(name="b"), Recorded(name="c"), Out(name="out")]
    pipeline = VoicePipeline(stages)
    assert [s.name for s in pipeline.setup_order] == ["src", "out", "a", "b", "c"]
    await pipeline.run()
    assert log == ["src", "out", "a", "b", "c"]
