"""Each engine's default hub repo resolves through the local hub: Kokoro's files, and the MLX engine converting the
Qwen3.5 checkpoint on first use (the llama.cpp engine and Piper/Whisper are covered through the CLI)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import KOKORO, QWEN
from .server import HubServer


def test_kokoro_default_files_come_from_the_hub_verified(hub: HubServer, tmp_path: Path):
    from tests.support.tts_assets import kokoro_model_path, kokoro_voices_path
    from voicepipe.tts.stage import TTSConfig

    engine = TTSConfig(engine="kokoro").build_engine()
    model_path, voices_path = engine.resolve_files()  # what load() does first
    assert model_path.is_relative_to(tmp_path / "hf" / "hub")
    for got, source in ((model_path, kokoro_model_path()), (voices_path, kokoro_voices_path())):
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
    assert [r.path for r in hub.requests if r.path.startswith("/api/")].count(
        f"/api/models/{KOKORO}/revision/{hub.repos[KOKORO].commit}"
    ) == 1  # one checksum listing for both files


@pytest.mark.slow
def test_mlx_engine_converts_the_hub_checkpoint_once_then_loads_offline(
    hub: HubServer, offline_later: Callable[[], None], tmp_path: Path
):
    pytest.importorskip("mlx_lm")
    from voicepipe.convert import to_mlx
    from voicepipe.llm.mlx_model import checkpoint_kind

    converted = to_mlx.resolve_model_dir(QWEN, quantization="int4", progress=False)
    assert converted.is_relative_to(tmp_path / "voicepipe-cache") and checkpoint_kind(converted) == "mlx"
    stamp = (converted / "config.json").stat().st_mtime_ns

    hub.requests.clear()
    offline_later()
    assert to_mlx.resolve_model_dir(QWEN, quantization="int4", progress=False) == converted
    assert (converted / "config.json").stat().st_mtime_ns == stamp  # not converted again
    assert hub.requests == []
