"""The voicepipe command end to end: exit codes, one-line errors, a whole chain with fakes, metrics lines."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import soundfile as sf

from voicepipe.cli.main import main

from .conftest import fake_pipeline_yaml


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", *args], capture_output=True, text=True, timeout=120
    )


def test_run_whole_chain_with_fakes_writes_audio_and_one_metrics_line_per_turn(tmp_path, bursts_wav, capsys):
    out = tmp_path / "out.wav"
    metrics = tmp_path / "m.jsonl"
    pipeline = fake_pipeline_yaml(tmp_path, bursts_wav, tmp_path / "unused.wav")
    code = main(["run", str(pipeline), "--input", str(bursts_wav), "--output", str(out), "--metrics", str(metrics)])
    assert code == 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [m["turn"] for m in lines] == [1, 2]
    for m in lines:
        assert m["transcript"] == "what time is it" and m["completed"] and m["errors"] == []
        assert m["reply"].startswith("You said: what time is it.")
        for key in ("asr_ms", "llm_first_token_ms", "first_chunk_ms", "tts_first_audio_ms", "voice_to_voice_ms"):
            assert m[key] >= 0
    audio, rate = sf.read(out)
    assert rate == 24000 and len(audio) / rate > 2.0 and abs(audio).max() > 0.05
    printed = capsys.readouterr().out
    assert printed.count("you: what time is it") == 2


def test_validate_ok_and_plugins_and_devices_work(tmp_path, bursts_wav):
    pipeline = fake_pipeline_yaml(tmp_path, bursts_wav, tmp_path / "o.wav")
    result = run_cli("validate", str(pipeline))
    assert result.returncode == 0 and "OK, 7 stages" in result.stdout
    result = run_cli("plugins", "--json")
    names = {p["name"] for p in json.loads(result.stdout)}
    assert {"wav-source", "wav-sink", "chunker", "fake-llm"} <= names
    table = run_cli("plugins")
    assert table.returncode == 0 and "chat models known to work" in table.stdout
    assert "Qwen2.5-Coder-0.5B" in table.stdout and "Qwen3.5-0.8B" in table.stdout
    result = run_cli("devices")
    assert result.returncode == 0 and result.stdout.strip()


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("stages: [\n", "YAML syntax error"),
        ("stages:\n  - type: nope\n", "stages[0].type: unknown stage type 'nope'"),
        ("stages:\n  - type: fake-vad\n    threshold: [1]\n", "stages[0].threshold: Input should be a valid number"),
        ("stages:\n  - type: fake-vad\n    colour: red\n", "stages[0].colour: unknown field"),
        ("stages:\n  - type: wav-sink\n", "stages[0].path: required field is missing"),
        ("stages:\n  - type: not_a_module_anywhere:X\n", "cannot import module"),
        ("stages:\n  - type: voicepipe.frames:Frame\n", "is not a voicepipe stage"),
    ],
)
def test_user_mistakes_exit_2_with_one_line_and_no_traceback(tmp_path, yaml_text, expected):
    pipeline = tmp_path / "p.yaml"
    pipeline.write_text(yaml_text)
    result = run_cli("validate", str(pipeline))
    assert result.returncode == 2
    assert expected in result.stderr and str(pipeline) in result.stderr
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_input_and_output_paths_exit_2_and_write_nothing(tmp_path, bursts_wav):
    pipeline = fake_pipeline_yaml(tmp_path, bursts_wav, tmp_path / "o.wav")
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("hello, I am a text file")
    cases = [
        (["--input", str(not_audio)], "not a readable audio file"),
        (["--input", str(tmp_path / "missing.wav")], "no such file"),
        (["--input", str(bursts_wav), "--output", str(tmp_path / "nodir" / "o.wav")], "does not exist; create it"),
        (["--input", str(bursts_wav), "--metrics", str(tmp_path / "nodir" / "m.jsonl")], "does not exist; create it"),
    ]
    for extra, expected in cases:
        result = run_cli("run", str(pipeline), *extra)
        assert result.returncode == 2, (extra, result.stderr)
        assert expected in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "nodir").exists()
    assert not (tmp_path / "o.wav").exists()


def test_missing_pipeline_file_is_a_user_error(tmp_path):
    result = run_cli("run", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2 and "no such file" in result.stderr


def test_a_failing_stage_fails_its_turn_but_the_run_completes(tmp_path, bursts_wav):
    broken = tmp_path / "broken_stage.py"
    broken.write_text(
        "from voicepipe.frames import TranscriptFrame\n"
        "from voicepipe.stage import Stage\n"
        "class FailFirst(Stage):\n"
        "    async def process(self, frame):\n"
        "        if isinstance(frame, TranscriptFrame) and frame.turn_id == 1:\n"
        "            raise RuntimeError('model crashed')\n"
        "        await self.push(frame)\n"
    )
    pipeline = fake_pipeline_yaml(tmp_path, bursts_wav, tmp_path / "o.wav", extra_stage="")
    text = pipeline.read_text().replace(
        "  - type: fake-llm\n", "  - type: broken_stage:FailFirst\n  - type: fake-llm\n"
    )
    pipeline.write_text(text)
    metrics = tmp_path / "m.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", "run", str(pipeline), "--metrics", str(metrics), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    turns = {m["turn"]: m for m in map(json.loads, metrics.read_text().splitlines())}
    assert "model crashed" in turns[1]["errors"][0] and not turns[1]["completed"]
    assert turns[2]["completed"] and turns[2]["reply"]
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert any(e["event"] == "error" and e["turn"] == 1 for e in events)


def test_ctrl_c_stops_cleanly_keeps_what_was_written_and_prints_no_traceback(tmp_path, bursts_wav):
    import signal
    import time

    out = tmp_path / "out.wav"
    pipeline = fake_pipeline_yaml(tmp_path, bursts_wav, out)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "voicepipe.cli.main",
            "run",
            str(pipeline),
            "--realtime",
            "--input",
            str(bursts_wav),
            "--output",
            str(out),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait for the first turn's audio, so there is something to keep
        time.sleep(0.1)
        if list(tmp_path.glob(".out.wav.*.partial")):  # this run's own temporary file
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped" in stderr
    audio, _ = sf.read(out)
    assert len(audio) > 0, "audio written before Ctrl-C was lost"
    assert not list(tmp_path.glob(".out.wav*.partial"))
