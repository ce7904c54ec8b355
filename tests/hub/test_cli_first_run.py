"""What a new user sees in a terminal on the first run of the CLI, and on the second (offline, instant).

The CLI runs in a pseudo-terminal, as in a user's shell: huggingface_hub and rich show progress bars only on a
terminal, so the output checked here is the output a user sees.
"""

from __future__ import annotations

import errno
import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import soundfile as sf

from .conftest import PIPER, PIPER_FILE, QWEN, WHISPER, hub_env
from .server import HubServer

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def run_in_terminal(args: list[str], env: dict[str, str], cwd: Path, timeout: float = 300) -> tuple[int, str]:
    """Run ``python -m voicepipe.cli.main ARGS`` on a 160-column pseudo-terminal; (exit code, text it showed)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicepipe.cli.main", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**env, "TERM": "xterm", "COLUMNS": "160"},
        cwd=cwd,
        close_fds=True,
    )
    os.close(slave)
    chunks: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                raise TimeoutError(f"voicepipe {' '.join(args)} ran past {timeout} s")
            try:
                data = os.read(master, 65536)
            except OSError as exc:  # EIO: the terminal closed, the process has exited
                if exc.errno != errno.EIO:
                    raise
                break
            if not data:
                break
            chunks.append(data)
    finally:
        os.close(master)
    code = proc.wait(timeout=30)
    text = _ANSI.sub("", b"".join(chunks).decode("utf-8", "replace")).replace("\r\n", "\n")
    return code, text


def screen_lines(text: str) -> list[str]:
    """What stays on screen: each line's last redraw (progress bars redraw with carriage returns)."""
    return [line.split("\r")[-1].rstrip() for line in text.split("\n") if line.split("\r")[-1].strip()]


def repo_requests(hub: HubServer) -> list[str]:
    return [r.path for r in hub.requests if "agent-harnesses" not in r.path]


@pytest.mark.slow
def test_say_with_the_default_piper_voice_downloads_it_once_with_a_progress_bar(hub: HubServer, tmp_path: Path):
    env = hub_env(hub, tmp_path)
    out = tmp_path / "hello.wav"
    code, text = run_in_terminal(["say", "Hello there.", "--engine", "piper", "-o", str(out)], env, tmp_path)
    assert code == 0, text
    shown = screen_lines(text)
    bar = [line for line in shown if line.startswith("en_US-joe-medium.onnx:")]
    assert bar and "100%" in bar[-1] and "63.2M/63.2M" in bar[-1], shown
    assert shown[-1].startswith(f"wrote {out}"), shown
    assert sf.info(out).duration > 0.5
    assert f"/rhasspy/piper-voices/resolve/main/{PIPER_FILE}" in repo_requests(hub)

    hub.requests.clear()
    out.unlink()
    code, text = run_in_terminal(
        ["say", "Hello there.", "--engine", "piper", "-o", str(out)], {**env, "HF_HUB_OFFLINE": "1"}, tmp_path
    )
    assert code == 0, text
    assert screen_lines(text) == [line for line in screen_lines(text) if line.startswith("wrote ")], text
    assert hub.requests == []


def test_say_with_a_missing_voice_file_is_one_line(hub: HubServer, tmp_path: Path):
    env = hub_env(hub, tmp_path)
    missing = "rhasspy/piper-voices/en/en_US/joe/medium/en_US-jo-medium.onnx"
    code, text = run_in_terminal(["say", "Hi.", "--engine", "piper", "--model", missing, "-o", "x.wav"], env, tmp_path)
    assert code == 2, text
    assert screen_lines(text) == [
        f"error: model: {missing}: cannot get it from the Hugging Face hub: rhasspy/piper-voices has no file "
        "'en/en_US/joe/medium/en_US-jo-medium.onnx'; check the file name (as listed on the repo's hub page)"
    ]


#: The default engines with no model named: each stage resolves its default repo on the (local) hub.
PIPELINE = """\
version: 1
stages:
  - type: vad
    engine: webrtc
    aggressiveness: 2
  - type: asr
    engine: faster-whisper
  - type: llm
    engine: llamacpp
    max_tokens: 8
    temperature: 0
  - type: chunker
  - type: piper
"""


@pytest.mark.slow
def test_run_pipeline_first_time_downloads_and_converts_with_progress_then_runs_offline(hub: HubServer, tmp_path: Path):
    pytest.importorskip("llama_cpp")
    from tests.support.speech import espeak, pad

    (tmp_path / "pipeline.yaml").write_text(PIPELINE)
    sf.write(tmp_path / "q.wav", pad(espeak("What is the capital of France?")), 16000)
    args = ["run", "pipeline.yaml", "--input", "q.wav", "--output", "a.wav"]
    env = hub_env(hub, tmp_path)
    code, text = run_in_terminal(args, env, tmp_path)
    assert code == 0, text
    shown = screen_lines(text)
    fetched = {line.split(":")[0] for line in shown if re.match(r"Fetching \d+ files: 100%", line)}
    assert fetched == {"Fetching 4 files", "Fetching 6 files"}, shown  # Whisper's snapshot and Qwen's
    assert any("GGUF ready: model-q4_k_m.gguf" in line for line in shown), shown  # the conversion's progress
    assert not [line for line in shown if "converting to" in line], shown  # not llama.cpp's log of every tensor
    replies = [line.strip("│ ") for line in shown if "assistant:" in line]  # redrawn as the reply streams in
    assert replies and len(replies[-1]) > len("assistant: "), shown  # random weights, but it generated
    assert sf.info(tmp_path / "a.wav").duration > 0
    requested = repo_requests(hub)
    for repo in (WHISPER, QWEN, PIPER):
        assert any(path.startswith(f"/api/models/{repo}/") or path.startswith(f"/{repo}/") for path in requested)
    gguf = list((tmp_path / "voicepipe-cache" / "gguf").glob("*/model-q4_k_m.gguf"))
    assert len(gguf) == 1
    converted_at = gguf[0].stat().st_mtime_ns

    hub.requests.clear()
    code, text = run_in_terminal(args, {**env, "HF_HUB_OFFLINE": "1"}, tmp_path)
    assert code == 0, text
    assert hub.requests == []
    assert not any("Fetching" in line or "GGUF" in line for line in screen_lines(text)), text
    assert gguf[0].stat().st_mtime_ns == converted_at
