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

from pydantic import ValidationError

from voicepipe.errors import UserError

if TYPE_CHECKING:
    from voicepipe.asr.stage import ASRStage
    from voicepipe.frames import Frame
    from voicepipe.stage import Stage

HELP = "transcribe an audio file with the VAD + ASR stages (one line per detected turn)"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", help="audio file (WAV, FLAC, OGG; any rate, mono or stereo)")
    parser.add_argument("--engine", choices=("faster-whisper", "mlx-whisper"), default="faster-whisper")
    parser.add_argument("--model", default=None, help="HF repo id or local directory (default: tiny.en)")
    parser.add_argument("--language", default="en", help="spoken language code, or 'auto' to detect it")
    parser.add_argument(
        "--vad", choices=("webrtc", "silero", "none"), default="webrtc", help="silero for noisy audio; none: one turn"
    )
    parser.add_argument("--beam-size", type=int, default=1, help="1 = greedy (fastest)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for faster-whisper")
    parser.add_argument("--compute-type", default="int8", help="faster-whisper weight type (int8, float32, ...)")
    parser.add_argument("--json", action="store_true", help="one JSON object per turn: start, end, text")


def run(args: argparse.Namespace) -> int:
    from voicepipe.asr.stage import ASRConfig, ASRStage

    try:
        asr_config = ASRConfig(
            engine=args.engine,
            model=args.model,
            language=None if args.language == "auto" else args.language,
            beam_size=args.beam_size,
            threads=args.threads,
            compute_type=args.compute_type,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise UserError(f"--{'-'.join(str(p) for p in first['loc']) or 'option'}: {first['msg']}") from None
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
