"""Audio files as source and sink: any rate, mono or stereo, int16/int24/float; resampled with soxr."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import resample, to_mono
from voicepipe.audio.playback import HeardText
from voicepipe.errors import UserError
from voicepipe.frames import (
    AudioFrame,
    EndFrame,
    EndOfTurnFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction, Sink, Source, StageConfig

__all__ = ["read_audio", "WavSource", "WavSink"]


def read_audio(path: str | os.PathLike[str]) -> tuple[np.ndarray, int]:
    """Read an audio file as float32 (samples,) or (samples, channels); one-line ``UserError`` if it is not audio."""
    import soundfile as sf

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file; give the path of a WAV (or FLAC/OGG) file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; give the path of a WAV (or FLAC/OGG) file")
    try:
        pcm, rate = sf.read(str(p), dtype="float32", always_2d=False)
    except Exception as exc:  # libsndfile reports corrupt and non-audio files with several exception types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{p}: not a readable audio file ({reason}); give a WAV, FLAC or OGG file") from exc
    if len(pcm) == 0:
        raise UserError(f"{p}: contains no audio samples; record or choose a non-empty file")
    return pcm, int(rate)


class WavSourceConfig(StageConfig):
    path: str = Field(description="Audio file to read (WAV, FLAC, OGG; any rate, mono or stereo).")
    sample_rate: int = Field(16000, ge=8000, le=192000, description="Rate of the frames sent downstream.")
    block_ms: int = Field(20, ge=5, le=500, description="Duration of each audio frame.")
    realtime: bool = Field(False, description="Pace frames as a microphone would (True) or send them at once.")
    tail_silence_ms: int = Field(1000, ge=0, le=60_000, description="Silence appended so the last turn can end.")


class WavSource(Source):
    """Reads an audio file and sends it as mono ``AudioFrame`` blocks, paced in real time or as fast as possible."""

    Config = WavSourceConfig
    config: WavSourceConfig

    def __init__(self, config: WavSourceConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._pcm: np.ndarray | None = None

    async def setup(self) -> None:
        pcm, rate = await asyncio.to_thread(read_audio, self.config.path)
        mono = to_mono(pcm)
        self._pcm = await asyncio.to_thread(resample, mono, rate, self.config.sample_rate)

    async def frames(self) -> AsyncIterator[Frame]:
        if self._pcm is None:
            await self.setup()
        rate = self.config.sample_rate
        block = max(1, rate * self.config.block_ms // 1000)
        tail = np.zeros(rate * self.config.tail_silence_ms // 1000, dtype=np.float32)
        pcm = np.concatenate([self._pcm, tail]) if len(tail) else self._pcm
        start = time.monotonic()
        for i, offset in enumerate(range(0, len(pcm), block)):
            if self.config.realtime:
                due = start + i * block / rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            else:
                await asyncio.sleep(0)  # let the rest of the pipeline run between blocks
            yield AudioFrame(pcm=pcm[offset : offset + block], sample_rate=rate)


class WavSinkConfig(StageConfig):
    path: str = Field(description="WAV file to write the reply audio to.")
    sample_rate: int | None = Field(None, ge=8000, le=192000, description="Output rate; default: the first audio's.")
    subtype: str = Field("PCM_16", description="soundfile subtype, e.g. PCM_16, PCM_24, FLOAT.")


class WavSink(Sink):
    """Writes every turn's reply audio into one WAV file.

    The file is written under a temporary name and moved into place at shutdown, so a failed run never leaves a
    half-written file under the requested name. Like a speaker, it reports what was heard upstream and sends
    ``EndOfTurnFrame`` once a turn's audio is out.
    """

    Config = WavSinkConfig
    config: WavSinkConfig

    def __init__(self, config: WavSinkConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._file = None
        self._rate: int | None = None
        self._heard = HeardText()
        self.samples_written = 0

    @property
    def _partial(self) -> Path:
        p = Path(self.config.path)
        return p.with_name(f".{p.name}.partial")

    async def setup(self) -> None:
        target = Path(self.config.path)
        parent = target.parent if str(target.parent) else Path(".")
        if not parent.is_dir():
            raise UserError(f"{target}: directory '{parent}' does not exist; create it or choose another output path")
        if not os.access(parent, os.W_OK):
            raise UserError(f"{target}: directory '{parent}' is not writable; choose another output path")
        if target.is_dir():
            raise UserError(f"{target}: is a directory; give a file name such as {target / 'reply.wav'}")

    def _open(self, rate: int) -> None:
        import soundfile as sf

        self._rate = rate
        self._file = sf.SoundFile(
            str(self._partial), "w", samplerate=rate, channels=1, subtype=self.config.subtype, format="WAV"
        )

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSAudioFrame):
            await self._write(frame)
            return  # audio ends here
        if isinstance(frame, LLMResponseEndFrame):
            await self.push(
                PlaybackFrame(text=self._heard.text, finished=True, turn_id=frame.turn_id), Direction.UPSTREAM
            )
            await self.push(frame)
            await self.push(EndOfTurnFrame(turn_id=frame.turn_id, interrupted=frame.interrupted))
            return
        if isinstance(frame, InterruptionFrame):
            await self.push(
                PlaybackFrame(text=self._heard.text, finished=True, turn_id=self._heard.turn_id), Direction.UPSTREAM
            )
        if isinstance(frame, EndFrame):
            await asyncio.to_thread(self._finish)
        await self.push(frame)

    async def _write(self, frame: TTSAudioFrame) -> None:
        if self._file is None:
            self._open(self.config.sample_rate or frame.sample_rate)
        pcm = resample(to_mono(frame.pcm), frame.sample_rate, self._rate)
        await asyncio.to_thread(self._file.write, pcm)
        self.samples_written += len(pcm)
        self._heard.played(frame)

    def _finish(self) -> None:
        if self._file is None:
            self._open(self.config.sample_rate or 24000)  # no reply audio: still write a valid, empty WAV
        self._file.close()
        self._file = None
        os.replace(self._partial, self.config.path)

    async def cleanup(self) -> None:
        if self._file is not None:  # stopped before the end of input: keep what was written
            await asyncio.to_thread(self._finish)
