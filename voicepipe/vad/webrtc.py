"""webrtcvad (PyPI ``webrtcvad-wheels``): a fast GMM detector; its verdict is 0 or 1, so "probability" is binary.

Measured here: aggressiveness 0-1 never ends a turn in background noise, so the default is 2 (3 for noisy rooms);
and every mode calls steady white or pink noise speech, for seconds on end. So a frame also has to stand
``noise_gate_db`` above the noise floor (the quietest frame of the last ``floor_window_s``, a minimum-statistics
estimate) to count: steady noise never does, speech rises well above it. Levels are taken in the 300-3400 Hz
band, where pink noise's 30 ms frames stay within ~4.5 dB of their 3 s minimum (~11 dB full-band; measured). Hand-written: webrtcvad has no such gate.
"""

from __future__ import annotations

import collections

import numpy as np

from voicepipe._optional import require
from voicepipe.vad.base import SAMPLE_RATE

__all__ = ["WebRTCVAD", "FRAME_MS"]

FRAME_MS = (10, 20, 30)
_SILENT_DB = -90.0  # the floor of digital silence


class WebRTCVAD:
    """webrtcvad on 10, 20 or 30 ms frames of 16 kHz audio, gated by the level above the noise floor."""

    def __init__(
        self,
        aggressiveness: int = 2,
        frame_ms: int = 30,
        *,
        noise_gate_db: float | None = 6.0,
        floor_window_s: float = 3.0,
    ) -> None:
        if aggressiveness not in (0, 1, 2, 3):
            raise ValueError(f"aggressiveness must be 0, 1, 2 or 3, not {aggressiveness!r}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be 10, 20 or 30 for webrtcvad, not {frame_ms!r}")
        self._webrtcvad = require("webrtcvad", extra="vad", purpose="the webrtcvad engine")
        self.aggressiveness = aggressiveness
        self.frame_samples = SAMPLE_RATE * frame_ms // 1000
        self.noise_gate_db = noise_gate_db
        self._window = max(1, int(round(floor_window_s * 1000 / frame_ms)))
        self._taper = np.hanning(self.frame_samples)
        freqs = np.fft.rfftfreq(self.frame_samples, 1.0 / SAMPLE_RATE)
        self._band = (freqs >= 300.0) & (freqs <= 3400.0)
        self.reset()

    def speech_probability(self, frame: np.ndarray) -> float:
        # level in the speech band only: the low rumble that makes coloured noise fluctuate is left out
        spectrum = np.abs(np.fft.rfft(frame.astype(np.float64) * self._taper)) ** 2
        level = 10.0 * np.log10(max(float(spectrum[self._band].sum()) / len(frame), 1e-9))
        self._levels.append(level)
        pcm16 = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2")
        voiced = self._vad.is_speech(pcm16.tobytes(), SAMPLE_RATE)
        if voiced and self.noise_gate_db is not None:
            voiced = level >= max(min(self._levels), _SILENT_DB) + self.noise_gate_db
        return 1.0 if voiced else 0.0

    def reset(self) -> None:
        """A fresh detector (webrtcvad smooths over a few frames internally) and no noise floor yet."""
        self._vad = self._webrtcvad.Vad(self.aggressiveness)
        self._levels: collections.deque[float] = collections.deque(maxlen=self._window)
