"""Audio files as source and sink: any rate, mono or stereo, int16/int24/float; resampled with soxr."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from voicepipe.audio.convert import finite, resample, to_mono
from voicepipe.audio.sink import AudioSink
from voicepipe.errors import UserError
from voicepipe.frames import AudioFrame, EndFrame, ErrorFrame, Frame, TTSAudioFrame
from voicepipe.outfile import OutputError, OutputFile
from voicepipe.stage import Source, StageConfig

__all__ = ["read_audio", "audio_format", "WavSource", "WavSink"]

log = logging.getLogger("voicepipe.audio")


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
    return finite(pcm, str(p)), int(rate)


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


def audio_format(path: str | os.PathLike[str]) -> str:
    """The soundfile format a file name asks for (``reply.flac`` -> FLAC; no suffix, e.g. a pipe -> WAV)."""
    import soundfile as sf

    suffix = Path(path).suffix.lstrip(".").upper()
    if not suffix:
        return "WAV"
    formats = sf.available_formats()
    if suffix in formats:
        return suffix
    raise UserError(
        f"{path}: cannot write audio in the '.{suffix.lower()}' format; "
        f"name the file .wav, .flac or .ogg (or another of: {', '.join(sorted(f.lower() for f in formats))})"
    )


class WavSinkConfig(StageConfig):
    path: str = Field(description="Audio file to write the reply audio to; the suffix picks the format (.wav, .flac).")
    sample_rate: int | None = Field(None, ge=8000, le=192000, description="Output rate; default: the first audio's.")
    subtype: str | None = Field(
        None, description="soundfile subtype, e.g. PCM_16, PCM_24, FLOAT; default: the format's."
    )

    @model_validator(mode="after")
    def _known_format(self) -> WavSinkConfig:
        import soundfile as sf

        try:
            fmt = audio_format(self.path)
        except UserError as exc:
            raise ValueError(str(exc)) from None
        if self.subtype is None:
            return self
        subtypes = sf.available_subtypes(fmt)
        if self.subtype.upper() not in subtypes:
            raise ValueError(
                f"subtype {self.subtype!r} is not one soundfile writes as {fmt}; use one of {', '.join(subtypes)}"
            )
        return self


class WavSink(AudioSink):
    """Writes every turn's reply audio into one audio file (WAV, or the format the file name's suffix names).

    The file is written through ``OutputFile``: into this run's own temporary file, moved into place at shutdown (the
    audio so far, also after Ctrl-C), written through when the path is a pipe or device. A write that fails (disk
    full, directory removed) discards the temporary file, keeps the previous file, and stops the run with a fatal
    ``ErrorFrame``. Like a speaker, it keeps the sink's turn protocol (``voicepipe.audio.sink``): a block counts as heard
    once written. ``write_empty=False`` leaves the path untouched when no audio came at all.
    """

    Config = WavSinkConfig
    config: WavSinkConfig

    def __init__(
        self, config: WavSinkConfig | None = None, *, name: str | None = None, write_empty: bool = True
    ) -> None:
        super().__init__(config, name=name)
        self._file = None
        self._rate: int | None = None
        self._out = OutputFile(self.config.path, what=f"{self.name} path")
        self._write_empty = write_empty
        self._failed = False
        self.samples_written = 0

    async def setup(self) -> None:
        self._out.check()

    def _open(self, rate: int) -> None:
        import soundfile as sf

        self._rate = rate
        temp = self._out.begin()
        fmt = audio_format(self.config.path)
        subtype = self.config.subtype or sf.default_subtype(fmt) or "PCM_16"
        self._file = sf.SoundFile(str(temp), "w", samplerate=rate, channels=1, subtype=subtype, format=fmt)

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, EndFrame) and not self._failed:
            try:
                await asyncio.to_thread(self._finish)
            except (OutputError, UserError) as exc:
                await self._fail(str(exc), frame.turn_id)
        await super().process(frame)

    async def play(self, frame: TTSAudioFrame) -> None:
        if not self._failed:
            await self._write(frame)

    async def _write(self, frame: TTSAudioFrame) -> None:
        try:
            if self._file is None:
                self._open(self.config.sample_rate or frame.sample_rate)
            pcm = resample(to_mono(frame.pcm), frame.sample_rate, self._rate)
            await asyncio.to_thread(self._file.write, pcm)
        except (OutputError, UserError) as exc:
            await self._fail(str(exc), frame.turn_id)
            return
        except Exception as exc:  # libsndfile reports a failed write (disk full, I/O error) with several types
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            await self._fail(
                f"{self._out.what} {self.config.path}: writing failed ({reason}); the previous file is kept",
                frame.turn_id,
            )
            return
        lost = self._out.lost()
        if lost is not None:
            await self._fail(f"{lost}; nothing was written", frame.turn_id)
            return
        self.samples_written += len(pcm)
        self.heard.played(frame)

    async def _fail(self, message: str, turn_id: int) -> None:
        """Give up on the file: drop this run's temporary file (the previous file stays) and stop the run."""
        self._failed = True
        await asyncio.to_thread(self._abandon)
        await self.push(ErrorFrame(message=message, stage=self.name, fatal=True, turn_id=turn_id))

    def _abandon(self) -> None:
        if self._file is not None:
            with contextlib.suppress(Exception):
                self._file.close()
            self._file = None
        self._out.discard()

    def _finish(self) -> None:
        """Close the file and move it into place; ``OutputError`` (previous file kept) if that fails."""
        if self._file is None:
            if not self._write_empty:
                return
            self._open(self.config.sample_rate or 24000)  # no reply audio: still write a valid, empty file
        try:
            self._file.close()  # writes the final header: can fail on a full disk too
        except Exception as exc:
            self._file = None
            self._out.discard()
            raise OutputError(
                f"{self._out.what} {self.config.path}: writing failed ({exc}); the previous file is kept"
            ) from exc
        self._file = None
        lost = self._out.lost()
        if lost is not None:
            self._out.discard()
            raise OutputError(f"{lost}; nothing was written")
        self._out.commit()

    async def cleanup(self) -> None:
        if self._file is not None and not self._failed:  # stopped before the end of input: keep what was written
            try:
                await asyncio.to_thread(self._finish)
            except (OutputError, UserError) as exc:
                log.error("%s", exc)
        else:
            self._abandon()
