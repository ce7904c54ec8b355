"""The jetsam simulator on its own: sampling rate, peaks between samples, the kill, and `voicepipe run --jetsam-mb`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicepipe.memory.jetsam import RssWatchdog


def _in_fresh_process(body: str) -> dict:
    """Run ``body`` in a new interpreter and return the JSON it prints.

    Resident-memory checks need a process whose allocator holds no freed pages: in the long-lived test process, a
    200 MB allocation can be served from memory earlier tests freed, and the RSS never rises.
    """
    result = subprocess.run([sys.executable, "-c", body], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


WATCHDOG_PEAK = """
import json, time
import numpy as np
from voicepipe.memory.jetsam import RssWatchdog
from voicepipe.memory.rss import MB, rss_bytes
dog = RssWatchdog(hz=100)
dog.start()
try:
    before = rss_bytes()
    block = np.ones(200 * MB // 8)  # 200 MB, every page touched
    time.sleep(0.3)
    del block
    time.sleep(0.3)
finally:
    dog.stop()
print(json.dumps({"hz": dog.sample_rate_hz, "peak": dog.peak_bytes, "before": before, "MB": MB}))
"""


def test_watchdog_samples_at_least_50_hz_and_records_the_peak():
    r = _in_fresh_process(WATCHDOG_PEAK)
    assert r["hz"] >= 50, r["hz"]
    assert r["peak"] >= r["before"] + 190 * r["MB"]


SPIKE = """
import json, time
import numpy as np
from voicepipe.memory.jetsam import RssWatchdog
from voicepipe.memory.rss import MB, rss_bytes
seen = []
base = rss_bytes()
dog = RssWatchdog(limit_mb=(base + 150 * MB) / MB, hz=50, on_exceed=lambda *a: seen.append(a))
dog.start()
try:
    dog.sample()
    block = np.ones(300 * MB // 8)  # allocated and freed well within one 20 ms interval on most runs
    del block
    time.sleep(0.1)
finally:
    dog.stop()
print(json.dumps({"seen": [list(map(int, s)) for s in seen]}))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's RSS high-water mark is Linux-only")
def test_a_spike_between_two_samples_still_crosses_the_limit():
    seen = _in_fresh_process(SPIKE)["seen"]
    assert seen, "the 300 MB spike was missed"
    _, peak, limit = seen[0]
    assert peak > limit


def test_watchdog_rejects_nonsense():
    with pytest.raises(ValueError, match="at least 50 Hz"):
        RssWatchdog(hz=10)
    with pytest.raises(ValueError, match="positive"):
        RssWatchdog(limit_mb=0)


def _fake_pipeline(tmp_path: Path) -> Path:
    rate = 16000
    t = np.arange(rate) / rate
    audio = np.concatenate([np.zeros(rate // 2), 0.3 * np.sin(2 * np.pi * 300 * t), np.zeros(rate)])
    sf.write(tmp_path / "in.wav", audio.astype(np.float32), rate)
    path = tmp_path / "pipeline.yaml"
    path.write_text(
        f"""stages:
  - type: wav-source
    path: {tmp_path / "in.wav"}
  - type: fake-vad
  - type: fake-asr
    text: hello there
  - type: fake-llm
  - type: chunker
  - type: fake-tts
  - type: wav-sink
    path: {tmp_path / "out.wav"}
"""
    )
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_run_with_a_jetsam_limit_below_the_process_is_killed_like_ios(tmp_path):
    result = _run("run", str(_fake_pipeline(tmp_path)), "--quiet", "--jetsam-mb", "20")
    assert result.returncode == -9, result.stderr  # SIGKILL: no cleanup, no exit code of its own
    lines = [line for line in result.stderr.splitlines() if line.startswith("jetsam:")]
    assert len(lines) == 1 and "limit of 20 MB" in lines[0] and "peak" in lines[0], result.stderr
    assert not (tmp_path / "out.wav").exists()  # killed before the sink could publish anything


def test_run_under_a_generous_jetsam_limit_completes(tmp_path):
    result = _run("run", str(_fake_pipeline(tmp_path)), "--quiet", "--jetsam-mb", "100000")
    assert result.returncode == 0, result.stderr
    assert "jetsam" not in result.stderr
    assert (tmp_path / "out.wav").exists()


def test_jetsam_limit_must_be_positive(tmp_path):
    result = _run("run", str(_fake_pipeline(tmp_path)), "--jetsam-mb", "-5")
    assert result.returncode == 2
    assert "--jetsam-mb" in result.stderr and "Traceback" not in result.stderr


def test_run_with_a_memory_section_reports_memory_per_turn(tmp_path):
    """The fake stages hold no weights (nothing to unload); this checks the wiring from pipeline.yaml to metrics."""
    pipeline = _fake_pipeline(tmp_path)
    pipeline.write_text(
        pipeline.read_text() + "memory:\n  policy: sequential\n  llm: fake-llm\n  tts: fake-tts\n  jetsam_mb: 100000\n"
    )
    result = _run("run", str(pipeline), "--quiet", "--metrics", str(tmp_path / "m.jsonl"))
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["completed"]
    assert lines[0]["sequential"] == 1 and lines[0]["peak_rss_mb"] > 10
