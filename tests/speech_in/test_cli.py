"""``voicepipe transcribe`` end to end: a real WAV file in, one line per turn out; user mistakes exit 2."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from tests.support import speech
from voicepipe.cli.main import main

from .conftest import CLEAN_SET, wer


@pytest.fixture(scope="module")
def two_turns_wav(tmp_path_factory: pytest.TempPathFactory, clean_clips: list[np.ndarray]) -> str:
    path = tmp_path_factory.mktemp("cli") / "two turns.wav"
    audio = speech.to_stereo(speech.resample(speech.concat(*clean_clips[:2]), 16000, 44100))
    sf.write(path, audio, 44100, subtype="PCM_16")
    return str(path)


@pytest.mark.parametrize("vad", ["webrtc", "silero"])
def test_json_lines_one_per_turn(two_turns_wav: str, tiny_dir: str, vad: str, capsys) -> None:
    assert main(["transcribe", two_turns_wav, "--model", tiny_dir, "--vad", vad, "--json"]) == 0
    turns = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(turns) == 2
    for turn, text in zip(turns, CLEAN_SET[:2], strict=True):
        assert set(turn) == {"start", "end", "text"} and turn["start"] < turn["end"]
        assert wer(text, turn["text"]) <= 0.1
    assert turns[0]["end"] < turns[1]["start"]
    assert 0.5 <= turns[0]["start"] <= 0.7  # the first utterance starts 0.6 s into the file


def test_plain_output_in_a_subprocess_and_vad_none(two_turns_wav: str, tiny_dir: str, clean_clips) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", "transcribe", two_turns_wav, "--model", tiny_dir, "--vad", "none"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 1  # --vad none: the whole file is one turn
    start, end, text = lines[0].split(maxsplit=2)
    duration = sum(len(c) for c in clean_clips[:2]) / 16000
    assert float(start) == 0.0 and float(end) == pytest.approx(duration, abs=0.01)
    assert wer(" ".join(CLEAN_SET[:2]), text) <= 0.15


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: d / "missing.wav", "no such file"),
        (lambda d: (d / "notes.wav").write_text("hello") and d / "notes.wav", "not a readable audio file"),
    ],
)
def test_bad_file_is_one_line_and_exit_2(tmp_path, tiny_dir: str, make, message: str, capsys) -> None:
    path = make(tmp_path)
    assert main(["transcribe", str(path), "--model", tiny_dir]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and str(path) in err[0]


def test_bad_model_dir_exit_2(two_turns_wav: str, tmp_path, capsys) -> None:
    assert main(["transcribe", two_turns_wav, "--model", str(tmp_path)]) == 2
    assert "asr.model" in capsys.readouterr().err


def test_vad_none_on_silence_prints_no_turn(tmp_path, tiny_dir: str, capsys) -> None:
    """Without a VAD, the whole-file turn is not transcribed when it is silence (30 s of zeros reads as "you")."""
    path = tmp_path / "quiet.wav"
    sf.write(path, np.zeros(16000 * 30, dtype=np.float32), 16000, subtype="PCM_16")
    assert main(["transcribe", str(path), "--model", tiny_dir, "--vad", "none", "--json"]) == 0
    assert capsys.readouterr().out == ""
