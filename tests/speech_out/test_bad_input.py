"""Bad input: broken or missing engine files fail at load with the file named; unspeakable chunks are skipped."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from voicepipe.cli.main import main
from voicepipe.errors import ModelLoadError
from voicepipe.frames import ErrorFrame, LLMResponseEndFrame, TextChunkFrame, TTSAudioFrame
from voicepipe.testing.harness import run_stage
from voicepipe.tts.stage import TTSStage


async def load(**config: object) -> TTSStage:
    """Set up a TTS stage from config (files resolved and loaded as in a real pipeline)."""
    stage = TTSStage(TTSStage.Config(**config))
    try:
        await stage.setup()
    finally:
        stage.shutdown_worker()
    return stage


def garbage(path: Path, size: int = 4096) -> Path:
    path.write_bytes(os.urandom(size))
    return path


async def test_kokoro_missing_model_file(tmp_path: Path, kokoro_files: tuple[str, str]) -> None:
    missing = tmp_path / "kokoro-v1.0.onnx"
    with pytest.raises(ModelLoadError, match=f"model: no such file: {missing}"):
        await load(engine="kokoro", model=str(missing), voices=kokoro_files[1])


async def test_kokoro_corrupt_model_file(tmp_path: Path, kokoro_files: tuple[str, str]) -> None:
    bad = garbage(tmp_path / "kokoro.onnx")
    with pytest.raises(ModelLoadError, match=f"{bad} is not a valid ONNX model"):
        await load(engine="kokoro", model=str(bad), voices=kokoro_files[1])


async def test_kokoro_corrupt_voices_file(tmp_path: Path, kokoro_files: tuple[str, str]) -> None:
    bad = garbage(tmp_path / "voices-v1.0.bin")
    with pytest.raises(ModelLoadError, match=f"voices file {bad} is unreadable"):
        await load(engine="kokoro", model=kokoro_files[0], voices=str(bad))


async def test_kokoro_unknown_voice_lists_the_voices(kokoro_files: tuple[str, str]) -> None:
    with pytest.raises(ModelLoadError, match="voice 'af_nobody' is not in .*available: jf_alpha"):
        await load(engine="kokoro", model=kokoro_files[0], voices=kokoro_files[1], voice="af_nobody")


async def test_piper_not_an_onnx_model(tmp_path: Path, piper_model: str) -> None:
    bad = garbage(tmp_path / "voice.onnx")
    (tmp_path / "voice.onnx.json").write_text(Path(f"{piper_model}.json").read_text())
    with pytest.raises(ModelLoadError, match=f"{bad} is not a valid ONNX model"):
        await load(engine="piper", model=str(bad))


async def test_piper_missing_or_corrupt_config(tmp_path: Path, piper_model: str) -> None:
    model = tmp_path / "voice.onnx"
    model.symlink_to(piper_model)
    with pytest.raises(ModelLoadError, match=f"config file not found: {model}.json"):
        await load(engine="piper", model=str(model))
    Path(f"{model}.json").write_text('{"audio": ')
    with pytest.raises(ModelLoadError, match=f"config {model}.json is unreadable"):
        await load(engine="piper", model=str(model))


async def test_hub_reference_that_cannot_be_fetched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(
        ModelLoadError, match="model: nobody/no-such-voice/missing.onnx: cannot get it.*download it while online"
    ):
        await load(engine="piper", model="nobody/no-such-voice/missing.onnx")


def test_config_mistakes_are_rejected_before_loading() -> None:
    with pytest.raises(ValidationError, match="speed"):
        TTSStage.Config(speed=3.0)
    with pytest.raises(ValidationError, match="threads"):
        TTSStage.Config(engine="piper", threads=0)
    with pytest.raises(ValidationError, match="extra"):
        TTSStage.Config(volume=2)


def validate(tmp_path: Path, capsys: pytest.CaptureFixture[str], yaml: str) -> tuple[int, list[str]]:
    """``voicepipe validate`` on a pipeline.yaml: exit code and the lines it printed on stderr."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml)
    code = main(["validate", str(path)])
    return code, capsys.readouterr().err.splitlines()


def test_kokoro_voices_under_piper_names_its_line_and_the_fix(tmp_path: Path, capsys) -> None:
    """Piper's settings have no ``voices``; carrying Kokoro's over is one line at that line, saying what to do."""
    code, err = validate(
        tmp_path, capsys, "stages:\n  - type: chunker\n  - type: piper\n    speed: 1.2\n    voices: voices.bin\n"
    )
    assert code == 2
    assert err == [
        f"error: {tmp_path / 'pipeline.yaml'}:5: stages[1].voices: 'voices' is a Kokoro setting; "
        "Piper's voice is its model file: remove 'voices'"
    ]


def test_an_unknown_engine_lists_the_registered_ones(tmp_path: Path, capsys) -> None:
    code, err = validate(tmp_path, capsys, "stages:\n  - type: tts\n    engine: espeak\n    voice: en\n")
    assert code == 2 and len(err) == 1
    assert err[0].startswith(f"error: {tmp_path / 'pipeline.yaml'}:3: stages[0].engine: unknown tts engine 'espeak'")
    assert "registered: kokoro, piper" in err[0]


async def test_building_the_stage_and_its_engine_touches_no_file(tmp_path: Path) -> None:
    """Constructors are cheap: the model is looked for (and downloaded) when the engine loads, in ``setup()``."""
    missing = tmp_path / "not-yet.onnx"
    threads = threading.active_count()
    assert TTSStage().engine is None  # the default voice is a hub file: not fetched here
    stage = TTSStage(TTSStage.Config(engine="piper", model=str(missing)))
    engine = stage.config.build_engine()
    assert stage.engine is None and not engine.is_loaded and engine.memory_footprint == 0
    assert threading.active_count() == threads, "no thread may start before setup()"
    with pytest.raises(ModelLoadError, match=f"model: no such file: {missing}"):
        await load(engine="piper", model=str(missing))


async def test_unspeakable_chunks_are_skipped(piper_engine) -> None:
    stage = TTSStage(engine=piper_engine)
    chunks = ["*** --- ###", "", "🙂🎉", "Hello there."]
    frames = [TextChunkFrame(text=t, index=i, turn_id=1) for i, t in enumerate(chunks)]
    out = await run_stage(stage, [*frames, LLMResponseEndFrame(turn_id=1)])
    assert {f.chunk_index for f in out if isinstance(f, TTSAudioFrame)} == {3}
    assert not [f for f in out if isinstance(f, ErrorFrame)]
    assert isinstance(out[-1], LLMResponseEndFrame)
