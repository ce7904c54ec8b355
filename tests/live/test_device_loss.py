"""The sound server dies mid-turn: ``voicepipe run`` stops cleanly with one clear line, keeping what it recognised."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.speech import SAMPLE_RATE

from .scenario import question

pytestmark = pytest.mark.slow

REPLY = "Paris is the capital of France. " * 6


def _pipeline_yaml(path: Path, whisper_dir: str, piper_model: str) -> Path:
    path.write_text(
        f"""name: device-loss
stages:
  - type: mic
    device: pulse
  - type: turn-taking
  - type: vad
  - type: asr
    model: {whisper_dir}
  - type: fake-llm
    reply: "{REPLY}"
  - type: chunker
  - type: piper
    model: {piper_model}
  - type: speaker
    device: pulse
""",
        encoding="utf-8",
    )
    return path


def test_killing_the_sound_server_mid_turn_exits_with_one_clear_line(room, tmp_path, whisper_dir, piper_model):
    config = _pipeline_yaml(tmp_path / "pipeline.yaml", whisper_dir, piper_model)
    proc = subprocess.Popen(
        [sys.executable, "-m", "voicepipe.cli.main", "run", str(config), "--metrics", str(tmp_path / "m.jsonl")],
        env=room.client_env(),
        cwd=tmp_path,  # not the checkout: a stale voicepipe.egg-info there would shadow the installed entry points
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True).start()
    try:
        time.sleep(8)  # imports and model loading
        room.play(question("What is the capital of France?"), SAMPLE_RATE, "user")
        deadline = time.monotonic() + 90
        while not any(line.startswith("you:") for line in lines):
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "no transcript"
            time.sleep(0.1)
        time.sleep(1.0)  # the reply is playing now
        room.kill()
        rc = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    stderr = [line for line in proc.stderr.read().splitlines() if line.strip()]
    assert rc == 1
    assert len(stderr) == 1, stderr
    assert stderr[0].startswith("error: ") and "disappeared" in stderr[0], stderr
    said = [line.strip() for line in lines if line.startswith("you:")]
    assert len(said) == 1 and "capital" in said[0].lower(), lines
    assert said[0].removeprefix("you: ") in (tmp_path / "m.jsonl").read_text()  # the recognised turn is kept
