"""models/manifest.yaml documents the default models: keep it equal to what the code really uses."""

from __future__ import annotations

from pathlib import Path

import yaml

MANIFEST = Path(__file__).resolve().parents[1] / "models" / "manifest.yaml"


def defaults() -> dict[tuple[str, str], dict]:
    entries = yaml.safe_load(MANIFEST.read_text())["models"]
    return {(e["role"], e["engine"]): e for e in entries}


def test_manifest_defaults_match_the_code():
    from voicepipe.asr import faster_whisper, mlx_whisper
    from voicepipe.llm import llamacpp, mlx_model
    from voicepipe.tts import kokoro, piper
    from voicepipe.vad.smart_turn import SMART_TURN_V3

    m = defaults()
    assert m["asr", "faster-whisper"]["default"] == faster_whisper.DEFAULT_MODEL
    assert m["asr", "mlx-whisper"]["default"] == mlx_whisper.DEFAULT_MODEL
    assert m["llm", "llamacpp"]["default"] == llamacpp.DEFAULT_REPO
    assert m["llm", "mlx"]["default"] == mlx_model.DEFAULT_REPO
    assert m["tts", "kokoro"]["default"] == kokoro.DEFAULT_MODEL
    assert m["tts", "kokoro"]["voices"] == kokoro.DEFAULT_VOICES
    assert m["tts", "piper"]["default"] == piper.DEFAULT_MODEL
    smart_turn = f"{SMART_TURN_V3.distribution}=={SMART_TURN_V3.version}:{SMART_TURN_V3.member}"
    assert m["end-of-turn", "smart-turn"]["default"] == smart_turn


def test_manifest_entries_are_complete():
    for (role, engine), entry in defaults().items():
        assert entry["default"], (role, engine)
        assert isinstance(entry["size_mb"], int), (role, engine)
