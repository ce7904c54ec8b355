"""Issue 15 rows 11 and 12: the memory governor under overlapping turns, and a model that cannot be loaded again.

Row 11: two spoken questions back to back in one WAV, not paced, so the second is recognised while the first reply is
still being spoken. Real parts (webrtcvad, Whisper tiny.en, a Qwen3.5 GGUF on llama.cpp, Piper), run by the memory
proofs' driver (``scripts/drive_turns.py``) in its own process. Policy ``sequential`` promises the LLM and the TTS are
never loaded at once: the governor's own event log must show that held over the whole run.

Row 12: the Piper model is removed or corrupted between turns while the governor has it unloaded; ``voicepipe run``
must stop with one line (exit 1) after one more try, instead of failing every later turn.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf

from .conftest import cli, tone_bursts

DRIVE = Path(__file__).parents[2] / "scripts" / "drive_turns.py"


@pytest.fixture(scope="module")
def piper_model() -> Path:
    pytest.importorskip("piper", reason="needs the piper extra")
    from tests.support.tts_assets import piper_joe_model_path

    return Path(piper_joe_model_path())


def test_sequential_never_loads_both_when_questions_overlap_replies(tmp_path: Path, tiny_gguf: str, piper_model):
    from tests.support.speech import SAMPLE_RATE, concat, espeak, pad, silence
    from tests.support.whisper_assets import whisper_tiny_en_dir

    wav = tmp_path / "two-questions.wav"
    audio = concat(
        pad(espeak("What is the capital of France?"), 0.5, 0.0),
        silence(0.9),  # just long enough to end the first turn: the second question follows at once
        pad(espeak("And how many people live there?"), 0.0, 1.0),
    )
    sf.write(wav, audio, SAMPLE_RATE)
    # repetition_penalty 10 keeps the random weights from repeating one token: a reply long enough to overlap
    pipeline = f"""stages:
  - type: wav-source
    path: {wav}
  - type: vad
  - type: asr
    model: {whisper_tiny_en_dir()}
  - type: llm
    engine: llamacpp
    model: {tiny_gguf}
    temperature: 0
    max_tokens: 48
    repetition_penalty: 10
    n_threads: 1
    n_ctx: 1024
  - type: chunker
  - type: piper
    model: {piper_model}
  - type: wav-sink
    path: {tmp_path / "reply.wav"}
memory:
  policy: sequential
"""
    out = tmp_path / "run.jsonl"
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"pipeline": pipeline, "prompts": None, "jetsam_mb": None, "out": str(out)}))
    proc = subprocess.run(
        [sys.executable, str(DRIVE), str(spec)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    turns = [line for line in lines if "turn" in line]
    summary = next(line for line in lines if line.get("summary"))
    assert [t["turn"] for t in turns] == [1, 2], proc.stderr[-3000:]
    assert all(t["audio_s"] > 0 for t in turns), turns
    # the arrival pattern this row is about happened: the second question waited for the first reply to be spoken
    assert "turn 2 waits until turn 1 has been spoken" in proc.stderr, proc.stderr[-3000:]
    events = summary["events"]
    assert any(e["what"].startswith("loaded") for e in events) and any(e["tts_loaded"] for e in events)
    both = [e for e in events if e["llm_loaded"] and e["tts_loaded"]]
    assert not both, both


SABOTAGE = '''
from pathlib import Path

from voicepipe.frames import LLMResponseEndFrame
from voicepipe.stage import Stage, StageConfig


class SabotageConfig(StageConfig):
    path: str
    how: str


class Sabotage(Stage):
    """Removes or corrupts the TTS model once turn 1's reply is written: the TTS holds it then, and is unloaded
    after speaking it, so the file is missing when turn 2 needs the TTS again."""

    Config = SabotageConfig

    async def process(self, frame):
        if isinstance(frame, LLMResponseEndFrame) and frame.turn_id == 1:
            path = Path(self.config.path)
            if self.config.how == "removed":
                path.unlink()
            else:
                path.write_bytes(b"this is not an ONNX model" * 100)
        await self.push(frame)
'''


@pytest.mark.parametrize("how", ["removed", "corrupted"])
def test_model_that_cannot_be_loaded_again_stops_the_run_with_one_line(tmp_path: Path, piper_model: Path, how: str):
    model = tmp_path / piper_model.name
    shutil.copyfile(piper_model, model)
    shutil.copyfile(f"{piper_model}.json", f"{model}.json")
    (tmp_path / "sabotage_plugin.py").write_text(SABOTAGE)
    wav = tmp_path / "in.wav"
    sf.write(wav, tone_bursts(3), 16000)
    pipeline = tmp_path / "p.yaml"
    # the scripted LLM stands in for a model the governor swaps out (it holds none); the TTS is the real Piper
    pipeline.write_text(
        f"""stages:
  - type: wav-source
    path: {wav}
  - type: fake-vad
  - type: fake-asr
  - type: fake-llm
    name: llm
    reply: "Here is a reply. It has two sentences."
  - type: chunker
  - type: sabotage_plugin:Sabotage
    path: {model}
    how: {how}
  - type: piper
    name: tts
    model: {model}
  - type: wav-sink
    path: {tmp_path / "unused.wav"}
memory:
  policy: sequential
  llm: llm
  tts: tts
"""
    )
    metrics = tmp_path / "m.jsonl"
    proc = cli(
        *("run", str(pipeline), "--output", str(tmp_path / "out.wav"), "--metrics", str(metrics), "--quiet"),
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]), "COLUMNS": "400"},
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: memory governor: tts could not be loaded again to speak turn 2"), proc.stderr[-3000:]
    assert proc.stderr.count("could not be loaded again") == 1, proc.stderr[-3000:]
    turns = {t["turn"]: t for t in map(json.loads, metrics.read_text().splitlines())}
    assert turns[1]["reply"] and not turns[1]["errors"], turns  # spoken before the file went
    assert 3 not in turns or not turns[3]["reply"], "the run went on after the model was gone"
