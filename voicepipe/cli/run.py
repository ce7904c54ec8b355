"""``voicepipe run PIPELINE``: run a pipeline (talk to it), or process a WAV file with --input/--output."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math

from voicepipe.audio.wav import WavSink, WavSinkConfig, WavSource, WavSourceConfig, audio_format
from voicepipe.config import StageSpec, load_pipeline
from voicepipe.errors import UserError
from voicepipe.memory import apply_memory
from voicepipe.metrics import JsonlWriter, MetricsObserver
from voicepipe.outfile import OutputError, OutputFile
from voicepipe.pipeline import VoicePipeline
from voicepipe.stage import Sink, Source

HELP = "run a pipeline: talk to it, or feed it a WAV file with --input and write the reply with --output"
log = logging.getLogger("voicepipe.run")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="path of the pipeline file (e.g. pipeline.yaml)")
    parser.add_argument("--input", metavar="IN.wav", help="read the user's speech from this file instead of the mic")
    parser.add_argument(
        "--output",
        metavar="OUT.wav",
        help="write the replies to this audio file (.wav, .flac, .ogg) instead of the speaker",
    )
    parser.add_argument("--metrics", metavar="M.jsonl", help="write one JSON line of latencies per turn")
    parser.add_argument("--realtime", action="store_true", help="with --input: pace the file like a live microphone")
    parser.add_argument(
        "--jetsam-mb",
        type=float,
        metavar="N",
        help="simulate iOS's jetsam: kill the process (SIGKILL) when its resident memory crosses N MB",
    )
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--quiet", action="store_true", help="print nothing but errors")
    output.add_argument("--json", action="store_true", help="print one JSON line per event, for scripts")


def apply_overrides(specs: list[StageSpec], args: argparse.Namespace) -> list[StageSpec]:
    """Swap the pipeline's source/sink for WAV files when --input/--output are given."""
    specs = list(specs)
    if args.input:
        spec = StageSpec(WavSource, WavSourceConfig(path=args.input, realtime=args.realtime), "input", "wav-source")
        if specs and issubclass(specs[0].stage_class, Source):
            specs[0] = spec
        else:
            specs.insert(0, spec)
    if args.output:
        audio_format(args.output)  # one line for a suffix no audio format has
        OutputFile(args.output, what="--output").check()
        spec = StageSpec(WavSink, WavSinkConfig(path=args.output), "output", "wav-sink")
        if specs and issubclass(specs[-1].stage_class, Sink):
            specs[-1] = spec
        else:
            specs.append(spec)
    if not specs or not issubclass(specs[0].stage_class, Source):
        raise UserError("the pipeline's first stage must be a source (e.g. 'mic'); or pass --input FILE.wav")
    return specs


def _native_chatter_hidden(stages: list, args: argparse.Namespace):
    """With a microphone or speaker, PortAudio/ALSA diagnostics go to the debug log (shown with -vv), not the screen."""
    import contextlib

    from voicepipe.audio.device import MicSource, SpeakerSink
    from voicepipe.audio.native_stderr import capture_native_stderr

    if getattr(args, "verbose", 0) >= 2 or not any(isinstance(s, MicSource | SpeakerSink) for s in stages):
        return contextlib.nullcontext()
    return capture_native_stderr()


def _metrics_writer(args: argparse.Namespace, specs: list[StageSpec]) -> JsonlWriter | None:
    """Start this run's metrics file before any model loads; refuse a path the audio also goes to."""
    if not args.metrics:
        return None
    writer = JsonlWriter(args.metrics)
    writer.output.check()
    sink = specs[-1].config if specs and issubclass(specs[-1].stage_class, WavSink) else None
    if isinstance(sink, WavSinkConfig) and writer.output.same_as(OutputFile(sink.path)):
        raise UserError(
            f"--metrics {args.metrics}: the reply audio goes to that file too; give the metrics another path"
        )
    writer.open()
    return writer


def run(args: argparse.Namespace) -> int:
    from voicepipe.cli.view import make_view

    if args.jetsam_mb is not None and not (math.isfinite(args.jetsam_mb) and args.jetsam_mb > 0):
        raise UserError(f"--jetsam-mb {args.jetsam_mb:g}: the limit must be a positive number of MB")
    loaded = load_pipeline(args.pipeline)
    specs = apply_overrides(loaded.stages, args)
    writer = _metrics_writer(args, specs)
    try:
        view = make_view(quiet=args.quiet, json_lines=args.json)
    except BaseException:
        if writer is not None:
            writer.output.discard()
        raise

    def on_turn(turn):
        if writer is not None:
            writer(turn)
        view.turn_finished(turn)

    metrics = MetricsObserver(on_turn)
    watchdog = None
    started = failed = False
    try:
        stages, _, watchdog = apply_memory([spec.build() for spec in specs], loaded.settings.memory, args.jetsam_mb)
        pipeline = VoicePipeline(stages, queue_size=loaded.settings.queue_size, observers=[metrics, view])
        if watchdog is not None:
            watchdog.start()
        view.start(pipeline)
        started = failed = True
        with _native_chatter_hidden(stages, args):
            asyncio.run(pipeline.run())
        failed = False
    finally:
        if watchdog is not None:
            watchdog.stop()
        metrics.flush()
        view.stop()
        if writer is not None and not started:
            writer.output.discard()  # nothing ran: the previous metrics file stays
        elif writer is not None:
            try:
                writer.close()
            except OutputError as exc:
                if not failed:
                    raise
                log.error("%s", exc)  # the run's own failure is the one reported
    return 0
