"""The TTS stage: text chunks in, audio blocks out, one chunk at a time as they arrive, interruptible.

Each ``TextChunkFrame`` is synthesized on the stage's worker thread as soon as it arrives (the chunker sends the first
clause early), and its audio goes out in blocks of ``block_ms``, resampled to ``sample_rate``: the first chunk plays
while the LLM still writes the next. An ``InterruptionFrame`` (handled at once, on the pipeline's system lane) aborts
the running synthesis through onnxruntime's terminate flag and stops the blocks not yet sent: the pipeline cancels the
chunk in flight, drops the chunks queued before the interruption and those of the interrupted turn that still arrive.

Speed of the first sound: ``setup()`` speaks a short phrase once (``warm_up``), so the first reply does not pay for
onnxruntime's first run of the graph and the phonemizer's start-up; the first chunk of each reply is synthesized as the
critical path (``first_chunk_priority``, see ``voicepipe.cores``): the LLM waits between tokens meanwhile, so the TTS
has the cores to itself.

Each ``TTSAudioFrame`` says which chunk it speaks and which characters of it (``char_start``/``char_end``, in
proportion to the block's place in the chunk's audio), so a sink can report what the user actually heard.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import ClassVar

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import resample
from voicepipe.cores import schedule
from voicepipe.engine import EngineStageConfig
from voicepipe.frames import (
    CancelFrame,
    Frame,
    LLMResponseEndFrame,
    MetricsFrame,
    TextChunkFrame,
    TTSAudioFrame,
)
from voicepipe.memory.rss import trim_heap
from voicepipe.stage import Stage
from voicepipe.tts.engine import SynthesisCancelled, TTSEngine
from voicepipe.tts.normalize import normalize_text

__all__ = ["TTSConfig", "TTSStage", "KokoroTTS", "PiperTTS"]

#: Spoken once at start-up (``warm_up``): words and punctuation enough to run every part of the engine.
WARM_UP_TEXT = "Hello, this is a test."


class TTSConfig(EngineStageConfig):
    """Settings of the TTS stage; the engine's own settings (``model``, ``voice``, ``speed``, ``threads``, ...) sit
    beside them and are checked by the chosen engine's ``Config`` (``voicepipe.tts.kokoro``, ``voicepipe.tts.piper``).
    """

    role: ClassVar[str] = "tts"

    engine: str = Field("kokoro", description="TTS engine: kokoro, piper, or another registered one.")
    warm_up: bool = Field(True, description="Speak a short phrase once at start-up so the first reply starts fast.")
    first_chunk_priority: bool = Field(
        True, description="While the first chunk of a reply is synthesized, the LLM waits between tokens."
    )
    sample_rate: int | None = Field(
        None, ge=8000, le=192_000, description="Output rate in Hz; default: the voice's own (Kokoro 24000)."
    )
    block_ms: int = Field(160, ge=20, le=1000, description="Length of each audio block sent downstream.")

    @property
    def language(self) -> str:
        """The language text is normalized in (numbers, dates): the engine's ``language``, English if it has none."""
        return getattr(self.engine_config, "language", "en-us")


