"""webrtcvad (PyPI ``webrtcvad-wheels``): a fast GMM detector; its verdict is 0 or 1, so "probability" is binary.

Measured here: aggressiveness 0-1 never ends a turn in background noise, so the default is 2 (3 for noisy rooms);
and every mode calls steady white or pink noise speech, for seconds on end. So a frame also has to stand
``noise_gate_db`` above the noise floor (the quietest frame of the last ``floor_window_s``, a minimum-statistics
estimate) to count: steady noise never does, speech rises well above it. Levels are taken in the 300-3400 Hz
band, where pink noise's 30 ms frames stay within ~4.5 dB of their 3 s minimum (~11 dB full-band; measured). Hand-written: webrtcvad has no such gate.

Frames are 10 ms by default: a pause is seen after 10 ms of silence instead of 30, so the provisional audio reaches
Whisper ~20 ms sooner (BENCHMARKS.md, "Voice-to-voice latency"). Shorter frames spread a steady noise's level wider
around its minimum, so the gate's default follows the frame length (``_NOISE_GATE_DB``).
"""

from __future__ import annotations

import collections
from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from voicepipe._optional import require
from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.engine import EngineConfig
from voicepipe.vad.base import VADEngine

__all__ = ["WebRTCVAD"]

_SILENT_DB = -90.0  # the floor of digital silence

#: The noise gate's default per frame length: ~2 dB above the most that the 300-3400 Hz level of 8 s of pink noise
#: (-26 dBFS) rose over its 3 s minimum (measured: 4.1 dB with 30 ms frames, 5.6 with 20, 8.2 with 10). With 10 ms
#: frames and a 6 dB gate, 5-10% of the frames of pink noise at -26 and -14 dBFS passed; with 10 dB none did.
_NOISE_GATE_DB = {10: 10.0, 20: 7.5, 30: 6.0}


class WebRTCVADConfig(EngineConfig):
    """``engine: webrtc`` settings."""

    aggressiveness: int = Field(2, ge=0, le=3, description="webrtcvad mode; 0-1 never end a turn in noise")
    frame_ms: Literal[10, 20, 30] = Field(
        10, description="webrtcvad frame length (a pause is seen after one silent frame)"
    )
    noise_gate_db: Annotated[float, Field(ge=0.0)] | Literal["auto"] | None = Field(
        "auto",
        description="a voiced frame must be this far above the noise floor (None: off; auto: 10, 7.5 or 6 dB for "
        "10, 20 or 30 ms frames)",
    )
    floor_window_s: float = Field(3.0, gt=0.0, description="the noise floor is the quietest frame of this window")

    @property
    def gate_db(self) -> float | None:
        """The noise gate in dB (``auto``: the one measured for ``frame_ms``), or None when it is off."""
        return _NOISE_GATE_DB[self.frame_ms] if self.noise_gate_db == "auto" else self.noise_gate_db


class WebRTCVAD(VADEngine):
    """webrtcvad on 10, 20 or 30 ms frames of 16 kHz audio, gated by the level above the noise floor."""

    Config = WebRTCVADConfig
    config: WebRTCVADConfig

    def __init__(self, config: WebRTCVADConfig | None = None) -> None:
        super().__init__(config)
        self._webrtcvad = None
        self._vad = None
        window = max(1, int(round(self.config.floor_window_s * 1000 / self.config.frame_ms)))
        self._levels: collections.deque[float] = collections.deque(maxlen=window)
        self._taper = np.hanning(self.frame_samples)
        freqs = np.fft.rfftfreq(self.frame_samples, 1.0 / SPEECH_SAMPLE_RATE)
        self._band = (freqs >= 300.0) & (freqs <= 3400.0)

    @property
    def frame_samples(self) -> int:
        return SPEECH_SAMPLE_RATE * self.config.frame_ms // 1000

    def load(self) -> None:
        if self._vad is None:
            self._webrtcvad = require("webrtcvad", extra="vad", purpose="the webrtcvad engine")
            self.reset()

    def unload(self) -> None:
        self._vad = None

    @property
    def is_loaded(self) -> bool:
        return self._vad is not None

    def speech_probability(self, frame: np.ndarray) -> float:
        if self._vad is None:
            self.load()
        # level in the speech band only: the low rumble that makes coloured noise fluctuate is left out
        spectrum = np.abs(np.fft.rfft(frame.astype(np.float64) * self._taper)) ** 2
        level = 10.0 * np.log10(max(float(spectrum[self._band].sum()) / len(frame), 1e-9))
        self._levels.append(level)
        pcm16 = (np.clip(frame, -1.0, 1.0) * 32767.0).astype("<i2")
        voiced = self._vad.is_speech(pcm16.tobytes(), SPEECH_SAMPLE_RATE)
        gate = self.config.gate_db
        if voiced and gate is not None:
            voiced = level >= max(min(self._levels), _SILENT_DB) + gate
        return 1.0 if voiced else 0.0

    def reset(self) -> None:
        """A fresh detector (webrtcvad smooths over a few frames internally) and no noise floor yet."""
        if self._webrtcvad is not None:
            self._vad = self._webrtcvad.Vad(self.config.aggressiveness)
        self._levels.clear()
