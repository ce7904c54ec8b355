"""voicepipe.assets names cached builds after their inputs: the same inputs find the same build, a changed one a
new build (a stale conversion is never reused)."""

from __future__ import annotations

import os

from voicepipe.assets import cache_dir, fingerprint


def test_a_build_is_named_after_its_inputs_and_options(tmp_path) -> None:
    weights, config = tmp_path / "model.safetensors", tmp_path / "config.json"
    weights.write_bytes(b"\0" * 64)
    config.write_text("{}")
    name = fingerprint([config, weights], "v1", "int4")
    assert name == fingerprint([config, weights], "v1", "int4") and len(name) == 16
    assert fingerprint([config, weights], "v1", "int8") != name  # another option
    assert fingerprint([config, weights], "v2", "int4") != name  # another converter version
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # the same size, written again
    assert fingerprint([config, weights], "v1", "int4") != name


def test_the_cache_follows_voicepipe_cache(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path / "vp"))
    assert cache_dir("gguf", "x") == tmp_path / "vp" / "gguf" / "x" and (tmp_path / "vp" / "gguf" / "x").is_dir()
