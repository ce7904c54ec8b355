"""``voicepipe transcribe FILE``: run the VAD and ASR stages on an audio file, one line per detected turn.

The quickest way to check a speech setup: the same stages as ``voicepipe run`` (``vad``, ``asr``), fed from the file
as fast as the machine goes. With ``--json`` each line is ``{"start": s, "end": s, "text": "..."}``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from voicepipe.asr.stage import ASRStage
    from voicepipe.frames import Frame
    from voicepipe.stage import Stage

HELP = "transcribe an audio file with the VAD + ASR stages (one line per detected turn)"


#: The ASR settings ``transcribe`` takes as options; each is defined (type, default, help) in the engine's Config.
ASR_OPTIONS = ("engine", "model", "language", "beam_size", "threads", "compute_type")


def configure(parser: argparse.ArgumentParser) -> None:
    from voicepipe.asr.faster_whisper import FasterWhisperTranscriber
    from voicepipe.asr.stage import ASRConfig
    from voicepipe.cli.options import add_model_options
    from voicepipe.registry import engine_registry

    parser.add_argument("file", help="audio file (WAV, FLAC, OGG; any rate, mono or stereo)")
    add_model_options(parser, ASRConfig, ASR_OPTIONS[:1])
    # the default engine's settings; another engine rejects those it does not have when the config is validated
    add_model_options(parser, FasterWhisperTranscriber.Config, ASR_OPTIONS[1:])
    parser.add_argument(
        "--vad",
        choices=(*engine_registry("vad").names(), "none"),
        default="webrtc",
        help="VAD engine (default webrtc); silero for noisy audio; none: the whole file is one turn",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per turn: start, end, text")


def run(args: argparse.Namespace) -> int:
    from voicepipe.asr.stage import ASRConfig, ASRStage
    from voicepipe.cli.options import validate_options, values_from_args

    values = values_from_args(args, ASR_OPTIONS)
    if values.get("language") == "auto":  # the word this command has always taken for "detect the language"
        values["language"] = None
    engine = values.get("engine", ASRConfig.model_fields["engine"].default)
    asr_config = validate_options(ASRConfig, values, what=f"the {engine} engine")
    turns, errors = asyncio.run(_transcribe(args.file, args.vad, ASRStage(asr_config, name="asr")))
    for start, end, text in turns:
        if args.json:
            print(json.dumps({"start": round(start, 2), "end": round(end, 2), "text": text}), flush=True)
        else:
            print(f"{start:7.2f} {end:7.2f}  {text}", flush=True)
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    return 1 if errors else 0


async def _transcribe(path: str, vad: str, asr: ASRStage) -> tuple[list[tuple[float, float, str]], list[str]]:
    """(turns as (start, end, text), error messages)."""
    from voicepipe.audio.wav import WavSource, WavSourceConfig, read_audio
    from voicepipe.cli.whole_file import WholeFileTurn
    from voicepipe.frames import ErrorFrame, SpeechEndedFrame, SpeechStartedFrame, TranscriptFrame
    from voicepipe.pipeline import build_pipeline
    from voicepipe.vad.stage import VADConfig, VADStage

    read_audio(path)  # one-line UserError for a missing or non-audio file before any model loads
    turns_from: Stage
    if vad == "none":
        source = WavSource(WavSourceConfig(path=path, tail_silence_ms=0), name="file")
        turns_from = WholeFileTurn(name="whole-file")
    else:
        source = WavSource(WavSourceConfig(path=path, tail_silence_ms=1000), name="file")
        turns_from = VADStage(VADConfig(engine=vad), name="vad")
    run = build_pipeline([source, turns_from, asr])
    starts: dict[int, float] = {}
    ends: dict[int, float] = {}
    turns: list[tuple[float, float, str]] = []
    errors: list[str] = []

    def collect(frame: Frame) -> None:
        if isinstance(frame, SpeechStartedFrame):
            starts[frame.turn_id] = frame.audio_time
        elif isinstance(frame, SpeechEndedFrame):
            ends[frame.turn_id] = frame.audio_time
        elif isinstance(frame, TranscriptFrame) and frame.final:
            turns.append((starts.get(frame.turn_id, 0.0), ends.get(frame.turn_id, 0.0), frame.text))
        elif isinstance(frame, ErrorFrame):
            errors.append(frame.message)

    run.pipeline.on_output(collect)
    await run.run()
    return turns, errors
