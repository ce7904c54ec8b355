"""Where resident memory sits: the breakdown the soak samples each turn (Linux/glibc only)."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's mallinfo2")

# In a fresh interpreter: after a long test session other libraries may have tuned malloc (its mmap threshold), and
# the test is about what a plain process sees.
PROBE = """
import numpy as np
from voicepipe.memory.rss import MB, heap_stats, rss_breakdown

before_heap, before_rss = heap_stats(), rss_breakdown()
block = np.empty(64 * MB, dtype=np.uint8)  # numpy asks malloc, which maps a block this large by itself
assert heap_stats()["mmapped"] - before_heap["mmapped"] >= 64 * MB, "a 64 MB block is not counted as mmapped"
block[:] = 1  # touch every page
assert rss_breakdown()["anon"] - before_rss["anon"] >= 60 * MB, "its touched pages are not counted as anonymous"
del block
assert heap_stats()["mmapped"] - before_heap["mmapped"] < 64 * MB, "a freed large block is unmapped at once"
print("ok")
"""


def test_a_large_block_shows_as_mmapped_and_its_touched_pages_as_anonymous() -> None:
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]
