"""What the user actually heard of a reply, for sinks to report upstream (the LLM keeps only that in its history)."""

from __future__ import annotations

from voicepipe.frames import TTSAudioFrame

__all__ = ["HeardText"]


class HeardText:
    """Accumulates the reply text covered by the audio blocks played so far in one turn.

    Each ``TTSAudioFrame`` says which chunk it speaks and up to which character of it (``char_end``); the heard text is
    every earlier chunk in full plus the current chunk up to the furthest ``char_end`` played.
    """

    def __init__(self) -> None:
        self.turn_id = 0
        self._chunks: dict[int, str] = {}
        self._ends: dict[int, int] = {}

    def reset(self, turn_id: int = 0) -> None:
        self.turn_id = turn_id
        self._chunks.clear()
        self._ends.clear()

    def played(self, frame: TTSAudioFrame) -> None:
        if frame.turn_id != self.turn_id:
            self.reset(frame.turn_id)
        self._chunks[frame.chunk_index] = frame.chunk_text
        end = frame.char_end if frame.char_end > 0 else len(frame.chunk_text)
        self._ends[frame.chunk_index] = max(self._ends.get(frame.chunk_index, 0), end)

    @property
    def text(self) -> str:
        parts = []
        for index in sorted(self._chunks):
            chunk = self._chunks[index]
            end = self._ends.get(index, len(chunk))
            parts.append(chunk[:end].strip() if end < len(chunk) else chunk.strip())
        return " ".join(p for p in parts if p)
