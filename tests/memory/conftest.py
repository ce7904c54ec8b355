"""Real parts for the memory tests: a full-size random Qwen3.5-0.8B as Q4_K_M GGUF and Kokoro int8 from PyPI.

The pipelines run in subprocesses (``scripts/drive_turns.py``) because the jetsam simulator kills the process it watches.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

DRIVE = Path(__file__).parents[2] / "scripts" / "drive_turns.py"


@pytest.fixture(scope="session")
def full_q4_gguf() -> Path:
    """Full-size random Qwen3.5-0.8B (real shape and tokenizer) quantized to Q4_K_M, built once and cached."""
    pytest.importorskip("llama_cpp", reason="needs the llamacpp extra")
    from voicepipe.convert.to_gguf import gguf_for_checkpoint
    from voicepipe.testing.checkpoints import full_size_checkpoint

    return gguf_for_checkpoint(full_size_checkpoint(), "q4_k_m", progress=False)


@pytest.fixture(scope="session")
def kokoro_files() -> tuple[str, str, str]:
    pytest.importorskip("kokoro_onnx", reason="needs the kokoro extra")
    from tests.support import tts_assets

    return str(tts_assets.kokoro_model_path()), str(tts_assets.kokoro_voices_path()), tts_assets.KOKORO_TEST_VOICE


def drive(
    tmp_path: Path, name: str, pipeline: str, prompts: list[str], *, jetsam_mb: float | None = None, timeout=600
) -> tuple[subprocess.CompletedProcess, list[dict[str, Any]], dict[str, Any] | None]:
    """Run ``scripts/drive_turns.py`` in a subprocess; returns the process, the finished turns and the summary (None if killed)."""
    out = tmp_path / f"{name}.jsonl"
    spec = tmp_path / f"{name}.json"
    spec.write_text(json.dumps({"pipeline": pipeline, "prompts": prompts, "jetsam_mb": jetsam_mb, "out": str(out)}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(DRIVE), str(spec)], capture_output=True, text=True, timeout=timeout, env=env
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    turns = [line for line in lines if "turn" in line]
    summary = next((line for line in lines if line.get("summary")), None)
    return proc, turns, summary
