"""A chat model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp's or llama-cpp-python's server).

For a user who outgrows one machine: the LLM stage streams ``/v1/chat/completions`` over HTTP instead of running the
model in-process. Same API as ``ChatModel`` (``generate``, ``generate_stream``, ``agenerate_stream``, ...); the server
owns the weights and its own prompt cache, so ``unload``/``warm``/``reset_state`` do nothing here and the footprint
is 0. The standard library's ``http.client`` streams the server-sent events (no extra dependency).

A server that fails or dies mid-reply raises ``StageError`` with one clear line: the pipeline turns that into an
``ErrorFrame``, so the turn fails and the conversation goes on. Failures a retry can cure (nothing listening, a
dropped connection before any text) are marked ``retryable``; the LLM stage retries those a bounded number of times.
At startup, nothing listening is the user's to fix (``UserError``: start the server or fix the URL); an HTTP error or
a server that does not answer within ``timeout`` is one ``StageError`` line.

The server is not trusted to stop: the reply ends after ``max_tokens`` streamed deltas or after ``reply_timeout_s``
seconds, whatever the server does (a server that ignores ``max_tokens`` would otherwise stream forever). Each read
waits at most ``timeout`` seconds, so a silent server ends the turn within ``reply_timeout_s + timeout``.
"""

from __future__ import annotations

import asyncio
import functools
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar
from urllib.parse import urlsplit

from voicepipe.errors import StageError, UserError
from voicepipe.llm.base import ChatSamplingConfig, GenerationStats
from voicepipe.llm.chat_format import THINK_CLOSE, THINK_OPEN, ChatMessage

__all__ = ["RemoteChat", "DEFAULT_URL"]

log = logging.getLogger("voicepipe.llm")
T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8080/v1"
_DONE = object()


