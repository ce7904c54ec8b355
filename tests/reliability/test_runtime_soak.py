"""Issue 15 rows 13 and 14, short versions: a soak and a barge-in storm, each run by its script as a real process.

``scripts/soak.py`` (15 turns, the real 0.5B chat model on llama.cpp, Piper): no thread or asyncio-task growth after
the warm-up and bounded RSS growth. ``scripts/barge_in_storm.py`` (a few interruptions over a private PulseAudio
server): no lost turn, no stuck "speaking" state, history consistent. The long runs (500 turns, 10 minutes) are
benchmarks; their commands are in the scripts' docstrings.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPTS = Path(__file__).parents[2] / "scripts"


def _script(name: str, *args: str, timeout: float) -> tuple[subprocess.CompletedProcess, dict]:
    out = Path(args[args.index("--json") + 1])
    proc = subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True, timeout=timeout)
    report = json.loads(out.read_text()) if out.exists() else {}
    return proc, report


def test_short_soak_has_no_thread_or_task_growth_and_bounded_rss(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    pytest.importorskip("piper", reason="needs the piper extra")
    # a short history window (2 turns) reaches the steady state within the warm-up; the drift limit needs 500 turns
    proc, report = _script(
        "soak.py",
        *("--turns", "15", "--warmup", "5", "--max-history", "4", "--max-tokens", "16"),
        *("--max-rss-growth-pct", "10", "--max-drift-pct", "-1", "--json", str(tmp_path / "soak.json")),
        timeout=1200,
    )
    assert report, proc.stderr[-3000:]
    assert report["turns"] == 15 and report["errors"] == [], report
    assert report["threads_end"] <= report["threads_after_warmup"], report
    assert report["tasks_end"] <= report["tasks_after_warmup"], report
    assert report["rss_growth_pct"] < 10, report
    assert proc.returncode == 0, (report["failures"], proc.stderr[-3000:])


def test_short_barge_in_storm_loses_no_turn_and_ends_listening(tmp_path: Path) -> None:
    if shutil.which("pulseaudio") is None or shutil.which("pacat") is None:
        pytest.skip("needs pulseaudio and pulseaudio-utils (scripts/install_system_deps.sh)")
    pytest.importorskip("llama_cpp")
    pytest.importorskip("sounddevice")
    proc, report = _script(
        "barge_in_storm.py",
        "--interruptions",
        "3",
        "--max-tokens",
        "48",
        "--json",
        str(tmp_path / "storm.json"),
        timeout=1200,
    )
    assert report, proc.stderr[-3000:]
    assert report["failures"] == [], report
    assert report["questions"] == 4 and report["turns"] == 4, report
    assert report["interruptions"] == 3 and report["interrupted_turns"] == 3, report
    assert proc.returncode == 0, proc.stderr[-3000:]
