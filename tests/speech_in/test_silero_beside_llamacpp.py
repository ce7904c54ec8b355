"""Silero VAD and the llama.cpp LLM must load into one process, in either order (they share the pipeline's process)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("llama_cpp", reason="needs the llamacpp extra")

PROBE = """
import numpy as np
first = {first!r}
if first == "llama":
    import llama_cpp
    llama_cpp.llama_backend_init()
from voicepipe.vad.silero import SileroVAD
vad = SileroVAD()
vad.load()
t = np.arange(512, dtype=np.float32) / 16000
probs = [vad.speech_probability(0.3 * np.sin(2 * np.pi * 200 * t)) for _ in range(5)]
if first != "llama":
    import llama_cpp
    llama_cpp.llama_backend_init()
print("ok", max(probs) >= 0.0)
"""


@pytest.mark.parametrize("first", ["llama", "silero"])
def test_silero_and_llama_cpp_load_in_one_process(first):
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(first=first)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok True"
