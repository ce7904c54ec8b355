"""Memory governor hooks: the stage reports its weights, unloads them, and reloads on the next chunk."""

from __future__ import annotations

from pathlib import Path

from voicepipe.frames import TextChunkFrame, TTSAudioFrame
from voicepipe.testing.harness import run_stage
from voicepipe.tts.stage import TTSStage


async def test_unload_and_reload_on_demand(piper_model: str) -> None:
    stage = TTSStage(TTSStage.Config(engine="piper", model=piper_model))
    await stage.setup()
    assert stage.is_loaded
    assert stage.memory_footprint == Path(piper_model).stat().st_size
    await stage.unload()
    assert not stage.is_loaded and stage.memory_footprint == 0

    out = await run_stage(stage, [TextChunkFrame(text="Back again.", turn_id=1)], setup=False)
    assert [f for f in out if isinstance(f, TTSAudioFrame)], "an unloaded engine is reloaded for the next chunk"
    assert stage.is_loaded and stage.memory_footprint > 0


async def test_kokoro_footprint_and_explicit_reload(kokoro_files: tuple[str, str]) -> None:
    model, voices = kokoro_files
    stage = TTSStage(TTSStage.Config(engine="kokoro", model=model, voices=voices, voice="jm_kumo"))
    await stage.setup()
    try:
        assert stage.memory_footprint >= Path(model).stat().st_size
        await stage.unload()
        assert stage.memory_footprint == 0
        await stage.load()
        assert stage.is_loaded and stage.memory_footprint >= Path(model).stat().st_size
    finally:
        stage.shutdown_worker()
