"""Scripted stand-ins for engine stages, for tests of the pipeline's plumbing and for plugin authors.

Each fake is deterministic and says what it replaces. They are NOT speech engines: the real stages (webrtcvad/Silero,
faster-whisper, Qwen3.5 on llama.cpp/MLX, Kokoro/Piper) are what ``pipeline.yaml`` uses; these exist so a test can run
the whole chain in milliseconds and check what flows between stages.
"""

from __future__ import annotations

import asyncio

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE, to_mono
from voicepipe.frames import (
    AudioFrame,
    EndFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    SpeechEndedFrame,
    SpeechStartedFrame,
    TextChunkFrame,
    TranscriptFrame,
    TTSAudioFrame,
    UserAudioFrame,
)
from voicepipe.stage import Stage, StageConfig

__all__ = ["FakeVAD", "FakeASR", "FakeLLM", "FakeTTS"]


class FakeVADConfig(StageConfig):
    threshold: float = Field(0.02, gt=0, description="RMS level above which a block counts as voiced.")
    hangover_ms: int = Field(300, ge=0, description="Silence that ends a turn.")


class FakeVAD(Stage):
    """Stand-in for the VAD stage: an RMS threshold, no pre-roll, no noise robustness. For plumbing tests only."""

    Config = FakeVADConfig
    config: FakeVADConfig

    def __init__(self, config: FakeVADConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._speech: list[np.ndarray] = []
        self._silence_s = 0.0
        self._position = 0.0
        self._turn = 0
        self._rate = SPEECH_SAMPLE_RATE

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, AudioFrame):
            pcm = to_mono(frame.pcm)
            self._rate = frame.sample_rate
            self._position += frame.duration
            voiced = float(np.sqrt(np.mean(pcm**2))) > self.config.threshold if len(pcm) else False
            if voiced:
                if not self._speech:
                    self._turn = self.turns.next()
                    await self.push(SpeechStartedFrame(turn_id=self._turn, audio_time=self._position - frame.duration))
                self._speech.append(pcm)
                self._silence_s = 0.0
            elif self._speech:
                self._silence_s += frame.duration
                self._speech.append(pcm)
                if self._silence_s * 1000 >= self.config.hangover_ms:
                    await self._end()
            return
        if isinstance(frame, EndFrame) and self._speech:
            await self._end()
        await self.push(frame)

    async def _end(self) -> None:
        audio = np.concatenate(self._speech)
        self._speech = []
        end = self._position - self._silence_s
        await self.push(SpeechEndedFrame(turn_id=self._turn, audio_time=end))
        await self.push(UserAudioFrame(pcm=audio, sample_rate=self._rate, end_time=end, turn_id=self._turn))


class FakeASRConfig(StageConfig):
    text: str = Field("hello there", description="What every user turn is 'recognised' as.")


class FakeASR(Stage):
    """Stand-in for Whisper: every final user segment becomes the configured transcript."""

    Config = FakeASRConfig
    config: FakeASRConfig

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, UserAudioFrame):
            if frame.final:
                await self.push(TranscriptFrame(text=self.config.text, turn_id=frame.turn_id))
            return
        await self.push(frame)


class FakeLLMConfig(StageConfig):
    reply: str = Field(
        "You said: {text}. That is all I can say, since I am a scripted fake.",
        description="The reply; '{text}' is replaced by the transcript, other braces are kept as they are.",
    )
    token_delay_ms: float = Field(0.0, ge=0, description="Pause between streamed words.")


class FakeLLM(Stage):
    """Stand-in for the LLM stage: streams a scripted reply word by word; stops on interruption."""

    Config = FakeLLMConfig
    config: FakeLLMConfig

    def __init__(self, config: FakeLLMConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self.history: list[tuple[str, str]] = []

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TranscriptFrame) and frame.final:
            reply = self.config.reply.replace("{text}", frame.text)  # not str.format: a reply may contain "{}"
            sent = ""
            try:
                for word in reply.split(" "):
                    piece = word if not sent else " " + word
                    sent += piece
                    await self.push(LLMTokenFrame(text=piece, turn_id=frame.turn_id))
                    await asyncio.sleep(self.config.token_delay_ms / 1000)
            finally:
                self.history.append((frame.text, sent))
            await self.push(LLMResponseEndFrame(text=sent, turn_id=frame.turn_id))
            return
        if isinstance(frame, InterruptionFrame):
            await self.push(frame)
            return
        await self.push(frame)


class FakeTTSConfig(StageConfig):
    sample_rate: int = Field(24000, ge=8000)
    seconds_per_char: float = Field(0.03, gt=0)


class FakeTTS(Stage):
    """Stand-in for Kokoro/Piper: a quiet tone whose length follows the text, in 100 ms blocks."""

    Config = FakeTTSConfig
    config: FakeTTSConfig

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TextChunkFrame):
            rate = self.config.sample_rate
            n = int(len(frame.text) * self.config.seconds_per_char * rate)
            t = np.arange(n, dtype=np.float32) / rate
            tone = (0.1 * np.sin(2 * np.pi * 220.0 * t)).astype(np.float32)
            block = rate // 10
            for start in range(0, n, block):
                end_char = round(len(frame.text) * min(n, start + block) / max(n, 1))
                await self.push(
                    TTSAudioFrame(
                        pcm=tone[start : start + block],
                        sample_rate=rate,
                        chunk_index=frame.index,
                        chunk_text=frame.text,
                        char_start=round(len(frame.text) * start / max(n, 1)),
                        char_end=end_char,
                        turn_id=frame.turn_id,
                    )
                )
            return
        await self.push(frame)
