"""The default pipeline.yaml: valid, the live conversation chain, thinking off, engines chosen per platform, and a
missing model offline ends in one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from tests.support.speech import espeak, pad
from voicepipe.cli.main import main
from voicepipe.config import load_pipeline

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline.yaml"


def test_default_pipeline_validates(capsys):
    assert main(["validate", str(PIPELINE)]) == 0
    assert "mic -> turn-taking -> vad -> asr -> llm -> chunker -> kokoro -> speaker" in capsys.readouterr().out


def test_default_pipeline_is_the_live_chain_with_thinking_off():
    loaded = load_pipeline(PIPELINE)
    by_type = {spec.type_name: spec.config for spec in loaded.stages}
    assert [spec.type_name for spec in loaded.stages][0] == "mic" and loaded.stages[-1].type_name == "speaker"
    assert by_type["llm"].engine == "auto" and by_type["llm"].disable_thinking is True
    assert by_type["turn-taking"].mode == "echo-guard"
    assert by_type["asr"].engine == "faster-whisper" and by_type["kokoro"].engine == "kokoro"


@pytest.mark.slow
def test_missing_model_offline_is_one_clear_line(tmp_path):
    question = tmp_path / "q.wav"
    sf.write(question, pad(espeak("hello there")), 16000)
    empty_cache = tmp_path / "hf"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "voicepipe.cli.main",
            "run",
            str(PIPELINE),
            "--input",
            str(question),
            "--output",
            str(tmp_path / "a.wav"),
        ],
        env={**_env(), "HF_HUB_OFFLINE": "1", "HF_HOME": str(empty_cache), "HF_HUB_CACHE": str(empty_cache / "hub")},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "model" in lines[0], lines
    assert "Traceback" not in proc.stderr


def _env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
