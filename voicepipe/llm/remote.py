"""A chat model behind an OpenAI-compatible server (vLLM, SGLang, llama.cpp's or llama-cpp-python's server).

For a user who outgrows one machine: the LLM stage streams ``/v1/chat/completions`` over HTTP instead of running the
model in-process. ``RemoteChat`` is a ``ChatEngine`` like the in-process models; the server owns the weights and its
own prompt cache, so ``load`` only checks that the server answers, the footprint is 0, and ``warm``/``rewind``/
``reset_state`` keep the engine's defaults (no state between requests). The standard library's ``http.client``
streams the server-sent events (no extra dependency).

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
import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, field_validator

from voicepipe.engine import EngineConfig
from voicepipe.errors import StageError, UserError
from voicepipe.llm.base import ChatEngine, GenerationStats
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.llm.sampling import ChatSamplingConfig
from voicepipe.llm.thinking import ThinkFilter
from voicepipe.worker import Worker

__all__ = ["RemoteChat", "RemoteChatConfig", "DEFAULT_URL"]

log = logging.getLogger("voicepipe.llm")
DEFAULT_URL = "http://127.0.0.1:8080/v1"
_DONE = object()


class RemoteChatConfig(EngineConfig):
    """Settings of the remote engine (``engine: remote``): where the server is and how long to wait for it."""

    base_url: str = Field(DEFAULT_URL, description="The server's OpenAI-compatible API, e.g. http://host:8000/v1.")
    model: str | None = Field(None, description="The model name the server expects (servers of one model ignore it).")
    api_key: str | None = Field(None, description="Sent as a Bearer token; default: $OPENAI_API_KEY if set.")
    timeout: float = Field(60.0, gt=0, description="Seconds to wait for the server's answer and for each read.")
    reply_timeout_s: float = Field(
        120.0, gt=0, description="A reply is cut after this many seconds, whatever the server does."
    )
    extra_body: dict[str, Any] = Field(default_factory=dict, description="More fields for each request's JSON body.")

    @field_validator("base_url")
    @classmethod
    def _server_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{value!r} is not a server URL: use e.g. {DEFAULT_URL}")
        return value.rstrip("/")


class RemoteChat(ChatEngine):
    """Streams chat completions from an OpenAI-compatible server (see ``RemoteChatConfig``)."""

    Config = RemoteChatConfig
    config: RemoteChatConfig
    source_field = "base_url"

    def __init__(self, config: RemoteChatConfig | None = None) -> None:
        super().__init__(config)
        self._parts = urlsplit(self.config.base_url)
        self._worker = Worker("remote-llm")
        self._loaded = False
        self._cancelled = threading.Event()

    @property
    def base_url(self) -> str:
        return self.config.base_url

    @property
    def timeout(self) -> float:
        return self.config.timeout

    @property
    def api_key(self) -> str | None:
        return self.config.api_key if self.config.api_key is not None else os.environ.get("OPENAI_API_KEY")

    # -- the engine's lifecycle: the server owns the weights ---------------------------------------------------------

    @property
    def is_loaded(self) -> bool:
        """True once the server answered ``load``'s check (and until ``unload``)."""
        return self._loaded

    def load(self) -> None:
        """Check that the server answers (``GET /models``), so a wrong URL fails at setup with a clear line."""
        try:
            self._request("GET", "/models").close()
        except StageError as exc:
            if isinstance(exc.__cause__, ConnectionRefusedError | socket.gaierror):
                raise UserError(str(exc)) from exc  # nothing listening there: the user starts it or fixes the URL
            raise
        self._loaded = True

    def unload(self) -> None:
        """Nothing of the model lives here; the next reply simply asks the server again."""
        self._loaded = False

    def cancel(self) -> None:
        """Cut the reply being streamed after the event being read (thread-safe)."""
        self._cancelled.set()

    def close(self) -> None:
        self.unload()
        self._worker.shutdown()

    # -- generation --------------------------------------------------------------------------------------------------

    def generate_stream(
        self, messages: Sequence[ChatMessage], sampling: ChatSamplingConfig | None = None
    ) -> Iterator[str]:
        """Text deltas as the server streams them (think text removed; see ``last_thinking``)."""
        sampling = sampling or ChatSamplingConfig()
        stats = GenerationStats()
        self.last_stats, self.last_thinking = stats, ""
        self._cancelled.clear()
        response = self._request("POST", "/chat/completions", self._body(messages, sampling))
        think = ThinkFilter()
        received = 0
        reply_timeout_s = self.config.reply_timeout_s
        deadline = time.monotonic() + reply_timeout_s
        try:
            for event in _sse_events(response, self.base_url):
                if self._cancelled.is_set():
                    stats.stop_reason = "cancelled"
                    break
                choice = (event.get("choices") or [{}])[0]
                delta = choice.get("delta") or {}
                if delta.get("reasoning_content"):
                    think.thinking.append(delta["reasoning_content"])
                text = think.feed(delta.get("content") or "")
                if not received:
                    text = text.lstrip()  # the answer starts at its first word
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
                        reply_timeout_s,
                    )
                    break
            tail = think.flush()
            if not received:
                tail = tail.lstrip()
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
        try:
            while (delta := await self._worker.run(next, steps, _DONE)) is not _DONE:
                yield delta
        finally:
            await asyncio.shield(self._worker.run(steps.close))

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
        if self.config.model:
            body["model"] = self.config.model
        body.update(self.config.extra_body)
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
                "server (or raise the llm stage's timeout)",
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