class RemoteChat:
    """Streams chat completions from an OpenAI-compatible server at ``base_url`` (e.g. ``http://host:8000/v1``)."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        model: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        reply_timeout_s: float = 120.0,
        extra_body: dict[str, Any] | None = None,
    ) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise UserError(f"llm.model {base_url!r} is not a server URL: use e.g. http://127.0.0.1:8080/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        if not timeout > 0 or not reply_timeout_s > 0:
            raise UserError(
                f"llm.options: timeout={timeout!r} and reply_timeout_s={reply_timeout_s!r} must be positive seconds"
            )
        self.timeout = timeout
        self.reply_timeout_s = reply_timeout_s
        self.extra_body = dict(extra_body or {})
        self.last_stats = GenerationStats()
        self.last_thinking = ""
        self._parts = parts
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_pretrained(cls, base_url: str | None = None, *, load: bool = True, **kwargs: Any) -> RemoteChat:
        """Same entry point as the in-process engines: ``base_url`` plays the role of the model source."""
        chat = cls(base_url or DEFAULT_URL, **kwargs)
        if load:
            chat.load()
        return chat

    # -- the ChatModel surface that has no meaning for a server ------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        return True

    @property
    def memory_footprint(self) -> int:
        return 0

    def load(self) -> None:
        """Check that the server answers (``GET /models``), so a wrong URL fails at setup with a clear line."""
        try:
            self._request("GET", "/models").close()
        except StageError as exc:
            if isinstance(exc.__cause__, ConnectionRefusedError | socket.gaierror):
                raise UserError(str(exc)) from exc  # nothing listening there: the user starts it or fixes the URL
            raise

    def unload(self) -> None: ...

    def reset_state(self) -> None: ...

    def warm(self, messages: Sequence[ChatMessage]) -> None: ...

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False, cancel_futures=True)
                self._executor = None

    async def aload(self) -> None:
        await self.arun(self.load)

    async def aunload(self) -> None: ...

    async def awarm(self, messages: Sequence[ChatMessage]) -> None: ...

    def rewind(self, messages: Sequence[ChatMessage]) -> None: ...  # the server keeps no state between requests

    async def arewind(self, messages: Sequence[ChatMessage]) -> None: ...

    async def arun(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._get_executor(), functools.partial(fn, *args, **kwargs))

    def _get_executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="voicepipe-remote-llm")
            return self._executor

    # -- generation --------------------------------------------------------------------------------------------------

    def generate(self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None) -> str:
        return "".join(self.generate_stream(messages, sampling))

    def generate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> Iterator[str]:
        """Text deltas as the server streams them (think text removed; see ``last_thinking``)."""
        sampling = sampling or ChatSamplingConfig()
        stats = GenerationStats()
        self.last_stats, self.last_thinking = stats, ""
        response = self._request("POST", "/chat/completions", self._body(messages, sampling))
        think = _ThinkFilter()
        received = 0
        deadline = time.monotonic() + self.reply_timeout_s
        try:
            for event in _sse_events(response, self.base_url):
                choice = (event.get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    think.thinking.append(delta["reasoning_content"])
                text = think.feed(delta.get("content") or "")
                stats.generated_tokens += 1 if delta.get("content") else 0
                if stats.first_token_s is None and delta.get("content") is not None:
                    stats.first_token_s = time.perf_counter() - stats._start
                if text:
                    if stats.ttft_s is None:
                        stats.ttft_s = time.perf_counter() - stats._start
                    received += len(text)
                    yield text
                if choice.get("finish_reason"):
                    stats.stop_reason = "eos" if choice["finish_reason"] == "stop" else choice["finish_reason"]
                # our own limits, whatever the server does with max_tokens: one streamed delta is one token
                if stats.generated_tokens >= sampling.max_tokens and not stats.stop_reason:
                    stats.stop_reason = "length"
                    log.warning(
                        "remote LLM at %s sent more than max_tokens=%d; reply cut", self.base_url, sampling.max_tokens
                    )
                    break
                if time.monotonic() > deadline and not stats.stop_reason:
                    stats.stop_reason = "timeout"
                    log.warning(
                        "remote LLM at %s: reply still streaming after %.0f s; reply cut",
                        self.base_url,
                        self.reply_timeout_s,
                    )
                    break
            tail = think.flush()
            if tail:
                yield tail
        except GeneratorExit:
            stats.stop_reason = "cancelled"
            raise
        except (OSError, http.client.HTTPException) as exc:  # includes a read timeout on a stalled server
            what = f"sent nothing for {self.timeout:g} s" if isinstance(exc, TimeoutError) else "dropped the connection"
            raise StageError(
                f"remote LLM at {self.base_url} {what} mid-reply after {received} chars "
                f"({type(exc).__name__}); the turn failed",
                retryable=received == 0,  # nothing was said yet: trying again cannot repeat words
            ) from exc
        finally:
            response.close()
            self.last_thinking = "".join(think.thinking)
            stats.total_s = time.perf_counter() - stats._start

    async def agenerate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> AsyncIterator[str]:
        """The async twin: the HTTP stream is read on this client's own thread; cancelling closes it."""
        steps = self.generate_stream(list(messages), sampling)
        loop = asyncio.get_running_loop()
        executor = self._get_executor()
        try:
            while (delta := await loop.run_in_executor(executor, next, steps, _DONE)) is not _DONE:
                yield delta
        finally:
            await asyncio.shield(loop.run_in_executor(executor, steps.close))

    # -- HTTP --------------------------------------------------------------------------------------------------------

    def _body(self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig) -> dict[str, Any]:
        body: dict[str, Any] = {
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "stream": True,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "max_tokens": sampling.max_tokens,
            # not in OpenAI's API, understood by the servers voicepipe targets (vLLM, SGLang, llama.cpp)
            "top_k": sampling.top_k,
            "repeat_penalty": sampling.repetition_penalty,
            "repetition_penalty": sampling.repetition_penalty,
            "chat_template_kwargs": {"enable_thinking": not sampling.disable_thinking},
        }
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if self.model:
            body["model"] = self.model
        body.update(self.extra_body)
        return body

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> http.client.HTTPResponse:
        parts = self._parts
        conn_cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        conn = conn_cls(parts.hostname, parts.port, timeout=self.timeout)
        headers = {"Accept": "text/event-stream" if body else "application/json"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            conn.request(method, parts.path.rstrip("/") + path, body=payload, headers=headers)
            response = conn.getresponse()
        except TimeoutError as exc:
            conn.close()
            raise StageError(
                f"remote LLM at {self.base_url} did not answer {method} {path} within {self.timeout:g} s; check the "
                "server (or raise the llm stage's options.timeout)",
                retryable=True,
            ) from exc
        except (http.client.RemoteDisconnected, ConnectionResetError) as exc:
            conn.close()
            raise StageError(
                f"remote LLM at {self.base_url} closed the connection without answering {method} {path}",
                retryable=True,
            ) from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise StageError(
                f"remote LLM at {self.base_url} is unreachable ({type(exc).__name__}: {exc}); start the server or "
                "fix the llm stage's model URL",
                retryable=True,
            ) from exc
        if response.status != 200:
            detail = " ".join(response.read(300).decode("utf-8", "replace").split())  # one line
            response.close()
            raise StageError(
                f"remote LLM at {self.base_url}: HTTP {response.status} for {path}: {detail or response.reason}",
                retryable=response.status in (429, 502, 503, 504),  # busy or restarting: worth another try
            )
        return response


def _sse_events(response: http.client.HTTPResponse, url: str) -> Iterator[dict[str, Any]]:
    """JSON payloads of a server-sent-event stream, until ``[DONE]``. An early end is an error."""
    while True:
        line = response.readline()
        if not line:
            raise ConnectionResetError(f"{url} ended the stream without [DONE]")
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            return
        try:
            event = json.loads(data)
        except json.JSONDecodeError:
            log.debug("remote LLM sent a malformed event: %r", data[:200])
            continue
        if "error" in event:
            raise StageError(f"remote LLM at {url} failed mid-reply: {event['error']}")
        yield event


class _ThinkFilter:
    """Removes a leading ``<think>...</think>`` block from streamed content (servers without a reasoning parser)."""

    def __init__(self) -> None:
        self.thinking: list[str] = []
        self._buffer = ""
        self._state = "start"  # start -> (think ->) answer

    def feed(self, text: str) -> str:
        if self._state == "answer":
            return text
        self._buffer += text
        if self._state == "start":
            head = self._buffer.lstrip()
            if THINK_OPEN.startswith(head):
                return ""  # could still become <think>
            if not head.startswith(THINK_OPEN):
                self._state, out, self._buffer = "answer", head, ""
                return out
            self._state, self._buffer = "think", head[len(THINK_OPEN) :]
        if THINK_CLOSE not in self._buffer:
            return ""
        thought, _, rest = self._buffer.partition(THINK_CLOSE)
        self.thinking.append(thought)
        self._state, self._buffer = "answer", ""
        return rest.lstrip()

    def flush(self) -> str:
        out = self._buffer if self._state == "start" else ""
        self._buffer = ""
        return out.lstrip()
