"""Shared pieces of the reliability catalogue: the real CLI in a subprocess, a pipeline of the fake stages, input audio.

The fake stages (``voicepipe.testing.fakes``) stand in for the models where a case is about files, exit codes and
signals rather than speech: the whole chain then runs in about a second, through the real pipeline, sinks and CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone_bursts(bursts: int = 2, rate: int = 16000) -> np.ndarray:
    """Loud tone bursts separated by a second of silence: the fake VAD hears one turn per burst."""
    t = np.arange(rate) / rate
    parts = [np.zeros(rate // 2)]
    for _ in range(bursts):
        parts += [0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(rate)]
    return np.concatenate(parts).astype(np.float32)


@pytest.fixture
def bursts_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, tone_bursts(), 16000)
    return path


def fake_pipeline(
    tmp_path: Path, *, reply: str | None = None, tts: str = "", extra: str = "", sink: Path | None = None
) -> Path:
    """pipeline.yaml with the fake stages; input and output come from --input/--output unless ``sink`` is given.

    ``reply`` is a YAML scalar as written in the file (e.g. a double-quoted string with escapes); ``extra`` stages go
    between the ASR and the LLM."""
    reply_line = f"    reply: {reply}\n" if reply is not None else ""
    sink_lines = f"  - type: wav-sink\n    path: {sink}\n" if sink is not None else ""
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"stages:\n  - type: fake-vad\n  - type: fake-asr\n    text: what time is it\n{extra}"
        f"  - type: fake-llm\n{reply_line}  - type: chunker\n  - type: fake-tts\n{tts}{sink_lines}",
        encoding="utf-8",
    )
    return path


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """``voicepipe ARGS`` as a user runs it: a fresh process, its exit code and output."""
    return subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})},
    )


def start_cli(*args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "voicepipe.cli.main", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )


def wait_for(condition: Callable[[], bool], proc: subprocess.Popen, what: str, timeout: float = 60) -> None:
    """Poll until ``condition`` holds (the process must still be running)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"exited before {what}: {proc.communicate()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def one_line(result: subprocess.CompletedProcess | str) -> str:
    """The single non-empty stderr line (asserting there is exactly one, and no traceback)."""
    stderr = result if isinstance(result, str) else result.stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def partials(directory: Path) -> list[Path]:
    return sorted(directory.glob(".*.partial"))
