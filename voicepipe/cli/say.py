"""``voicepipe say "TEXT"``: speak a text through the chunker and a TTS stage, to a WAV file or the speaker.

The quickest check of a voice setup: it runs the same stages as a conversation (so the first clause is spoken while
the rest is still being synthesized) and prints how long the first audio took once the model was loaded.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

from voicepipe.errors import UserError
from voicepipe.frames import ErrorFrame, Frame, LLMResponseEndFrame, LLMTokenFrame, TTSAudioFrame
from voicepipe.stage import Sink, Source, Stage

HELP = "speak a text with the TTS engine (writes a WAV with --output, else plays it) and print time to first audio"


#: The options that fill the TTS stage's and its engines' settings (their defaults are the models').
STAGE_OPTIONS = ("engine", "sample_rate")
KOKORO_OPTIONS = ("voices",)
ENGINE_OPTIONS = ("voice", "speed", "language", "threads")


def configure(parser: argparse.ArgumentParser) -> None:
    from voicepipe.cli.options import add_model_options
    from voicepipe.tts.engine import TTSEngineConfig
    from voicepipe.tts.kokoro import KokoroEngine
    from voicepipe.tts.stage import TTSConfig

    parser.add_argument("text", help="what to say")
    add_model_options(parser, TTSConfig, STAGE_OPTIONS[:1])
    # the one setting whose default depends on the engine: each engine's Config has its own voice file
    parser.add_argument(
        "--model", help="model file: a local path or owner/repo/file on the Hugging Face hub (default: the engine's)"
    )
    add_model_options(parser, KokoroEngine.Config, KOKORO_OPTIONS)
    add_model_options(parser, TTSEngineConfig, ENGINE_OPTIONS)
    add_model_options(parser, TTSConfig, STAGE_OPTIONS[1:])
    parser.add_argument(
        "--output", "-o", type=Path, help="write the audio here (.wav, .flac, .ogg) instead of playing it"
    )


def run(args: argparse.Namespace) -> int:

    from voicepipe.cli.options import validate_options, values_from_args
    from voicepipe.tts.stage import TTSConfig, TTSStage

    if args.output is not None:
        from voicepipe.audio.wav import audio_format
        from voicepipe.outfile import OutputFile

        audio_format(args.output)  # one line for a suffix no audio format has
        OutputFile(args.output, what="--output").check()
    if not args.text.strip():
        raise UserError('TEXT is empty: give the words to say, e.g. voicepipe say "Hello there."')
    options = values_from_args(args, (*STAGE_OPTIONS, *KOKORO_OPTIONS, *ENGINE_OPTIONS))
    if args.model is not None:
        options["model"] = args.model
    config = validate_options(
        TTSConfig, options, what=f"the {options.get('engine', TTSConfig.model_fields['engine'].default)} engine"
    )
    tts = TTSStage(config, name="tts")
    if args.output is not None:
        from voicepipe.audio.wav import WavSink

        # with nothing to say, an existing file stays untouched (the run ends in a UserError below)
        sink: Sink = WavSink(WavSink.Config(path=str(args.output)), name="wav", write_empty=False)
        where = f"wrote {args.output}"
    else:
        from voicepipe.audio.device import SpeakerSink

        sink, where = SpeakerSink(name="speaker"), "played"
    print(f"{where}: {asyncio.run(_speak(args.text, tts, sink))}")
    return 0


async def _speak(text: str, tts: Stage, sink: Sink) -> str:
    from voicepipe.pipeline import build_pipeline

    source, probe = _TextSource(text), _FirstAudio()
    stages: list[Stage] = [source]
    chunker = _chunker()
    if chunker is not None:
        stages.append(chunker)
    stages += [tts, probe, sink]
    run = build_pipeline(stages)
    loaded = time.monotonic()
    await run.setup()
    load_s = time.monotonic() - loaded
    await run.run(setup=False)
    if probe.failures:
        raise RuntimeError("; ".join(probe.failures))
    if probe.first_audio is None or source.started is None:
        raise UserError("nothing to say: the text has no speakable words")
    first = probe.first_audio - source.started
    total = time.monotonic() - source.started
    return (
        f"{probe.seconds:.2f} s of audio; model loaded in {load_s:.2f} s; "
        f"first audio after {first * 1000:.0f} ms; done in {total:.2f} s"
    )


def _chunker() -> Stage | None:
    """The sentence chunker stage, when this install has it (it splits the text so the first clause plays early)."""
    try:
        from voicepipe.text.stage import SentenceChunkerStage
    except ImportError:
        return None
    return SentenceChunkerStage(name="chunker")


class _TextSource(Source):
    """Emits the text as one reply of turn 1, as an LLM would."""

    def __init__(self, text: str) -> None:
        super().__init__(name="text")
        self.text = text
        self.started: float | None = None

    async def frames(self) -> AsyncIterator[Frame]:
        self.started = time.monotonic()
        yield LLMTokenFrame(text=self.text, turn_id=1)
        yield LLMResponseEndFrame(text=self.text, turn_id=1)


class _FirstAudio(Stage):
    """Passes everything on, noting when the first audio block went by, how much audio passed, and any errors."""

    def __init__(self) -> None:
        super().__init__(name="first-audio")
        self.first_audio: float | None = None
        self.seconds = 0.0
        self.failures: list[str] = []

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSAudioFrame):
            if self.first_audio is None:
                self.first_audio = time.monotonic()
            self.seconds += frame.duration
        elif isinstance(frame, ErrorFrame):
            self.failures.append(frame.message)
        await self.push(frame)
