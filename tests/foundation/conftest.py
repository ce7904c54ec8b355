from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf


def tone_bursts(rate: int = 16000, bursts: int = 2, channels: int = 1) -> np.ndarray:
    """Loud tone bursts separated by silence: the fake VAD hears one turn per burst."""
    t = np.arange(rate) / rate
    parts = [np.zeros(rate // 2)]
    for _ in range(bursts):
        parts += [0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(rate)]
    mono = np.concatenate(parts).astype(np.float32)
    return mono if channels == 1 else np.stack([mono] * channels, axis=1)


@pytest.fixture
def bursts_wav(tmp_path: Path) -> Path:
    path = tmp_path / "in.wav"
    sf.write(path, tone_bursts(), 16000)
    return path


def fake_pipeline_yaml(tmp_path: Path, wav: Path, out: Path, *, extra_stage: str = "") -> Path:
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""name: fakes
stages:
  - type: wav-source
    path: {wav}
  - type: fake-vad
  - type: fake-asr
    text: what time is it
  - type: fake-llm
  - type: chunker
{extra_stage}  - type: fake-tts
  - type: wav-sink
    path: {out}
"""
    )
    return path
