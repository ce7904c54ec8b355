"""The chunker as a pipeline stage: LLM token deltas in, speakable ``TextChunkFrame``s out."""

from __future__ import annotations

from pydantic import Field, model_validator

from voicepipe.frames import EndFrame, Frame, InterruptionFrame, LLMResponseEndFrame, LLMTokenFrame, TextChunkFrame
from voicepipe.stage import Stage, StageConfig
from voicepipe.text.chunker import SentenceChunker

__all__ = ["SentenceChunkerStage"]


class SentenceChunkerConfig(StageConfig):
    first_min_chars: int = Field(16, ge=1, description="The first chunk may end at a clause once this long.")
    min_chars: int = Field(40, ge=1, description="Later chunks end at a sentence end once at least this long.")
    max_chars: int = Field(240, ge=20, description="No chunk is longer; longer text is split at a clause or space.")
    first_max_words: int | None = Field(
        4,
        ge=3,
        description="The first chunk ends after this many words if no clause has ended (None: no limit): the first "
        "sound waits for the first chunk's synthesis, which grows with its length (BENCHMARKS.md).",
    )

    @model_validator(mode="after")
    def _max_covers_mins(self) -> SentenceChunkerConfig:
        if self.max_chars < max(self.first_min_chars, self.min_chars):
            raise ValueError(
                f"max_chars ({self.max_chars}) is below first_min_chars ({self.first_min_chars}) or "
                f"min_chars ({self.min_chars}); raise max_chars or lower the minimums"
            )
        return self


class SentenceChunkerStage(Stage):
    """Splits the streaming reply into chunks for TTS (see ``voicepipe.text.chunker``).

    ``LLMTokenFrame`` -> ``TextChunkFrame(text, index, turn_id)``; ``LLMResponseEndFrame`` flushes the rest of the
    turn (an interrupted reply is dropped instead) and is forwarded; ``InterruptionFrame`` drops the pending text and
    is forwarded; ``EndFrame`` flushes; everything else passes through.
    """

    Config = SentenceChunkerConfig
    config: SentenceChunkerConfig

    def __init__(self, config: SentenceChunkerConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._chunker = SentenceChunker(
            first_min_chars=self.config.first_min_chars,
            min_chars=self.config.min_chars,
            max_chars=self.config.max_chars,
            first_max_words=self.config.first_max_words,
        )
        self._turn_id = 0
        self._index = 0

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, LLMTokenFrame):
            if frame.turn_id != self._turn_id:  # a new reply without an end frame for the old one: finish the old
                await self._emit(self._chunker.flush())
                self._turn_id, self._index = frame.turn_id, 0
            await self._emit(self._chunker.push(frame.text))
        elif isinstance(frame, LLMResponseEndFrame):
            if frame.interrupted:
                self._reset()
            else:
                await self._emit(self._chunker.flush())
                self._index = 0
            await self.push(frame)
        elif isinstance(frame, InterruptionFrame):
            if not frame.turn_only or frame.turn_id == self._turn_id:  # turn_only: another turn's text stays
                self._reset()
            await self.push(frame)
        elif isinstance(frame, EndFrame):
            await self._emit(self._chunker.flush())
            await self.push(frame)
        else:
            await self.push(frame)

    def _reset(self) -> None:
        self._chunker.reset()
        self._index = 0

    async def _emit(self, chunks: list[str]) -> None:
        for text in chunks:
            await self.push(TextChunkFrame(text=text, index=self._index, turn_id=self._turn_id))
            self._index += 1
