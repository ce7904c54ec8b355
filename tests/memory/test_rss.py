"""Where resident memory sits: the breakdown the soak samples each turn (Linux/glibc only)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from voicepipe.memory.rss import MB, heap_stats, rss_breakdown

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and glibc's mallinfo2")


def test_a_large_block_shows_as_mmapped_and_its_touched_pages_as_anonymous() -> None:
    before_heap, before_rss = heap_stats(), rss_breakdown()
    block = np.empty(64 * MB, dtype=np.uint8)  # numpy asks malloc, which maps a block this large by itself
    assert heap_stats()["mmapped"] - before_heap["mmapped"] >= 64 * MB
    block[:] = 1  # touch every page
    assert rss_breakdown()["anon"] - before_rss["anon"] >= 60 * MB
    del block
    assert heap_stats()["mmapped"] - before_heap["mmapped"] < 64 * MB, "a freed large block is unmapped at once"
