"""RemoteChat against a real OpenAI-compatible server: llama-cpp-python's, on loopback, serving the tiny GGUF."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from voicepipe.errors import StageError, UserError
from voicepipe.frames import ErrorFrame, Frame, LLMResponseEndFrame, LLMTokenFrame, TranscriptFrame
from voicepipe.llm import ChatMessage, ChatModel, ChatSamplingConfig
from voicepipe.llm.remote import RemoteChat
from voicepipe.llm.stage import LLMConfig, LLMStage
from voicepipe.stage import Stage
from voicepipe.testing.harness import Pause, run_pipeline

pytest.importorskip("llama_cpp")
pytest.importorskip("uvicorn", reason="llama-cpp-python's server needs its [server] extra (in voicepipe's dev extra)")

MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is Swift?")]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(gguf: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--chat_format", "chatml", "--n_ctx", "2048", "--n_threads", str(os.cpu_count() or 1), "--verbose", "False"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {proc.stderr.read().decode()[-2000:]}")
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/v1/models")
            if conn.getresponse().status == 200:
                return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not come up within 120 s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tiny_gguf: Path) -> Iterator[str]:
    proc, url = _start_server(tiny_gguf)
    yield url
    _stop(proc)


def test_remote_greedy_reply_equals_the_in_process_engine(server: str, chat: ChatModel) -> None:
    remote = LLMConfig(engine="remote", base_url=server).build_engine()
    assert isinstance(remote, RemoteChat) and not remote.is_loaded
    remote.load()  # the server answers
    # thinking on: llama-cpp-python's server ignores chat_template_kwargs, so both sides render the plain prompt
    sampling = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=16, disable_thinking=False)
    deltas = list(remote.generate_stream(MESSAGES, sampling))
    assert len(deltas) > 3
    # the server renders the same ChatML prompt from the same GGUF: greedy output must be the same text
    local = chat.generate(MESSAGES, sampling)
    assert "".join(deltas).strip() == local.strip()
    assert remote.last_stats.ttft_s is not None and remote.is_loaded and remote.memory_footprint == 0


async def test_remote_async_stream_and_thinking_filter(server: str) -> None:
    remote = RemoteChat.from_pretrained(server)
    sampling = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=8)
    text = "".join([d async for d in remote.agenerate_stream(MESSAGES, sampling)])
    assert text == remote.generate(MESSAGES, sampling)
    # a reply continued from an open think block comes back without its think text
    from voicepipe.llm.thinking import ThinkFilter

    f = ThinkFilter()
    out = "".join(f.feed(p) for p in ["<th", "ink>\nhmm, ", "let me see</th", "ink>\n\nHello", " there"]) + f.flush()
    assert out == "Hello there" and f.thinking == ["\nhmm, let me see"]


def test_unreachable_server_is_one_clear_error() -> None:
    # at startup nothing listening is the user's to fix (exit 2); mid-conversation it is a retryable StageError
    with pytest.raises(UserError, match="unreachable.*start the server"):
        RemoteChat.from_pretrained(f"http://127.0.0.1:{_free_port()}/v1")
    with pytest.raises(StageError, match="unreachable.*start the server") as caught:
        list(RemoteChat.from_pretrained(f"http://127.0.0.1:{_free_port()}/v1", load=False).generate_stream(MESSAGES))
    assert caught.value.retryable


class KillServerOnFirstToken(Stage):
    """Kills the server process as soon as the first reply token arrives: a server dying mid-stream."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        super().__init__(name="killer")
        self.proc = proc

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, LLMTokenFrame) and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        await self.push(frame)


@pytest.mark.slow
async def test_server_killed_mid_stream_fails_the_turn_not_the_pipeline(tiny_gguf: Path) -> None:
    proc, url = _start_server(tiny_gguf)
    try:
        config = LLMConfig(engine="remote", base_url=url, temperature=1.0, max_tokens=1500, warm_cache=False)
        stage = LLMStage(config, name="llm")
        frames = [TranscriptFrame(text="Tell me a long story.", turn_id=1), Pause(2.0)]
        frames += [TranscriptFrame(text="Are you there?", turn_id=2)]
        out = await run_pipeline([stage, KillServerOnFirstToken(proc)], frames, timeout=180)
    finally:
        _stop(proc)
    errors = [f for f in out if isinstance(f, ErrorFrame)]
    assert [e.turn_id for e in errors] == [1, 2] and not any(e.fatal for e in errors)
    assert "dropped the connection mid-reply" in errors[0].message
    assert "unreachable" in errors[1].message
    assert any(isinstance(f, LLMTokenFrame) and f.turn_id == 1 for f in out)
    assert not [f for f in out if isinstance(f, LLMResponseEndFrame)]
    assert stage.history == []  # both failed turns were forgotten


def test_request_body_carries_the_sampling_config() -> None:
    remote = RemoteChat.from_pretrained("http://127.0.0.1:9/v1", load=False, model="qwen", extra_body={"min_p": 0.0})
    body = remote._body(MESSAGES, ChatSamplingConfig(temperature=0.3, top_k=7, seed=5, disable_thinking=True))
    assert body["messages"][1] == {"role": "user", "content": "What is Swift?"}
    assert (body["temperature"], body["top_k"], body["seed"], body["model"], body["min_p"]) == (0.3, 7, 5, "qwen", 0.0)
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["stream"] is True
    json.dumps(body)
