"""Issue 15 row 6: a remote LLM server that is absent, failing, hanging, endless or flaky.

Each case runs ``voicepipe run`` as a real process against a real HTTP server on 127.0.0.1: a small stdlib server
that misbehaves on purpose (no real LLM server can be told to ignore ``max_tokens`` or to drop the first request).
Startup failures must be one ``error:`` line with the CLI's exit code, never an "internal error" traceback; an endless
stream must end the turn at our own ``max_tokens``; a dropped first request must be retried, and the turn succeed.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import soundfile as sf

from .conftest import cli, tone_bursts

MODELS = json.dumps({"object": "list", "data": [{"id": "m", "object": "model"}]}).encode()


def _event(text: str | None, finish: str | None = None) -> bytes:
    delta = {} if text is None else {"content": text}
    payload = {"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    mode = "ok"
    posts: list[float]

    def log_message(self, *args: object) -> None: ...

    def do_GET(self) -> None:
        if self.mode == "models-500":
            self._send(500, b"model failed to load")
        else:
            self._send(200, MODELS)

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.posts.append(time.monotonic())
        if self.mode == "flaky" and len(self.posts) == 1:
            self.connection.shutdown(socket.SHUT_RDWR)  # drop the first request without a word
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        with contextlib.suppress(OSError):
            if self.mode == "endless":  # ignores max_tokens and never finishes
                while True:
                    self.wfile.write(_event(" again"))
                    self.wfile.flush()
                    time.sleep(0.001)
            for word in ("Paris", " is", " the", " capital."):
                self.wfile.write(_event(word))
            self.wfile.write(_event(None, "stop") + b"data: [DONE]\n\n")
            self.wfile.flush()


@contextlib.contextmanager
def _server(mode: str) -> Iterator[tuple[str, list[float]]]:
    handler = type("Handler", (_Handler,), {"mode": mode, "posts": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="misbehaving-llm", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", handler.posts
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextlib.contextmanager
def _silent_listener() -> Iterator[str]:
    """Accepts connections (the kernel does, from the backlog) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/v1"


def _nothing_listening() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def _run(tmp_path: Path, url: str, llm_extra: str = "") -> tuple[subprocess.CompletedProcess, list[dict]]:
    sf.write(tmp_path / "in.wav", tone_bursts(1), 16000)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"""stages:
  - type: wav-source
    path: {tmp_path / "in.wav"}
  - type: fake-vad
  - type: fake-asr
    text: what is the capital of France
  - type: llm
    engine: remote
    base_url: {url}
{llm_extra}  - type: chunker
  - type: fake-tts
  - type: wav-sink
    path: {tmp_path / "out.wav"}
"""
    )
    metrics = tmp_path / "m.jsonl"
    proc = cli(
        *("run", str(pipeline), "--metrics", str(metrics), "--quiet"),
        cwd=tmp_path,
        env={"NO_COLOR": "1", "COLUMNS": "400"},
        timeout=60,
    )
    turns = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return proc, turns


def _one_line_error(proc: subprocess.CompletedProcess, code: int, *words: str) -> None:
    assert proc.returncode == code, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: remote LLM at http://127.0.0.1:"), proc.stderr
    for word in words:
        assert word in last, last


def test_nothing_listening_is_one_line_exit_2(tmp_path: Path) -> None:
    proc, _ = _run(tmp_path, _nothing_listening())
    _one_line_error(proc, 2, "unreachable", "start the server")


def test_http_500_on_models_is_one_line_exit_1(tmp_path: Path) -> None:
    with _server("models-500") as (url, _):
        proc, _ = _run(tmp_path, url)
    _one_line_error(proc, 1, "HTTP 500", "model failed to load")


def test_hanging_server_is_one_line_exit_1(tmp_path: Path) -> None:
    with _silent_listener() as url:
        proc, _ = _run(tmp_path, url, "    timeout: 1\n")
    _one_line_error(proc, 1, "did not answer", "within 1 s")


def test_endless_stream_ends_the_turn_at_max_tokens(tmp_path: Path) -> None:
    with _server("endless") as (url, _):
        proc, turns = _run(tmp_path, url, "    max_tokens: 12\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(turns) == 1 and turns[0]["errors"] == [], turns
    assert turns[0]["reply"].split() == ["again"] * 12, turns[0]["reply"]
    assert turns[0]["llm_generated_tokens"] == 12


def test_endless_stream_ends_the_turn_at_the_reply_deadline(tmp_path: Path) -> None:
    with _server("endless") as (url, _):
        proc, turns = _run(tmp_path, url, "    max_tokens: 100000000\n    reply_timeout_s: 1\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(turns) == 1 and turns[0]["errors"] == [], turns
    assert 0 < turns[0]["llm_generated_tokens"] < 100000000
    assert "reply still streaming after 1 s" in proc.stderr


@pytest.mark.parametrize("retries", [0, 1])
def test_dropped_request_is_retried_before_any_text(tmp_path: Path, retries: int) -> None:
    with _server("flaky") as (url, posts):
        proc, turns = _run(tmp_path, url, f"    retries: {retries}\n    retry_backoff_s: 0\n")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(turns) == 1, turns
    if retries:
        assert len(posts) == 2 and turns[0]["errors"] == [] and turns[0]["reply"] == "Paris is the capital."
    else:  # no retry allowed: the turn fails with one error, the run goes on
        assert len(posts) == 1 and len(turns[0]["errors"]) == 1 and "without answering" in turns[0]["errors"][0]