class TTSStage(Stage):
    """Speaks ``TextChunkFrame``s as ``TTSAudioFrame`` blocks; forwards everything else in order."""

    Config = TTSConfig
    holds_model = True

    def __init__(self, config: TTSConfig | None = None, *, name: str | None = None, engine: TTSEngine | None = None):
        super().__init__(config, name=name)
        self.config: TTSConfig
        self.engine = engine

    @property
    def output_rate(self) -> int:
        return self.config.sample_rate or (self.engine.sample_rate if self.engine else 0)

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        if self.engine is None:
            self.engine = self.config.build_engine()  # cheap: load() below finds (or downloads) its files
        await self.run_blocking(self.engine.load)
        if self.config.warm_up:
            await self.run_blocking(self.engine.synthesize, normalize_text(WARM_UP_TEXT, self.config.language))

    async def cleanup(self) -> None:
        if self.engine is not None:
            self.engine.cancel()

    @property
    def memory_footprint(self) -> int:
        return self.engine.memory_footprint if self.engine else 0

    @property
    def is_loaded(self) -> bool:
        return bool(self.engine and self.engine.is_loaded)

    async def unload(self) -> None:
        if self.engine is not None:
            await self.run_blocking(self.engine.unload)

    async def load(self) -> None:
        if self.engine is not None:
            await self.run_blocking(self.engine.load)

    # -- frames ------------------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TextChunkFrame):
            await self._speak(frame)  # an interruption cancels this call (the pipeline does) and so the synthesis
            return
        if isinstance(frame, CancelFrame) and self.engine is not None:
            self.engine.cancel()
        await self.push(frame)
        if isinstance(frame, LLMResponseEndFrame) and getattr(self.engine.config, "release_arena", False):
            # The reply's last sentence is synthesized. The arena shrink after each sentence hands onnxruntime's
            # memory to malloc, which keeps it as free heap (a 500-turn Piper soak grew 6 % that way): return it.
            await self.run_blocking(trim_heap)

    async def _speak(self, chunk: TextChunkFrame) -> None:
        text = normalize_text(chunk.text, self.config.language)
        if not text:
            return  # only symbols or markup: nothing to say
        engine = self.engine
        if engine is None:
            raise RuntimeError(f"{self.name}: no engine (setup() was not run)")
        started = time.monotonic()
        try:
            critical = chunk.index == 0 and self.config.first_chunk_priority
            audio = await self.run_blocking(self._synthesize, engine, text, critical)
        except SynthesisCancelled:
            return
        except asyncio.CancelledError:
            engine.cancel()  # the pipeline cancelled this frame (an interruption): stop the worker thread too
            raise
        if len(audio) == 0:
            return
        synthesis_s = time.monotonic() - started
        rate = self.output_rate
        await self.push(
            MetricsFrame(
                stage=self.name,
                turn_id=chunk.turn_id,
                values={"tts_synthesis_s": synthesis_s, "tts_audio_s": len(audio) / rate},
            )
        )
        for start, end in _blocks(len(audio), rate * self.config.block_ms // 1000):
            char_start, char_end = _char_span(chunk.text, start, end, len(audio))
            await self.push(
                TTSAudioFrame(
                    turn_id=chunk.turn_id,
                    pcm=audio[start:end],
                    sample_rate=rate,
                    chunk_index=chunk.index,
                    chunk_text=chunk.text,
                    char_start=char_start,
                    char_end=char_end,
                )
            )

    def _synthesize(self, engine: TTSEngine, text: str, critical: bool) -> np.ndarray:
        """On the worker thread: load if the memory governor unloaded the engine, speak, resample.

        A call cancelled while it waited for the thread never starts (``run_blocking`` drops it)."""
        if not engine.is_loaded:
            engine.load()
        with schedule.busy(self.name), schedule.critical(self.name) if critical else contextlib.nullcontext():
            raw = engine.synthesize(text)
        audio = resample(raw, engine.sample_rate, self.output_rate)
        # Kokoro (and resampling) can overshoot full scale; frames promise [-1, 1].
        return np.clip(audio, -1.0, 1.0).astype(np.float32, copy=False)


class KokoroTTS(TTSStage):
    """``TTSStage`` with ``engine: kokoro`` as the default (entry point ``kokoro``)."""

    class Config(TTSConfig):
        engine: str = Field("kokoro", description="TTS engine: kokoro, piper, or another registered one.")


class PiperTTS(TTSStage):
    """``TTSStage`` with ``engine: piper`` as the default (entry point ``piper``)."""

    class Config(TTSConfig):
        engine: str = Field("piper", description="TTS engine: kokoro, piper, or another registered one.")


def _blocks(total: int, size: int) -> list[tuple[int, int]]:
    """Split ``total`` samples into blocks of ``size``; a short tail (< half a block) joins the block before it."""
    size = max(1, size)
    bounds = list(range(0, total, size)) + [total]
    if len(bounds) > 2 and bounds[-1] - bounds[-2] < size // 2:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _char_span(text: str, start: int, end: int, total: int) -> tuple[int, int]:
    """The characters of ``text`` that samples ``start:end`` of ``total`` speak, in proportion."""
    n = len(text)

    # char_end is at least 1: sinks read 0 as "the whole chunk" (a frame that does not know its span)
    def at(sample: int) -> int:
        return 0 if sample <= 0 else n if sample >= total else min(n, max(1, round(n * sample / total)))

    return at(start), at(end)
