"""What plugin authors need to test a stage or an engine: a harness that runs stages (``harness``), fake stages
(``fakes``), random Qwen3.5 checkpoints of the real architecture (``checkpoints``), and a private PulseAudio server
in place of a sound card (``pulse``). voicepipe's own tests use them too; what only they use is in ``tests/support``.
Nothing in voicepipe itself imports this package.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """A directory for built test fixtures (converted checkpoints, joined weights), created on demand.

    ``VOICEPIPE_TEST_CACHE`` overrides the root (default ``~/.cache/voicepipe-tests``). It is not voicepipe's own
    cache (``voicepipe.assets.cache_dir``): tests point ``VOICEPIPE_CACHE`` at temporary directories, and fixtures
    built once must survive that.
    """
    root = Path(os.environ.get("VOICEPIPE_TEST_CACHE", Path.home() / ".cache" / "voicepipe-tests"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
