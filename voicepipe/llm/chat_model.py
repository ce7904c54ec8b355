"""``ChatModel``: the ``ChatEngine`` of a model run in this process (MLX, llama.cpp, CoreML).

``ChatModel`` holds all engine-independent logic once: prompts from the model's chat template (Qwen3.5's by default;
any model's own template on llama.cpp), the thinking cap, keeping think text out of
results, stopping at ``<|im_end|>``, UTF-8-safe streaming, the async twin, cancellation, and the multi-turn prompt-cache
policy (``voicepipe.llm.prompt_cache``). An engine subclass implements only the token-level hooks below.

Public API: ``generate``, ``generate_stream``, ``agenerate_stream``, ``warm``, ``rewind``, ``reset_state``,
``load``/``unload``, ``cancel``, ``close``, ``is_loaded``, ``memory_footprint``, ``last_thinking``,
``last_tokens``, ``last_stats``; for tests and benchmarks also ``encode_chat``, ``tokenize``, ``detokenize``,
``generate_tokens`` and ``logits_for``.

Engine hooks (all called on the model's one dedicated thread, only while the weights are loaded unless noted):

=========================================  ========================================================================
``_load_weights() -> None``                 Load the weights; afterwards the live state is empty.
``_unload_weights() -> None``               Free the weights and the live state (snapshots live outside the engine).
``_weights_nbytes() -> int``                Bytes of resident weights (may be called from any thread; only when loaded).
``_tokenize(text) -> list[int]``            Token ids of ``text``; special tokens written in the text (``<|im_end|>``)
                                            become their ids; no BOS is added.
``_token_bytes(token) -> bytes``            The raw bytes of one token (byte-level BPE: possibly part of a UTF-8
                                            character); ``b""`` for control tokens.
``_reset_engine() -> None``                 Make the live state empty (position 0).
``_forward(tokens) -> None``                Append ``tokens`` to the live state (prefill or one decode step); the next
                                            ``_sample`` draws from the logits after the last of them.
``_start_sampling(sampling, context)``       Set up the sampler for one reply (seed, temperature 0 = greedy, top-k,
                                            top-p, repetition penalty), e.g. with mlx-lm's or llama.cpp's samplers.
                                            ``context`` is every token the live state holds (the prompt), for the
                                            repetition penalty; tokens fed later arrive through ``_forward``.
``_sample() -> int``                        Draw the next token from the current logits (does not feed it back).
``_save_state() -> object``                 An independent copy of the live state (later ``_forward`` calls must not
                                            change it); it must stay valid across unload/reload of the same weights.
``_restore_state(state) -> None``           Make a saved state the live state.
``_state_nbytes(state) -> int``             Optional: bytes a snapshot holds (for accounting; default 0).
``_logits() -> numpy.ndarray``              Optional: the float32 logits ``_sample`` would draw from (parity tests).
``_extra_stop_ids() -> set[int]``           Optional: more stop tokens (the engine's EOS); default none.
``_chat_template() -> ChatTemplate``        Optional: the loaded model's chat template; default Qwen3.5's.
=========================================  ========================================================================

Each engine declares its ``Config`` (a ``ChatModelConfig``: ``model`` names the weights, ``max_snapshots`` the
prompt-cache size, plus the engine's own settings); its constructor stores it, and ``_load_weights`` finds, converts and
loads the files. ``from_pretrained(source, **fields)`` builds the config and loads; pass ``load=False`` to defer
loading to the model's thread.

Loading policy: using an unloaded model (``generate``, ``tokenize``, ...) reloads it transparently; the memory governor
relies on that. ``unload()`` keeps the prompt-cache snapshots, so the next turn after a reload restores its snapshot
instead of prefilling the whole conversation again.

Threading: every engine call runs on the model's own ``Worker`` thread (started on first use, never in the
constructor), because MLX ties generation to one thread. ``agenerate_stream`` pulls one token per step from that
thread, so cancelling its consumer stops generation within one token, and the live state stays consistent with the
tokens it holds.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from typing import Any, ClassVar, TypeVar

import numpy as np
from pydantic import Field

from voicepipe.engine import EngineConfig
from voicepipe.llm.base import ChatEngine, GenerationStats
from voicepipe.llm.chat_format import (
    END_OF_TEXT,
    IM_END,
    IM_START,
    THINK_CLOSE,
    THINK_OPEN,
    ChatMessage,
    ChatTemplate,
    Qwen35ChatTemplate,
    Utf8StreamDecoder,
)
from voicepipe.llm.prompt_cache import PromptCache
from voicepipe.llm.sampling import ChatSamplingConfig
from voicepipe.llm.thinking import ThinkState
from voicepipe.worker import Worker

__all__ = ["ChatModel", "ChatModelConfig"]

log = logging.getLogger("voicepipe.llm")
T = TypeVar("T")
_DONE = object()


class ChatModelConfig(EngineConfig):
    """Settings every in-process chat engine has; each engine's ``Config`` extends it."""

    model: str | None = Field(None, description="Where the weights come from: a path or a Hugging Face repo id.")
    max_snapshots: int = Field(4, ge=1, description="Conversation states the prompt cache keeps.")


