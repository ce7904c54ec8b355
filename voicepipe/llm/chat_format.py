"""Engine-independent pieces of Qwen3.5 chat: messages, the chat template, think-block handling, UTF-8-safe detok.

The template is Qwen's ChatML form, rendered by hand (not with a Jinja template) because every engine needs the same
token ids and the prompt cache needs stable per-message token boundaries:

    <|im_start|>{role}\\n{content}<|im_end|>\\n      (one per message; earlier assistant turns lose their think block)
    <|im_start|>assistant\\n                       (the generation prompt)
    <think>\\n\\n</think>\\n\\n                      (appended when thinking is disabled: the non-thinking form)
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass

__all__ = [
    "ChatMessage",
    "ROLES",
    "IM_START",
    "IM_END",
    "END_OF_TEXT",
    "THINK_OPEN",
    "THINK_CLOSE",
    "EMPTY_THINK_BLOCK",
    "strip_think",
    "render_message",
    "render_chat",
    "generation_prompt",
    "Utf8StreamDecoder",
]

ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
EMPTY_THINK_BLOCK = "<think>\n\n</think>\n\n"


@dataclass(frozen=True)
class ChatMessage:
    """One message of a conversation. ``role`` is ``system``, ``user`` or ``assistant``."""

    role: str
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"ChatMessage.role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise ValueError(f"ChatMessage.content must be a str, got {type(self.content).__name__}")


def strip_think(content: str) -> str:
    """Drop a leading ``<think>...</think>`` block (as Qwen's template does for earlier assistant turns)."""
    if THINK_CLOSE in content:
        return content.split(THINK_CLOSE)[-1].lstrip("\n")
    return content


def render_message(message: ChatMessage, *, complete: bool = True) -> str:
    """One message in ChatML. ``complete=False`` leaves an assistant message open, to be continued by the model."""
    content = strip_think(message.content) if message.role == "assistant" and complete else message.content
    text = f"{IM_START}{message.role}\n{content}"
    return text + f"{IM_END}\n" if complete else text


def generation_prompt(disable_thinking: bool) -> str:
    """What follows the history to make the model answer as the assistant."""
    return f"{IM_START}assistant\n" + (EMPTY_THINK_BLOCK if disable_thinking else "")


def render_chat(messages: list[ChatMessage], *, disable_thinking: bool = False) -> str:
    """The whole prompt as text: every message, then the generation prompt.

    A trailing assistant message is a prefix of the reply: it is left open and continued (no generation prompt).
    """
    if messages and messages[-1].role == "assistant":
        head = "".join(render_message(m) for m in messages[:-1])
        return head + render_message(messages[-1], complete=False)
    return "".join(render_message(m) for m in messages) + generation_prompt(disable_thinking)


class Utf8StreamDecoder:
    """Turns token bytes into text deltas that never split a UTF-8 character.

    Byte-level BPE tokens can end in the middle of a multi-byte character; the standard library's incremental UTF-8
    decoder holds such a tail back until the rest arrives.
    """

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        """Text still held back at the end (an incomplete character becomes U+FFFD)."""
        return self._decoder.decode(b"", final=True)
