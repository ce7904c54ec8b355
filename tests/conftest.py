"""Fixtures shared across test folders."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_gguf() -> str:
    """The tiny random Qwen3.5 (real vocabulary) as an f32 GGUF, built once into the test cache."""
    pytest.importorskip("llama_cpp")
    from voicepipe.assets import file_lock
    from voicepipe.convert.to_gguf import convert_hf_to_gguf
    from voicepipe.testing import cache_dir
    from voicepipe.testing.checkpoints import tiny_checkpoint

    checkpoint = tiny_checkpoint("real")
    out = cache_dir("gguf") / f"{checkpoint.name}-f32.gguf"
    with file_lock(cache_dir("gguf") / f"{checkpoint.name}.lock"):
        if not out.exists():
            convert_hf_to_gguf(checkpoint, out, outtype="f32")
    return str(out)
