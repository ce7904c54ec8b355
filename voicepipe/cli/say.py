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

import numpy as np

from voicepipe.errors import UserError
from voicepipe.frames import ErrorFrame, Frame, LLMResponseEndFrame, LLMTokenFrame, TTSAudioFrame
from voicepipe.stage import Sink, Source, Stage

HELP = "speak a text with the TTS engine (writes a WAV with --output, else plays it) and print time to first audio"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("text", help="what to say")
    parser.add_argument("--engine", choices=("kokoro", "piper"), default="kokoro", help="TTS engine (default kokoro)")
    parser.add_argument("--model", help="model file: a local path or owner/repo/file on the Hugging Face hub")
    parser.add_argument("--voices", help="Kokoro voices archive: a local path or owner/repo/file")
    parser.add_argument("--voice", help="Kokoro voice name (default af_heart) or Piper speaker name")
    parser.add_argument("--speed", type=float, default=1.0, help="speaking rate, 0.5 to 2.0 (default 1.0)")
    parser.add_argument("--language", default="en-us", help="text language (default en-us)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime threads (default 2)")
    parser.add_argument("--sample-rate", type=int, help="output rate in Hz (default: the voice's own)")
    parser.add_argument("--output", "-o", type=Path, help="write a WAV file here instead of playing the audio")


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from voicepipe.tts.stage import TTSStage

    if args.output is not None and args.output.suffix.lower() != ".wav":
        raise UserError(f"--output {args.output}: give a file name ending in .wav")
    if not args.text.strip():
        raise UserError('TEXT is empty: give the words to say, e.g. voicepipe say "Hello there."')
    try:
        config = TTSStage.Config(
            engine=args.engine,
            model=args.model,
            voices=args.voices,
            voice=args.voice,
            speed=args.speed,
            language=args.language,
            threads=args.threads,
            sample_rate=args.sample_rate,
        )
    except ValidationError as exc:
        problem = exc.errors()[0]
        field = ".".join(str(p) for p in problem["loc"]) or "options"
        raise UserError(f"--{field.replace('_', '-')}: {problem['msg']}") from None
    tts = TTSStage(config, name="tts")
    sink = _WavSink(args.output) if args.output is not None else _SpeakerSink()
    report = asyncio.run(_speak(args.text, tts, sink))
    print(report)
    return 0


async def _speak(text: str, tts: Stage, sink: _AudioSink) -> str:
    from voicepipe.pipeline import VoicePipeline

    source = _TextSource(text)
    stages: list[Stage] = [source]
    chunker = _chunker()
    if chunker is not None:
        stages.append(chunker)
    stages += [tts, sink]
    pipeline = VoicePipeline(stages)
    loaded = time.monotonic()
    await pipeline.setup()
    load_s = time.monotonic() - loaded
    await pipeline.run(setup=False)
    if sink.error is not None:
        raise sink.error
    if sink.failures:
        raise RuntimeError("; ".join(sink.failures))
    if sink.first_audio is None or source.started is None:
        raise UserError("nothing to say: the text has no speakable words")
    first = sink.first_audio - source.started
    total = time.monotonic() - source.started
    where = f"wrote {sink.describe()}" if isinstance(sink, _WavSink) else "played"
    return (
        f"{where}: {sink.seconds:.2f} s of audio; model loaded in {load_s:.2f} s; "
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


class _AudioSink(Sink):
    def __init__(self) -> None:
        super().__init__(name="out")
        self.first_audio: float | None = None
        self.seconds = 0.0
        self.error: UserError | None = None  # e.g. no output device: reported once the run is over
        self.failures: list[str] = []  # ErrorFrames of the stages before (a failed synthesis)

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSAudioFrame):
            if self.first_audio is None:
                self.first_audio = time.monotonic()
            self.seconds += frame.duration
            if self.error is None:
                try:
                    await self.write(frame.pcm, frame.sample_rate)
                except UserError as exc:
                    self.error = exc
        else:
            if isinstance(frame, ErrorFrame):
                self.failures.append(frame.message)
            await self.push(frame)

    async def write(self, pcm: np.ndarray, sample_rate: int) -> None:
        raise NotImplementedError


class _WavSink(_AudioSink):
    """Writes the blocks to a 16-bit mono WAV as they arrive."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._file = None

    async def setup(self) -> None:
        if not self.path.parent.is_dir():
            raise UserError(f"--output {self.path}: folder {self.path.parent} does not exist")

    async def write(self, pcm: np.ndarray, sample_rate: int) -> None:
        import soundfile as sf

        if self._file is None:
            self._file = sf.SoundFile(self.path, "w", samplerate=sample_rate, channels=1, subtype="PCM_16")
        self._file.write(pcm)

    async def cleanup(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def describe(self) -> str:
        return str(self.path)


class _SpeakerSink(_AudioSink):
    """Plays the blocks on the default output device (PortAudio through sounddevice)."""

    def __init__(self) -> None:
        super().__init__()
        self._stream = None

    async def write(self, pcm: np.ndarray, sample_rate: int) -> None:
        if self._stream is None:
            self._stream = await self.run_blocking(self._open, sample_rate)
        await self.run_blocking(self._stream.write, pcm.reshape(-1, 1))

    @staticmethod
    def _open(sample_rate: int):  # noqa: ANN205 - sounddevice is optional
        from voicepipe._optional import require

        sd = require("sounddevice", extra="audio", purpose="Playing audio")
        try:
            stream = sd.OutputStream(samplerate=sample_rate, channels=1, dtype="float32", latency="high")
            stream.start()
        except Exception as exc:  # PortAudioError, no device
            raise UserError(f"cannot play audio ({exc}); write a file instead with --output out.wav") from exc
        return stream

    async def cleanup(self) -> None:
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await self.run_blocking(_drain_and_close, stream)


def _drain_and_close(stream) -> None:  # noqa: ANN001
    stream.stop()  # waits for the buffered audio to play out
    stream.close()
