"""The VAD engine contract: a speech probability per fixed-size 16 kHz mono frame.

An engine is a pure model wrapper; it knows nothing of segments or the pipeline (``Segmenter`` turns probabilities
into speech segments, ``VADStage`` adapts that to frames). Engines are registered in ``voicepipe.engines.vad``.
"""

from __future__ import annotations

import abc
from typing import ClassVar

import numpy as np

from voicepipe.engine import Engine

__all__ = ["VADEngine"]


class VADEngine(Engine):
    """Base of every VAD engine (``engine:`` of the ``vad`` stage)."""

    role: ClassVar[str] = "vad"

    @property
    @abc.abstractmethod
    def frame_samples(self) -> int:
        """Samples per frame at 16 kHz that ``speech_probability`` expects (480 for 30 ms webrtcvad, 512 Silero).

        Known from the config alone, before ``load``.
        """

    @abc.abstractmethod
    def speech_probability(self, frame: np.ndarray) -> float:
        """Probability in [0, 1] that ``frame`` (float32, exactly ``frame_samples`` long) contains speech.

        Loads the engine first when it is not loaded.
        """

    @abc.abstractmethod
    def reset(self) -> None:
        """Forget any state carried between frames (call between unrelated streams)."""
