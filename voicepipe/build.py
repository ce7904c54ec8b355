"""Assemble a run: the one place that turns a pipeline file (or a list of stages) into a running ``VoicePipeline``.

``build_pipeline`` does, in this order: swap the source and sink for what the run asks (``--input``/``--output``
WAV files, or a ready stage such as a script's simulated user), start the metrics file before any model loads,
construct the stages (cheap: constructors load nothing), install the memory governor's taps, and link everything
with the file's queue size and the observers (metrics first, then the caller's, e.g. the live view). It returns a
``PipelineRun``: the pipeline plus what must be started and stopped around it (the jetsam watchdog, the metrics
file), so ``voicepipe run``, ``say``, ``transcribe``, the benchmarks and the tests' drivers all run the same wiring.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from voicepipe.config import LoadedPipeline, StageSpec
from voicepipe.errors import UserError
from voicepipe.memory import MemoryConfig, MemoryGovernor, RssWatchdog, apply_memory
from voicepipe.metrics import JsonlWriter, MetricsObserver, TurnMetrics
from voicepipe.outfile import OutputError, OutputFile
from voicepipe.pipeline import FrameObserver, VoicePipeline
from voicepipe.stage import Sink, Source, Stage

__all__ = ["Overrides", "PipelineRun", "build_pipeline"]

log = logging.getLogger("voicepipe.build")

DEFAULT_QUEUE_SIZE = 32

Link = Stage | StageSpec  # a ready stage, or a validated entry of pipeline.yaml not constructed yet


@dataclass(frozen=True)
class Overrides:
    """What one run changes in the pipeline file.

    ``input``/``output``: read the user's speech from an audio file / write the replies to one, in place of the
    file's source / sink (or in front of / after the chain when it has none); ``realtime`` paces ``input`` like a
    microphone. ``source``/``sink``: a ready stage in that place instead (a script's scripted user, a probe).
    ``queue_size``, ``memory`` and ``jetsam_mb`` replace the file's settings of that name.
    """

    input: str | None = None
    output: str | None = None
    realtime: bool = False
    source: Stage | None = None
    sink: Stage | None = None
    queue_size: int | None = None
    memory: MemoryConfig | None = None
    jetsam_mb: float | None = None


@dataclass
class PipelineRun:
    """An assembled pipeline and what must be started and stopped around it; ``await run()`` does both."""

    pipeline: VoicePipeline
    metrics: MetricsObserver
    governor: MemoryGovernor | None = None
    watchdog: RssWatchdog | None = None
    writer: JsonlWriter | None = None
    _closed: bool = field(default=False, repr=False)

    @property
    def stages(self) -> list[Stage]:
        return self.pipeline.stages

    def start(self) -> None:
        """Start the jetsam watchdog (if any); ``run()`` calls it."""
        if self.watchdog is not None and not self.watchdog.running:
            self.watchdog.start()

    async def setup(self) -> None:
        """Set the stages up ahead of ``run(setup=False)``, to time model loading apart from the run."""
        self.start()
        try:
            await self.pipeline.setup()
        except BaseException:
            self.close(failed=True)
            raise

    async def run(self, *, setup: bool = True) -> None:
        """Run the pipeline to its end, then ``close()``, whatever happened (a failure, Ctrl-C)."""
        self.start()
        failed = True
        try:
            await self.pipeline.run(setup=setup)
            failed = False
        finally:
            self.close(failed=failed)

    def close(self, *, failed: bool = False) -> None:
        """Stop the watchdog, report unfinished turns and move the metrics file into place.

        A metrics file that could not be written raises ``OutputError``, unless the run itself ``failed``: then its
        own failure is the one reported and this one is logged."""
        if self._closed:
            return
        self._closed = True
        if self.watchdog is not None:
            self.watchdog.stop()
        self.metrics.flush()
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OutputError as exc:
            if not failed:
                raise
            log.error("%s", exc)

    def discard(self) -> None:
        """Nothing ran (the caller failed before ``run()``): stop the watchdog, keep the previous metrics file."""
        if self._closed:
            return
        self._closed = True
        if self.watchdog is not None:
            self.watchdog.stop()
        if self.writer is not None:
            self.writer.output.discard()


def build_pipeline(
    pipeline: LoadedPipeline | Sequence[Link],
    overrides: Overrides | None = None,
    *,
    metrics_path: str | Path | None = None,
    on_turn: Callable[[TurnMetrics], None] | None = None,
    observers: Sequence[FrameObserver] = (),
) -> PipelineRun:
    """Assemble a run from a loaded ``pipeline.yaml`` (or a list of stages and specs) and this run's ``overrides``.

    ``metrics_path``: write one JSON line per finished turn there (started now, before any model loads);
    ``on_turn`` is called with each finished turn too. ``observers`` see every frame, after the metrics observer.
    Nothing is loaded or started here: ``PipelineRun.run()`` does that. ``UserError`` for a bad override.
    """
    overrides = overrides or Overrides()
    if isinstance(pipeline, LoadedPipeline):
        links: list[Link] = list(pipeline.stages)
        settings_queue, settings_memory = pipeline.settings.queue_size, pipeline.settings.memory
    else:
        links, settings_queue, settings_memory = list(pipeline), DEFAULT_QUEUE_SIZE, None
    links = _swap_ends(links, overrides)
    writer = _metrics_writer(metrics_path, links[-1])
    try:
        stages = [link.build() if isinstance(link, StageSpec) else link for link in links]
        memory = overrides.memory if overrides.memory is not None else settings_memory
        stages, governor, watchdog = apply_memory(stages, memory, overrides.jetsam_mb)

        def finished(turn: TurnMetrics) -> None:
            if writer is not None:
                writer(turn)
            if on_turn is not None:
                on_turn(turn)

        metrics = MetricsObserver(finished)
        queue_size = overrides.queue_size if overrides.queue_size is not None else settings_queue
        built = VoicePipeline(stages, queue_size=queue_size, observers=[metrics, *observers])
    except BaseException:
        if writer is not None:
            writer.output.discard()  # nothing ran: the previous metrics file stays
        raise
    return PipelineRun(built, metrics, governor, watchdog, writer)


def _kind(link: Link) -> type[Stage]:
    return type(link) if isinstance(link, Stage) else link.stage_class


def _swap_ends(links: list[Link], overrides: Overrides) -> list[Link]:
    """Put the run's source and sink in place of the chain's (or add them when it has none)."""
    from voicepipe.audio.wav import WavSink, WavSinkConfig, WavSource, WavSourceConfig, audio_format

    source: Link | None = overrides.source
    if source is None and overrides.input:
        config = WavSourceConfig(path=overrides.input, realtime=overrides.realtime)
        source = StageSpec(WavSource, config, "input", "wav-source")
    if source is not None:
        if links and issubclass(_kind(links[0]), Source):
            links[0] = source
        else:
            links.insert(0, source)
    sink: Link | None = overrides.sink
    if sink is None and overrides.output:
        audio_format(overrides.output)  # one line for a suffix no audio format has
        OutputFile(overrides.output, what="--output").check()
        sink = StageSpec(WavSink, WavSinkConfig(path=overrides.output), "output", "wav-sink")
    if sink is not None:
        if links and issubclass(_kind(links[-1]), Sink):
            links[-1] = sink
        else:
            links.append(sink)
    if not links or not issubclass(_kind(links[0]), Source):
        raise UserError("the pipeline's first stage must be a source (e.g. 'mic'); or pass --input FILE.wav")
    return links


def _metrics_writer(path: str | Path | None, last: Link) -> JsonlWriter | None:
    """Start this run's metrics file before any model loads; refuse a path the reply audio also goes to."""
    if path is None:
        return None
    from voicepipe.audio.wav import WavSinkConfig

    writer = JsonlWriter(path)
    writer.output.check()
    sink = getattr(last, "config", None)
    if isinstance(sink, WavSinkConfig) and writer.output.same_as(OutputFile(sink.path)):
        raise UserError(f"--metrics {path}: the reply audio goes to that file too; give the metrics another path")
    writer.open()
    return writer
