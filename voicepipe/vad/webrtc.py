"""webrtcvad (PyPI ``webrtcvad-wheels``): a fast GMM detector; its verdict is 0 or 1, so "probability" is binary.

Measured here: aggressiveness 0-1 never ends a turn in background noise, so the default is 2; 3 for noisy rooms.
"""

from __future__ import annotations

import numpy as np

from voicepipe._optional import require
from voicepipe.vad.base import SAMPLE_RATE

__all__ = ["WebRTCVAD", "FRAME_MS"]

FRAME_MS = (10, 20, 30)


class WebRTCVAD:
    """webrtcvad on 10, 20 or 30 ms frames of 16 kHz audio."""

    def __init__(self, aggressiveness: int = 2, frame_ms: int = 30) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be 10, 20 or 30 for webrtcvad, not {frame_ms!r}")
        webrtcvad = require("webrtcvad", extra="vad", purpose="the webrtcvad engine")
        self._vad = webrtcvad.Vad(aggressiveness)
        self.aggressiveness = aggressiveness
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000

    def speech_probability(self, frame: np.ndarray) -> float:
        pcm16 = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2")
        return 1.0 if self._vad.is_speech(pcm16.tobytes(), SAMPLE_RATE) else 0.0

    def reset(self) -> None:
        """webrtcvad smooths over a few frames internally; a fresh detector forgets that."""
        import webrtcvad

        self._vad = webrtcvad.Vad(self.aggressiveness)
