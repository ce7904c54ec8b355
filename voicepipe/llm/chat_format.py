"""Engine-independent pieces of chat: messages, chat templates, think-block handling, UTF-8-safe detokenization.

A ``ChatTemplate`` turns a conversation into prompt text. Two kinds exist:

- ``Qwen35ChatTemplate``: Qwen3.5's ChatML form with its thinking control, rendered by hand (not with a Jinja
  template) so that every engine gets the same token ids for Qwen3.5:

    <|im_start|>{role}\\n{content}<|im_end|>\\n      (one per message; earlier assistant turns lose their think block)
    <|im_start|>assistant\\n                       (the generation prompt)
    <think>\\n\\n</think>\\n\\n                      (appended when thinking is disabled: the non-thinking form)

- ``JinjaChatTemplate``: the Jinja chat template a model ships (in its GGUF, or its ``tokenizer_config.json``),
  rendered the way transformers renders it, for every other chat model (Qwen2.5, SmolLM2, Llama, ...).

The prompt cache snapshots the engine at the end of the history (every complete message), so a template must render
the history as a prefix of the prompt; ``ChatModel`` checks that and skips snapshotting when a template does not.
"""

from __future__ import annotations

import abc
import codecs
from dataclasses import dataclass
from typing import Any

from voicepipe.llm.thinking import THINK_CLOSE, THINK_OPEN, strip_think

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
    "ChatTemplate",
    "Qwen35ChatTemplate",
    "JinjaChatTemplate",
    "CHATML_TEMPLATE",
    "Utf8StreamDecoder",
]

ROLES = ("system", "user", "assistant")
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
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


def render_message(message: ChatMessage, *, complete: bool = True) -> str:
    """One message in ChatML. ``complete=False`` leaves an assistant message open, to be continued by the model."""
    # Qwen's template drops the think block of earlier assistant turns
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


class ChatTemplate(abc.ABC):
    """How a conversation becomes prompt text for one model family."""

    #: Shown in logs and errors.
    name: str = "chat template"

    @abc.abstractmethod
    def render_history(self, messages: list[ChatMessage]) -> str:
        """Every message complete, no generation prompt: the text the prompt cache snapshots."""

    @abc.abstractmethod
    def render_prompt(self, messages: list[ChatMessage], *, disable_thinking: bool = False) -> str:
        """The whole prompt: the messages, then the generation prompt. A trailing assistant message is a prefix of
        the reply: it is left open and continued."""


class Qwen35ChatTemplate(ChatTemplate):
    """Qwen3.5's ChatML with its think block (see the module docstring)."""

    name = "qwen3.5"

    def render_history(self, messages: list[ChatMessage]) -> str:
        return "".join(render_message(m) for m in messages)

    def render_prompt(self, messages: list[ChatMessage], *, disable_thinking: bool = False) -> str:
        return render_chat(messages, disable_thinking=disable_thinking)


#: Plain ChatML (no think block), for a model that ships no template of its own: ``chat_format: chatml``.
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


class JinjaChatTemplate(ChatTemplate):
    """A model's own Jinja chat template, rendered like transformers does (llama-cpp-python's renderer).

    Thinking control: ``enable_thinking`` is passed to the template (Qwen3-style templates honour it; templates of
    models that do not think ignore it).
    """

    def __init__(self, source: str, *, bos_token: str = "", eos_token: str = "", name: str = "jinja") -> None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.name = name
        self.source = source
        self._formatter: Any = Jinja2ChatFormatter(
            template=source, eos_token=eos_token, bos_token=bos_token, add_generation_prompt=True
        )

    def _render(self, messages: list[ChatMessage], add_generation_prompt: bool, disable_thinking: bool) -> str:
        self._formatter.add_generation_prompt = add_generation_prompt
        return self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            enable_thinking=not disable_thinking,
        ).prompt

    def render_history(self, messages: list[ChatMessage]) -> str:
        return self._render(messages, False, False) if messages else ""

    def render_prompt(self, messages: list[ChatMessage], *, disable_thinking: bool = False) -> str:
        if messages and messages[-1].role == "assistant":
            return self._render(messages[:-1], True, disable_thinking) + messages[-1].content
        return self._render(messages, True, disable_thinking)


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
