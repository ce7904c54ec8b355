"""The one interface every VAD model implements: a speech probability per fixed-size 16 kHz mono frame."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

__all__ = ["SAMPLE_RATE", "VADModel"]

#: VAD models (and Whisper) work on 16 kHz mono.
SAMPLE_RATE = 16000


@runtime_checkable
class VADModel(Protocol):
    """A pure model wrapper: knows nothing about segments or the pipeline."""

    #: Samples per frame at 16 kHz that ``speech_probability`` expects (e.g. 480 for 30 ms webrtcvad, 512 Silero).
    frame_samples: int

    def speech_probability(self, frame: np.ndarray) -> float:
        """Probability in [0, 1] that ``frame`` (float32, exactly ``frame_samples`` long) contains speech."""
        ...

    def reset(self) -> None:
        """Forget any state carried between frames (call between unrelated streams)."""
        ...
