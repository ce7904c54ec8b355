"""Memory governor hooks: the stage reports its weights, unloads them, and reloads on the next chunk."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicepipe.frames import TextChunkFrame, TTSAudioFrame
from voicepipe.memory.rss import rss_bytes
from voicepipe.testing.harness import run_stage
from voicepipe.tts.stage import TTSStage


async def test_unload_and_reload_on_demand(piper_model: str) -> None:
    stage = TTSStage(TTSStage.Config(engine="piper", model=piper_model))
    await stage.setup()
    assert stage.is_loaded
    assert stage.memory_footprint >= Path(piper_model).stat().st_size
    await stage.unload()
    assert not stage.is_loaded and stage.memory_footprint == 0

    out = await run_stage(stage, [TextChunkFrame(text="Back again.", turn_id=1)], setup=False)
    assert [f for f in out if isinstance(f, TTSAudioFrame)], "an unloaded engine is reloaded for the next chunk"
    assert stage.is_loaded and stage.memory_footprint > 0


async def test_kokoro_unload_gives_the_memory_back(kokoro_files: tuple[str, str]) -> None:
    """Unloading returns the weights to the OS (the memory governor and a jetsam watchdog see RSS, not the heap)."""
    model, voices = kokoro_files
    stage = TTSStage(TTSStage.Config(engine="kokoro", model=model, voices=voices, voice="jm_kumo"))
    await stage.setup()
    out = await run_stage(stage, [TextChunkFrame(text="Loaded and speaking.", turn_id=1)], setup=False)
    assert [f for f in out if isinstance(f, TTSAudioFrame)]
    footprint = stage.memory_footprint
    assert footprint >= Path(model).stat().st_size
    loaded_rss = rss_bytes()
    await stage.unload()
    assert stage.memory_footprint == 0 and not stage.is_loaded
    freed = loaded_rss - rss_bytes()
    assert freed >= 0.7 * Path(model).stat().st_size, f"only {freed >> 20} MB of {footprint >> 20} MB went back"
    await stage.load()
    assert stage.is_loaded and stage.memory_footprint >= Path(model).stat().st_size
    stage.shutdown_worker()


@pytest.mark.parametrize("release_arena", [True, False])
def test_piper_does_not_keep_its_largest_synthesis_resident(piper_model: str, release_arena: bool) -> None:
    """onnxruntime's CPU arena grows by doubling regions to the largest run so far and keeps them; a soak's RSS grew
    with every longer sentence (issue 15 row 13). With ``release_arena`` (on by default) Piper's runs shrink the arena
    afterwards, so one long sentence leaves little behind; without it the arena keeps it."""
    from voicepipe.tts.piper import PiperEngine

    engine = PiperEngine(PiperEngine.Config(model=piper_model, release_arena=release_arena))
    engine.load()
    try:
        engine.synthesize("A short warm-up.")
        before = rss_bytes()
        long_text = " ".join(
            ["To boil an egg, put it in a pot of cold water, bring the water to the boil, then let it simmer"]
            + ["for about nine minutes, cool it under the tap and peel it when it is cold enough to hold"] * 2
        )
        audio = engine.synthesize(long_text + ".")
        assert audio.size > 10 * engine.sample_rate, "the long sentence must need a large arena"
        kept = rss_bytes() - before
        if release_arena:
            assert kept < 40 * 2**20, f"{kept >> 20} MB stayed resident after one long sentence"
        else:
            assert kept > 80 * 2**20, f"only {kept >> 20} MB stayed: the arena no longer keeps its regions?"
    finally:
        engine.unload()
