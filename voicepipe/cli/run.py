"""``voicepipe run PIPELINE``: run a pipeline (talk to it), or process a WAV file with --input/--output."""

from __future__ import annotations

import argparse
import asyncio
import math

from voicepipe.config import load_pipeline
from voicepipe.errors import UserError
from voicepipe.pipeline import Overrides, build_pipeline

HELP = "run a pipeline: talk to it, or feed it a WAV file with --input and write the reply with --output"


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


def overrides(args: argparse.Namespace) -> Overrides:
    """What this run changes in the pipeline file: WAV files in place of the source/sink, the jetsam limit."""
    if args.jetsam_mb is not None and not (math.isfinite(args.jetsam_mb) and args.jetsam_mb > 0):
        raise UserError(f"--jetsam-mb {args.jetsam_mb:g}: the limit must be a positive number of MB")
    return Overrides(input=args.input, output=args.output, realtime=args.realtime, jetsam_mb=args.jetsam_mb)


def _native_chatter_hidden(stages: list, args: argparse.Namespace):
    """With a microphone or speaker, PortAudio/ALSA diagnostics go to the debug log (shown with -vv), not the screen."""
    import contextlib

    from voicepipe.audio.device import MicSource, SpeakerSink
    from voicepipe.audio.native_stderr import capture_native_stderr

    if getattr(args, "verbose", 0) >= 2 or not any(isinstance(s, MicSource | SpeakerSink) for s in stages):
        return contextlib.nullcontext()
    return capture_native_stderr()


def run(args: argparse.Namespace) -> int:
    from voicepipe.cli.view import make_view

    changes = overrides(args)
    loaded = load_pipeline(args.pipeline)
    view = make_view(quiet=args.quiet, json_lines=args.json)
    built = build_pipeline(loaded, changes, metrics_path=args.metrics, on_turn=view.turn_finished, observers=[view])
    try:
        view.start(built.pipeline)
    except BaseException:
        built.discard()
        raise
    try:
        with _native_chatter_hidden(built.stages, args):
            asyncio.run(built.run())
    finally:
        view.stop()
    return 0
