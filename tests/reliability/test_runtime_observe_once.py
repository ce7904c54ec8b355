"""Issue 15 row 5: a frame is observed once, where it was produced, however many stages it passes.

A pass-through plugin between the LLM and the chunker (the README's plugin pattern) and the memory governor's three
taps forward every reply token and every error; the live view, ``--json`` and ``--metrics`` must still show each reply
once and each stage error once. Runs ``voicepipe run`` as a real process on a real WAV; the scripted LLM/TTS stand-ins
make the expected reply exact (the bug is in the plumbing, not in a model).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import soundfile as sf

from .conftest import cli, tone_bursts

REPLY = "Four apples. Then three pears."
PLUGIN = '''
from voicepipe.frames import TranscriptFrame
from voicepipe.stage import Stage


class FailSecondTurn(Stage):
    """Raises on the second turn's transcript: one stage error that then passes every later stage."""

    async def process(self, frame):
        if isinstance(frame, TranscriptFrame) and frame.turn_id == 2:
            raise RuntimeError("plugin refused turn 2")
        await self.push(frame)
'''


def _run(tmp_path: Path, memory: str) -> tuple[subprocess.CompletedProcess, list[dict], list[dict]]:
    (tmp_path / "plugin_fail_second.py").write_text(PLUGIN)
    wav = tmp_path / "in.wav"
    sf.write(wav, tone_bursts(2), 16000)
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(
        f"""stages:
  - type: wav-source
    path: {wav}
  - type: fake-vad
  - type: fake-asr
    text: count the fruit
  - type: plugin_fail_second:FailSecondTurn
    name: gate
  - type: fake-llm
    name: llm
    reply: "{REPLY}"
  - type: voicepipe.stage:Stage
    name: pass-through
  - type: chunker
  - type: fake-tts
    name: tts
  - type: wav-sink
    path: {tmp_path / "unused.wav"}
{memory}"""
    )
    metrics = tmp_path / "m.jsonl"
    proc = cli(
        *("run", str(pipeline), "--output", str(tmp_path / "out.wav"), "--metrics", str(metrics), "--json"),
        cwd=tmp_path,
        env={"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])},
    )
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    turns = [json.loads(line) for line in metrics.read_text().splitlines()] if metrics.exists() else []
    return proc, events, turns


def _check(proc: subprocess.CompletedProcess, events: list[dict], turns: list[dict]) -> None:
    assert proc.returncode == 0, proc.stderr[-2000:]
    by_turn = {t["turn"]: t for t in turns}
    assert sorted(by_turn) == [1, 2], turns
    assert by_turn[1]["reply"] == REPLY, "the reply passed the pass-through stage and was counted twice"
    assert by_turn[1]["errors"] == []
    assert len(by_turn[2]["errors"]) == 1, by_turn[2]["errors"]
    assert "plugin refused turn 2" in by_turn[2]["errors"][0]
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1, errors
    shown = [e for e in events if e["event"] == "turn" and e["turn"] == 1]
    assert shown and shown[0]["reply"] == REPLY
    transcripts = [e for e in events if e["event"] == "transcript"]
    assert len(transcripts) == 2, transcripts


def test_pass_through_plugin_does_not_double_replies_or_errors(tmp_path: Path) -> None:
    _check(*_run(tmp_path, ""))


def test_memory_governor_taps_do_not_double_replies_or_errors(tmp_path: Path) -> None:
    # the scripted stages hold no model, so the governor is told their names; sequential makes the taps hold frames
    _check(*_run(tmp_path, "memory:\n  policy: sequential\n  llm: llm\n  tts: tts\n"))
