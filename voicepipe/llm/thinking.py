"""Think text: what a reasoning model writes between ``<think>`` and ``</think>`` is never spoken or kept.

Two views of the same rule live here, so no other module parses think tags by hand:

- ``ThinkFilter`` works on text (a server's streamed content, the chunker's input, a history message): it drops every
  ``<think>...</think>`` block (also when a tag arrives split across pieces, and an unclosed block at the end), and
  a stray ``</think>``; the think text it drops is kept in ``thinking``. ``strip_think`` is its one-shot form.
- ``ThinkState`` works on token ids inside ``ChatModel``'s generation loop, where the tags are single tokens: it tells
  think tokens from answer tokens and applies the thinking cap (``max_thinking_tokens``).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["THINK_OPEN", "THINK_CLOSE", "ThinkFilter", "ThinkState", "strip_think"]

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def _partial_tail(text: str, *tags: str) -> int:
    """Length of the longest end of ``text`` that is the start of one of ``tags`` (it may become a tag)."""
    for k in range(min(max(map(len, tags)) - 1, len(text)), 0, -1):
        if any(tag.startswith(text[-k:]) for tag in tags):
            return k
    return 0


class ThinkFilter:
    """Streaming removal of think blocks: ``feed`` returns the answer text decided so far, ``flush`` the rest.

    The newlines that follow a think block before any answer text (Qwen writes ``</think>\\n\\n``) are dropped too.
    """

    def __init__(self) -> None:
        #: The think text of each block, in order (an unclosed block is added by ``flush``).
        self.thinking: list[str] = []
        self._buffer = ""
        self._thought: list[str] = []
        self._in_think = False
        self._answered = False  # answer text has been emitted
        self._after_block = False  # a block just closed: drop the newlines before the answer

    def feed(self, text: str) -> str:
        self._buffer += text
        out: list[str] = []
        while self._buffer:
            if self._in_think:
                end = self._buffer.find(THINK_CLOSE)
                if end < 0:
                    keep = _partial_tail(self._buffer, THINK_CLOSE)
                    self._thought.append(self._buffer[: len(self._buffer) - keep])
                    self._buffer = self._buffer[len(self._buffer) - keep :]
                    break
                self._thought.append(self._buffer[:end])
                self.thinking.append("".join(self._thought))
                self._thought, self._in_think, self._after_block = [], False, True
                self._buffer = self._buffer[end + len(THINK_CLOSE) :]
                continue
            opens, closes = self._buffer.find(THINK_OPEN), self._buffer.find(THINK_CLOSE)
            tags = [i for i in (opens, closes) if i >= 0]
            if not tags:
                keep = _partial_tail(self._buffer, THINK_OPEN, THINK_CLOSE)
                out.append(self._answer(self._buffer[: len(self._buffer) - keep]))
                self._buffer = self._buffer[len(self._buffer) - keep :]
                break
            at = min(tags)
            out.append(self._answer(self._buffer[:at]))
            if at == opens:
                self._in_think = True
                self._buffer = self._buffer[at + len(THINK_OPEN) :]
            else:  # a stray closing tag: drop it
                self._buffer = self._buffer[at + len(THINK_CLOSE) :]
        return "".join(out)

    def flush(self) -> str:
        """The undecided rest: a partial tag that never completed is answer text; an unclosed block is think text."""
        rest, self._buffer = self._buffer, ""
        if self._in_think:
            self.thinking.append("".join(self._thought) + rest)
            self._thought, self._in_think = [], False
            return ""
        return self._answer(rest)

    def _answer(self, text: str) -> str:
        if self._after_block and not self._answered:
            text = text.lstrip("\n")
        if text:
            self._answered = True
        return text


def strip_think(text: str) -> str:
    """``text`` without its think blocks (and without the newlines a leading block leaves before the answer)."""
    f = ThinkFilter()
    return f.feed(text) + f.flush()


@dataclass
class ThinkState:
    """Whether the token being generated is think text, and the thinking cap.

    ``think_open`` / ``think_close`` are the ids of ``<think>`` / ``</think>`` (``None`` when the vocabulary has no
    such single token). ``step(token)`` classifies one sampled token; when it sets ``force_close`` the cap was reached
    and the caller feeds ``</think>\\n\\n`` (and clears the flag) so the model goes on with the answer.
    """

    think_open: int | None
    think_close: int | None
    max_thinking_tokens: int
    thinking: bool = False
    thinking_tokens: int = 0
    force_close: bool = False

    def starts_inside(self, prompt: list[int], im_start: int | None) -> None:
        """Begin inside a block when the prompt's last message ends in an open ``<think>`` (a continued reply)."""
        for token in reversed(prompt):
            if token in (self.think_close, im_start):
                return
            if token == self.think_open:
                self.thinking = True
                return

    def step(self, token: int, *, answer_started: bool) -> str:
        """``"think"`` (think text), ``"tag"`` (the tag that opened or closed a block) or ``"answer"``."""
        if self.thinking:
            if token == self.think_close:
                self.thinking = False
                return "tag"
            self.thinking_tokens += 1
            if self.thinking_tokens >= self.max_thinking_tokens:
                self.thinking, self.force_close = False, True
            return "think"
        if token == self.think_open and not answer_started:
            if self.max_thinking_tokens > 0:
                self.thinking = True
            else:
                self.force_close = True
            return "tag"
        return "answer"