class ChatModel(ChatEngine):
    """Base of every in-process chat engine. See the module docstring for the hooks a subclass implements."""

    Config: ClassVar[type[ChatModelConfig]] = ChatModelConfig
    config: ChatModelConfig

    def __init__(self, config: ChatModelConfig | None = None) -> None:
        super().__init__(config)
        self.prompt_cache = PromptCache(self.config.max_snapshots)
        #: Token ids generated in the last reply (thinking included, stop token excluded).
        self.last_tokens: list[int] = []
        self._loaded = False
        self._state_tokens: list[int] | None = []  # what the live state holds; None = unknown (after an error)
        self._worker = Worker(type(self).__name__)
        self._cancelled = threading.Event()
        self._active: Iterator[str] | None = None
        self._ids: dict[str, int | None] = {}
        self._close_think_tokens: list[int] = []
        #: How conversations become prompts; set from the engine's ``_chat_template()`` at load.
        self.chat_template: ChatTemplate = Qwen35ChatTemplate()

    # -- engine hooks ------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def _load_weights(self) -> None: ...

    @abc.abstractmethod
    def _unload_weights(self) -> None: ...

    @abc.abstractmethod
    def _weights_nbytes(self) -> int: ...

    @abc.abstractmethod
    def _tokenize(self, text: str) -> list[int]: ...

    @abc.abstractmethod
    def _token_bytes(self, token: int) -> bytes: ...

    @abc.abstractmethod
    def _reset_engine(self) -> None: ...

    @abc.abstractmethod
    def _forward(self, tokens: list[int]) -> None: ...

    @abc.abstractmethod
    def _start_sampling(self, sampling: ChatSamplingConfig, context: list[int]) -> None: ...

    @abc.abstractmethod
    def _sample(self) -> int: ...

    @abc.abstractmethod
    def _save_state(self) -> Any: ...

    @abc.abstractmethod
    def _restore_state(self, state: Any) -> None: ...

    def _state_nbytes(self, state: Any) -> int:
        return 0

    def _logits(self) -> np.ndarray:
        raise NotImplementedError(f"{type(self).__name__} does not expose logits")

    def _extra_stop_ids(self) -> set[int]:
        return set()

    def _chat_template(self) -> ChatTemplate:
        """Optional: the template of the loaded model (called once per load); default Qwen3.5's."""
        return Qwen35ChatTemplate()

    # -- the model's thread ------------------------------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], /, *args: Any) -> T:
        """Run ``fn`` on the model's thread and wait for it (directly when already on that thread)."""
        return self._worker.call(fn, *args)

    async def arun(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run a blocking call on the model's thread without blocking the event loop."""
        return await self._worker.run(fn, *args, **kwargs)

    def close(self) -> None:
        """Unload and stop the model's thread."""
        self.unload()
        self._worker.shutdown(wait=True)

    def cancel(self) -> None:
        """Stop the reply being generated on the model's thread after its current token (thread-safe)."""
        if self._active is not None:
            self._cancelled.set()

    # -- loading -----------------------------------------------------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return self._loaded

    @property
    def memory_footprint(self) -> int:
        """Bytes of resident weights (0 while unloaded). Prompt-cache snapshots are ``prompt_cache.nbytes``."""
        return self._weights_nbytes() if self._loaded else 0

    def load(self) -> None:
        """Load the weights (a no-op when loaded). Using an unloaded model calls this by itself."""
        self._call(self._ensure_loaded)

    def unload(self) -> None:
        """Free the weights. The prompt-cache snapshots are kept; the next use reloads the weights."""
        self._call(self._do_unload)

    def _ensure_loaded(self) -> None:
        if self._loaded:
            return
        started = time.perf_counter()
        self._load_weights()
        try:
            self.chat_template = self._chat_template()
        except BaseException:
            self._unload_weights()  # e.g. a model without a chat template: nothing half-loaded stays behind
            raise
        self._loaded = True
        self._state_tokens = []
        self._ids = {
            name: self._single_token(name) for name in (IM_START, IM_END, END_OF_TEXT, THINK_OPEN, THINK_CLOSE)
        }
        self._close_think_tokens = self._tokenize(THINK_CLOSE + "\n\n")
        log.info("%s loaded in %.2f s (%d MB)", type(self).__name__, time.perf_counter() - started, self.memory_mb)

    def _do_unload(self) -> None:
        self._close_active()
        if self._loaded:
            self._unload_weights()
            self._loaded = False
            self._state_tokens = None
            log.info("%s unloaded (prompt cache kept: %d snapshots)", type(self).__name__, len(self.prompt_cache))

    @property
    def memory_mb(self) -> int:
        return self.memory_footprint // (1024 * 1024)

    def _single_token(self, text: str) -> int | None:
        ids = self._tokenize(text)
        return ids[0] if len(ids) == 1 else None

    # -- tokens ------------------------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` (special tokens parsed, no BOS)."""
        return self._call(self._loaded_call, self._tokenize, text)

    def detokenize(self, tokens: Sequence[int]) -> str:
        """Text of ``tokens`` (control tokens dropped; invalid UTF-8 replaced)."""
        data = self._call(self._loaded_call, lambda: b"".join(self._token_bytes(t) for t in tokens))
        return data.decode("utf-8", errors="replace")

    def _loaded_call(self, fn: Callable[..., T], *args: Any) -> T:
        self._ensure_loaded()
        return fn(*args)

    def encode_chat(self, messages: Sequence[ChatMessage], *, disable_thinking: bool = False) -> list[int]:
        """The prompt's token ids, exactly as generation feeds them."""
        return self._call(self._loaded_call, self._encode, list(messages), disable_thinking)[1]

    def _encode(self, messages: list[ChatMessage], disable_thinking: bool) -> tuple[list[int], list[int]]:
        """(history, prompt): history ends at the last complete message (a turn boundary), prompt is all of it.

        The history text and the rest of the prompt are tokenized separately, so the history's tokens are always a
        prefix of the prompt's (the boundary is a message end, where templates put a special token or a newline).
        A template whose history text is not a prefix of its prompt text gets an empty history: no snapshot.
        """
        if not messages:
            raise ValueError("messages is empty: pass at least one ChatMessage")
        for m in messages:
            if not isinstance(m, ChatMessage):
                raise ValueError(f"messages must be ChatMessage objects, got {type(m).__name__}")
        complete = messages[:-1] if messages[-1].role == "assistant" else messages
        history_text = self.chat_template.render_history(complete)
        prompt_text = self.chat_template.render_prompt(messages, disable_thinking=disable_thinking)
        if not prompt_text.startswith(history_text):
            return [], self._tokenize(prompt_text)
        history = self._tokenize(history_text) if history_text else []
        return history, history + self._tokenize(prompt_text[len(history_text) :])

    def _history_tokens(self, messages: list[ChatMessage]) -> list[int]:
        return self._tokenize(self.chat_template.render_history(messages)) if messages else []

    # -- state and prompt cache --------------------------------------------------------------------------------------

    def reset_state(self) -> None:
        """Forget the conversation: drop all snapshots and empty the live state."""
        self._call(self._do_reset)

    def _do_reset(self) -> None:
        self._close_active()
        self.prompt_cache.clear()
        if self._loaded:
            self._reset_engine()
            self._state_tokens = []

    def rewind(self, messages: Sequence[ChatMessage]) -> None:
        """Forget everything beyond the finished conversation ``messages`` (e.g. a discarded speculative reply).

        Stops a streaming reply, drops every snapshot that is not a prefix of the conversation, and brings the live
        state back to the longest snapshot that is one (or empties it), so no state of the discarded reply survives
        and the next turn prefills only its new message.
        """
        self._call(self._do_rewind, list(messages))

    def _do_rewind(self, messages: list[ChatMessage]) -> None:
        self._close_active()
        if not self._loaded:
            self.prompt_cache.clear()  # telling the stale snapshots apart needs the tokenizer: never reload for it
            return
        tokens = self._history_tokens(messages)
        dropped = self.prompt_cache.keep_prefixes_of(tokens)
        live = self._state_tokens
        if live is not None and tuple(tokens[: len(live)]) == tuple(live):
            return  # the live state holds only the conversation: keep it
        snap = self.prompt_cache.longest_prefix(tokens)
        if snap is not None:
            self._restore_state(snap.state)
            self._state_tokens = list(snap.tokens)
        else:
            self._reset_engine()
            self._state_tokens = []
        log.debug("rewound to %d tokens (%d snapshot(s) dropped)", len(self._state_tokens), dropped)

    def _feed(self, tokens: list[int]) -> None:
        if not tokens:
            return
        try:
            self._forward(tokens)
        except BaseException:
            self._state_tokens = None  # the engine may hold part of them: never trust this state again
            raise
        assert self._state_tokens is not None  # noqa: S101 - internal invariant, not validation
        self._state_tokens.extend(tokens)

    def _prepare(
        self, history: list[int], prompt: list[int], stats: GenerationStats, *, one_pass: bool = False
    ) -> None:
        """Bring the live state to ``prompt`` prefilling as little as possible, snapshotting at ``history``.

        Reuse the live state when it is a prefix of the prompt, else the longest snapshot that is one, else start
        cold. At least one prompt token is always fed, so fresh logits exist. ``one_pass``: feed the rest of the
        prompt in one pass and snapshot at ``prompt`` instead (:meth:`_reply_header_in_history` says when that
        snapshot serves the next turn as well).
        """
        limit = len(prompt) - 1 if len(prompt) > len(history) else len(prompt)
        live = self._state_tokens
        live_ok = live is not None and 0 < len(live) <= limit and prompt[: len(live)] == live
        snap = self.prompt_cache.longest_prefix(prompt, max_len=limit)
        if snap is not None and (not live_ok or len(snap.tokens) > len(live)):
            self._restore_state(snap.state)
            self._state_tokens = list(snap.tokens)
        elif not live_ok:
            self._reset_engine()
            self._state_tokens = []
        stats.prompt_tokens = len(prompt)
        stats.cached_tokens = len(self._state_tokens)
        stats.prefill_tokens = len(prompt) - stats.cached_tokens
        if one_pass:
            self._feed(prompt[len(self._state_tokens) :])
            if history and prompt not in self.prompt_cache:
                state = self._save_state()
                self.prompt_cache.add(prompt, state, self._state_nbytes(state))
            return
        if history and len(self._state_tokens) < len(history):
            self._feed(history[len(self._state_tokens) :])
        if history and history not in self.prompt_cache and self._state_tokens == history:
            state = self._save_state()
            self.prompt_cache.add(history, state, self._state_nbytes(state))
        self._feed(prompt[len(self._state_tokens) :])

    def _reply_header_in_history(self, disable_thinking: bool) -> bool:
        """Whether the prompt's opening of the reply is also how the history renders that reply's start (ChatML: yes;
        Qwen3.5 without thinking: no, its prompt opens with an empty think block that the history leaves out).

        Then a snapshot of the whole prompt is a prefix of the next turn's prompt, and the prompt can be prefilled in
        one pass: a snapshot at the end of the user's message would need a pass of its own, and on a CPU every pass
        reads all the weights (Qwen2.5-0.5B on llama.cpp, 2 cores: 61 ms for a 12-token message and its 3-token
        reply header in one pass, 99 ms in two).
        """
        user = [ChatMessage("user", "a")]
        opened = self.chat_template.render_prompt(user, disable_thinking=disable_thinking)
        return self.chat_template.render_history([*user, ChatMessage("assistant", "b")]).startswith(opened)

    def warm(self, messages: Sequence[ChatMessage]) -> None:
        """Prefill a finished conversation and snapshot it, so the next turn prefills only the new user message.

        Call it when the reply is over (e.g. while the user is still silent); it is optional, and does nothing while
        a reply is streaming.
        """
        self._call(self._do_warm, list(messages))

    def _do_warm(self, messages: list[ChatMessage]) -> None:
        if self._generating():
            return  # a reply is streaming; warming now would cut it off
        self._ensure_loaded()
        history = self._history_tokens(messages)  # every message complete, the last reply included
        if history and history not in self.prompt_cache:
            self._prepare(history, history, GenerationStats())

    # -- generation --------------------------------------------------------------------------------------------------

    def generate(self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None) -> str:
        """The whole reply (think text excluded; see ``last_thinking``)."""
        return "".join(self.generate_stream(messages, sampling))

    def generate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> Iterator[str]:
        """Text deltas of the reply as they are generated; none splits a UTF-8 character or contains think text."""
        steps = self._reply_steps(list(messages), sampling or ChatSamplingConfig())
        try:
            while (delta := self._call(next, steps, _DONE)) is not _DONE:
                if delta:
                    yield delta
        finally:
            self._call(steps.close)

    async def agenerate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> AsyncIterator[str]:
        """The async twin of ``generate_stream``: each token is computed on the model's thread.

        Cancelling the consumer (or ``aclose()``) stops generation within one token. Use ``contextlib.aclosing`` when
        breaking out of the loop early, so generation stops at once.
        """
        steps = self._reply_steps(list(messages), sampling or ChatSamplingConfig())
        try:
            while (delta := await self._worker.run(next, steps, _DONE)) is not _DONE:
                if delta:
                    yield delta
        finally:
            await asyncio.shield(self._worker.run(steps.close))

    def generate_tokens(self, prompt: Sequence[int], sampling: ChatSamplingConfig | None = None) -> list[int]:
        """Raw continuation of ``prompt`` token ids (no template, no thinking logic), stopping at a stop token.

        Reuses the live state or a snapshot when one is a prefix of ``prompt``, prefills the rest in one call and
        takes no snapshot. For parity tests and benchmarks.
        """
        return self._call(self._do_generate_tokens, list(prompt), sampling or ChatSamplingConfig())

    def _do_generate_tokens(self, prompt: list[int], sampling: ChatSamplingConfig) -> list[int]:
        self._close_active()
        self._ensure_loaded()
        stats = GenerationStats()
        self.last_stats = stats
        self._prepare([], prompt, stats)
        stats.prefill_s = time.perf_counter() - stats._start
        self._start_sampling(sampling, list(self._state_tokens or []))
        out: list[int] = []
        stop = self._stop_ids()
        for _ in range(sampling.max_tokens):
            if out:
                self._feed(out[-1:])
            token = self._sample()
            if stats.ttft_s is None:
                stats.ttft_s = stats.first_token_s = time.perf_counter() - stats._start
            if token in stop:
                break
            out.append(token)
        stats.generated_tokens = len(out)
        stats.total_s = time.perf_counter() - stats._start
        return out

    def logits_for(self, tokens: Sequence[int]) -> np.ndarray:
        """Logits after each of ``tokens``, fed one at a time from an empty state: shape (len(tokens), vocab)."""
        return self._call(self._do_logits_for, list(tokens))

    def _do_logits_for(self, tokens: list[int]) -> np.ndarray:
        self._close_active()
        self._ensure_loaded()
        self._reset_engine()
        self._state_tokens = []
        rows = []
        for token in tokens:
            self._feed([token])
            rows.append(np.array(self._logits(), dtype=np.float32).reshape(-1))
        return np.stack(rows)

    def _stop_ids(self) -> set[int]:
        ids = {self._ids.get(IM_END), self._ids.get(END_OF_TEXT)} | self._extra_stop_ids()
        return {i for i in ids if i is not None}

    def _close_active(self) -> None:
        if self._active is not None:
            self._active.close()  # a stream abandoned without close(): stop it so its state is consistent
            self._active = None

    def _reply_steps(self, messages: list[ChatMessage], sampling: ChatSamplingConfig) -> Iterator[str]:
        """The generation loop as a generator: each ``next()`` computes one token on the model's thread.

        Nothing runs before the first ``next()``, so loading and prefill happen on the model's thread too.
        """
        self._close_active()
        self._ensure_loaded()
        inner = self._reply_loop(messages, sampling)
        self._active = inner
        yield from inner

    def _generating(self) -> bool:
        return self._active is not None and self._active.gi_frame is not None  # type: ignore[attr-defined]

    def _reply_loop(self, messages: list[ChatMessage], sampling: ChatSamplingConfig) -> Iterator[str]:
        stats = GenerationStats()
        self.last_stats, self.last_thinking, self.last_tokens = stats, "", []
        self._cancelled.clear()
        think = ThinkState(self._ids.get(THINK_OPEN), self._ids.get(THINK_CLOSE), sampling.max_thinking_tokens)
        stop = self._stop_ids()
        answer, thoughts = Utf8StreamDecoder(), Utf8StreamDecoder()
        thinking_text: list[str] = []
        pending: list[int] = []  # sampled or forced tokens not yet fed to the engine
        started = False  # answer text has begun
        try:
            history, prompt = self._encode(messages, sampling.disable_thinking)
            self._prepare(history, prompt, stats, one_pass=self._reply_header_in_history(sampling.disable_thinking))
            stats.prefill_s = time.perf_counter() - stats._start
            think.starts_inside(prompt, self._ids.get(IM_START))
            self._start_sampling(sampling, list(self._state_tokens or []))
            stats.stop_reason = "max_tokens"
            for _ in range(sampling.max_tokens):
                if self._cancelled.is_set():
                    stats.stop_reason = "cancelled"
                    break
                self._feed(pending)
                pending = []
                token = self._sample()
                stats.generated_tokens += 1
                if stats.first_token_s is None:
                    stats.first_token_s = time.perf_counter() - stats._start
                if token in stop:
                    stats.stop_reason = "eos"
                    break
                self.last_tokens.append(token)
                pending.append(token)
                text = ""
                kind = think.step(token, answer_started=started)
                if kind == "think":
                    thinking_text.append(thoughts.feed(self._token_bytes(token)))
                elif kind == "answer":
                    text = answer.feed(self._token_bytes(token))
                    if not started:
                        text = text.lstrip()
                        started = bool(text)
                        if started:
                            stats.ttft_s = time.perf_counter() - stats._start
                if think.force_close:  # the thinking cap: ``</think>\n\n`` makes the model go on with the answer
                    think.force_close = False
                    pending.extend(self._close_think_tokens)
                    self.last_tokens.extend(self._close_think_tokens)
                    stats.forced_think_close = True
                yield text  # "" for think/control tokens and split characters: one step per token, always
            tail = answer.flush() if started else answer.flush().lstrip()
            if tail:
                yield tail
        except GeneratorExit:
            stats.stop_reason = "cancelled"
            raise
        finally:
            stats.thinking_tokens = think.thinking_tokens
            self.last_thinking = "".join(thinking_text) + thoughts.flush()
            stats.total_s = time.perf_counter() - stats._start
