"""Whisper engines on real weights: the hallucination guard, memory hooks, the CT2 -> mlx-whisper converter, parity."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from tests.support import speech
from voicepipe.asr.base import TranscriptSegment, WhisperConfig, apply_guards, rejection
from voicepipe.asr.faster_whisper import FasterWhisperTranscriber
from voicepipe.asr.stage import ASRConfig, ASRStage
from voicepipe.errors import ModelLoadError

from .conftest import CLEAN_SET, normalize, wer

GUARD = WhisperConfig()  # the default thresholds


@pytest.mark.parametrize(
    ("segment", "reason"),
    [
        (TranscriptSegment(" Thank you for watching.", -1.2, 0.9, 1.1), "no-speech"),
        (TranscriptSegment(" you", -1.32, 0.95, 0.27), "no-speech"),  # tiny.en on white noise (measured)
        (TranscriptSegment(" the the the the the the the the", -0.3, 0.1, 3.1), "compression"),
        (TranscriptSegment(" maybe words", -1.8, 0.2, 1.0), "log-probability"),
        (TranscriptSegment("  ", -0.1, 0.0, 0.0), "empty"),
    ],
)
def test_guard_rejects_what_whisper_invents(segment: TranscriptSegment, reason: str) -> None:
    assert reason in rejection(segment, GUARD)


def test_guard_keeps_real_speech_even_with_a_high_no_speech_probability() -> None:
    # Whisper's rule: a confident decode (avg log-prob above the threshold) is speech whatever no_speech_prob says
    kept = TranscriptSegment(" Remind me to call my mother.", -0.11, 0.7, 0.86)
    dropped = TranscriptSegment(" you", -1.3, 0.95, 0.27)
    assert apply_guards([kept, dropped], GUARD) == "Remind me to call my mother."
    assert kept.rejected is None and dropped.rejected is not None


def test_engine_on_real_noise_and_silence_returns_no_text(tiny_engine: FasterWhisperTranscriber) -> None:
    for audio in (speech.silence(2.0), speech.pink_noise(3.0, level=0.1, seed=7)):
        result = tiny_engine.transcribe(audio)
        assert result.text == ""
        assert result.segments and all(s.rejected for s in result.segments)  # Whisper did decode something


async def test_memory_hooks_unload_and_reload(tiny_dir: str, clean_clips: list[np.ndarray]) -> None:
    stage = ASRStage(ASRConfig(model=tiny_dir))
    assert not stage.is_loaded and stage.memory_footprint == 0  # nothing loads in the constructor
    await stage.setup()
    try:
        assert stage.is_loaded
        # tiny.en has 37.8 M parameters: int8 is about 38 MB
        assert 30e6 < stage.memory_footprint < 60e6
        await stage.unload()
        assert not stage.is_loaded and stage.memory_footprint == 0
        await stage.load()
        assert stage.is_loaded
        result = await stage.run_blocking(stage.engine.transcribe, clean_clips[1])
        assert wer(CLEAN_SET[1], result.text) <= 0.1
    finally:
        await stage.cleanup()
        stage.shutdown_worker()


async def test_the_stage_builds_and_loads_its_engine_in_setup_not_in_the_constructor(tmp_path) -> None:
    stage = ASRStage()  # the default engine and model: constructing it reads and fetches nothing
    assert stage.engine is None and not stage.is_loaded and stage.memory_footprint == 0
    broken = ASRStage(ASRConfig(model=str(tmp_path)))  # not a model directory: only setup() finds out
    assert broken.engine is None and not broken.is_loaded and broken.memory_footprint == 0
    try:
        with pytest.raises(ModelLoadError, match="no model.bin"):
            await broken.setup()
        assert isinstance(broken.engine, FasterWhisperTranscriber) and not broken.is_loaded
    finally:
        broken.shutdown_worker()


def test_bad_model_paths_are_one_line_user_errors(tmp_path) -> None:
    config = FasterWhisperTranscriber.Config(model=str(tmp_path))
    with pytest.raises(ModelLoadError, match="asr.model: .* no model.bin"):
        FasterWhisperTranscriber(config).load()
    (tmp_path / "model.bin").write_bytes(b"not a model")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelLoadError, match="asr.model: cannot load"):
        FasterWhisperTranscriber(config).load()


def test_asr_config_takes_the_chosen_engines_settings_only() -> None:
    with pytest.raises(ValidationError, match="beam_size"):
        ASRConfig(engine="mlx-whisper", beam_size=4)
    with pytest.raises(ValidationError, match="threads"):
        ASRConfig(engine="mlx-whisper", threads=2)  # a faster-whisper setting
    with pytest.raises(ValidationError, match="engine"):
        ASRConfig(engine="whisper.cpp")
    config = ASRConfig(threads=4, min_avg_logprob=None)
    assert config.engine_config == FasterWhisperTranscriber.Config(threads=4, min_avg_logprob=None)
    assert config.model_dump()["threads"] == 4 and config.replace(threads=1).engine_config.min_avg_logprob is None


# -- CT2 -> mlx-whisper ---------------------------------------------------------------------------------------------


def test_converted_tensors_match_mlx_whispers_module_exactly(tiny_dir: str) -> None:
    pytest.importorskip("mlx_whisper", reason="needs the mlx-whisper extra")
    from mlx.utils import tree_flatten
    from mlx_whisper.whisper import ModelDimensions, Whisper

    from voicepipe.convert.whisper_to_mlx import ct2_to_mlx_weights, read_ct2_model

    spec, variables = read_ct2_model(f"{tiny_dir}/model.bin")
    assert spec == "WhisperSpec"
    dims, weights = ct2_to_mlx_weights(variables)
    assert dims["n_audio_layer"] == dims["n_text_layer"] == 4 and dims["n_audio_head"] == 6
    assert dims["n_vocab"] == 51864  # English-only vocabulary
    model = Whisper(ModelDimensions(**dims))
    expected = {name: tuple(p.shape) for name, p in tree_flatten(model.parameters()) if name != "alignment_heads"}
    assert {name: w.shape for name, w in weights.items() if name != "alignment_heads"} == expected
    assert "alignment_heads" not in weights  # none given: mlx-whisper's default (last half of the layers) stays
    # un-fusing: q/k/v are the three thirds of CT2's fused projection; cross-attention k/v the two halves
    fused = variables["encoder/layer_0/self_attention/linear_0/weight"].astype(np.float32)
    np.testing.assert_array_equal(weights["encoder.blocks.0.attn.key.weight"], fused[384:768])
    kv = variables["decoder/layer_3/attention/linear_1/weight"].astype(np.float32)
    np.testing.assert_array_equal(weights["decoder.blocks.3.cross_attn.value.weight"], kv[384:])
    # conv kernels: CT2 (out, in, width) -> MLX (out, width, in)
    conv = variables["encoder/conv1/weight"].astype(np.float32)
    np.testing.assert_array_equal(weights["encoder.conv1.weight"], conv.transpose(0, 2, 1))


@pytest.mark.slow
def test_converted_model_loads_in_float32_with_alignment_heads(tiny_dir: str, tmp_path, monkeypatch) -> None:
    pytest.importorskip("mlx_whisper", reason="needs the mlx-whisper extra")
    import json

    from voicepipe.asr.mlx_whisper import MLXWhisperTranscriber
    from voicepipe.testing import cache_dir

    monkeypatch.setenv("VOICEPIPE_CACHE", str(cache_dir("voicepipe-cache")))
    engine = MLXWhisperTranscriber(MLXWhisperTranscriber.Config(model=tiny_dir))
    engine.load()
    # 37.8 M float32 parameters (the tied output projection is the embedding: counted once)
    assert 145e6 < engine.memory_footprint < 155e6
    with open(f"{tiny_dir}/config.json") as handle:
        heads = json.load(handle)["alignment_heads"]
    assert engine._model.alignment_heads.tolist() == heads


@pytest.mark.slow
def test_mlx_whisper_matches_faster_whisper_on_the_clean_set(tiny_dir: str, clean_stream: np.ndarray, tmp_path) -> None:
    """Same weights (tiny.en, converted from CT2), both greedy in float32: the same words.

    Runs the ``transcribe`` command in a subprocess so that OpenBLAS can be preloaded for MLX (it speeds MLX's CPU
    matmuls ~6x on Linux; LD_PRELOAD only works at process start).
    """
    pytest.importorskip("mlx_whisper", reason="needs the mlx-whisper extra")
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import soundfile as sf

    from voicepipe.testing import cache_dir

    wav = tmp_path / "clean.wav"
    sf.write(wav, clean_stream, 16000)
    env = dict(os.environ, VOICEPIPE_CACHE=str(cache_dir("voicepipe-cache")))
    blas = Path("/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3")
    if sys.platform == "linux" and blas.is_file():
        env["LD_PRELOAD"] = str(blas)

    def transcribe(*options: str) -> list[str]:
        command = [sys.executable, "-m", "voicepipe.cli.main", "transcribe", str(wav), "--model", tiny_dir, "--json"]
        done = subprocess.run([*command, *options], env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        return [json.loads(line)["text"] for line in done.stdout.splitlines()]

    # the whole clean set (19 s) as one Whisper window: one decode per engine keeps this test affordable
    ours = transcribe("--engine", "mlx-whisper", "--vad", "none")
    theirs = transcribe("--engine", "faster-whisper", "--compute-type", "float32", "--vad", "none")
    assert len(ours) == len(theirs) == 1
    assert normalize(ours[0]) == normalize(theirs[0])
    assert wer(" ".join(CLEAN_SET), ours[0]) <= 0.1


@pytest.mark.slow
def test_whisper_base_from_its_two_pypi_halves(clean_clips: list[np.ndarray]) -> None:
    from tests.support.whisper_assets import whisper_base_dir

    engine = FasterWhisperTranscriber(FasterWhisperTranscriber.Config(model=str(whisper_base_dir()), language="en"))
    engine.load()
    result = engine.transcribe(speech.concat(*clean_clips[2:4]))
    assert wer(" ".join(CLEAN_SET[2:4]), result.text) <= 0.1
    assert result.language == "en"


@pytest.mark.parametrize("warm_up", [True, False])
async def test_setup_warms_the_engine_with_silence_once(tiny_dir: str, warm_up: bool) -> None:
    """``warm_up`` (the default): setup runs the real engine once on a second of silence, so the user's first turn
    is not its first run."""
    config = ASRConfig(model=tiny_dir, warm_up=warm_up)
    engine = config.build_engine()
    seen: list[np.ndarray] = []
    real = engine.transcribe
    engine.transcribe = lambda pcm: seen.append(pcm) or real(pcm)  # counts the calls, the engine does the work
    stage = ASRStage(config, engine=engine)
    await stage.setup()
    try:
        assert engine.is_loaded
        assert len(seen) == (1 if warm_up else 0)
        if warm_up:
            assert seen[0].shape == (16000,) and not seen[0].any()
    finally:
        await stage.cleanup()
        stage.shutdown_worker()
