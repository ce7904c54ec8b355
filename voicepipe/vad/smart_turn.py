"""Smart Turn v3.2 (Daily, BSD-2-Clause): does this utterance sound finished? One probability per call.

The model is a Whisper-tiny encoder with a classifier head, exported to ONNX (8.7 MB, int8, CPU build). It is published
only inside the ``pipecat-ai`` wheel, so ``voicepipe.wheel_assets`` fetches that one file from the pinned wheel (SHA-256
checked, cached); voicepipe never imports pipecat. Input, as pipecat's ``LocalSmartTurnAnalyzerV3`` feeds it: the last 8
s of the turn at 16 kHz (zero-padded at the front when shorter), normalized to zero mean and unit variance, as an 80 x
800 Whisper log-mel spectrogram; output: the probability that the turn is complete (> 0.5: complete).

Features come from faster-whisper's ``FeatureExtractor``: numpy only, and the same Whisper log-mel math as
``transformers.WhisperFeatureExtractor`` (the reference the model was trained with, checked by a test) without
importing transformers and torch at run time; faster-whisper is voicepipe's default ASR anyway.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from voicepipe._optional import require
from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.errors import ModelLoadError
from voicepipe.wheel_assets import WheelFile, wheel_file

__all__ = ["SMART_TURN_V3", "SmartTurn", "WINDOW_SAMPLES"]

#: The model sees the last 8 s of the turn.
WINDOW_SAMPLES = 8 * SPEECH_SAMPLE_RATE

SMART_TURN_V3 = WheelFile(
    distribution="pipecat-ai",
    version="1.14.0",
    member="pipecat/audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx",
    sha256="2bb026316b14a660486a75b1733cd3fbab8c2fd0314dc9af7be49f8cca967e4f",
    license="Smart Turn v3, BSD-2-Clause, (c) Daily",
)


class SmartTurn:
    """End-of-turn classifier; ``load()`` fetches (first time) and opens the model, ``probability()`` runs it."""

    def __init__(self, model_path: str | Path | None = None, *, threads: int = 1) -> None:
        self.model_path = Path(model_path) if model_path is not None else None
        self.threads = threads
        self._session = None
        self._features = None

    @property
    def is_loaded(self) -> bool:
        return self._session is not None

    def load(self) -> None:
        if self._session is not None:
            return
        ort = require("onnxruntime", extra="vad", purpose="the Smart Turn end-of-turn model")
        feature_extractor = require("faster_whisper.feature_extractor", extra="vad", purpose="Smart Turn's features")
        path = self.model_path or wheel_file(SMART_TURN_V3)
        options = ort.SessionOptions()
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.intra_op_num_threads = self.threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            session = ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as exc:
            raise ModelLoadError(
                f"Smart Turn model {path} is not a valid ONNX file ({str(exc).splitlines()[0]})"
            ) from exc
        if [i.name for i in session.get_inputs()] != ["input_features"]:
            raise ModelLoadError(f"{path} is an ONNX model but not Smart Turn v3 (no 'input_features' input)")
        self._features = feature_extractor.FeatureExtractor(feature_size=80, chunk_length=8)
        self._session = session
        self.probability(np.zeros(SPEECH_SAMPLE_RATE, dtype=np.float32))  # first run plans the graph: not on a turn

    def features(self, pcm: np.ndarray) -> np.ndarray:
        """80 x 800 log-mel features of the last 8 s of ``pcm`` (16 kHz mono float32), as the model expects."""
        if self._features is None:
            raise RuntimeError("SmartTurn.features() before load()")
        audio = np.asarray(pcm, dtype=np.float32)[-WINDOW_SAMPLES:]
        audio = np.pad(audio, (WINDOW_SAMPLES - len(audio), 0))
        audio = (audio - audio.mean()) / np.sqrt(audio.var() + 1e-7)
        return np.asarray(self._features(audio, padding=0), dtype=np.float32)

    def probability(self, pcm: np.ndarray) -> float:
        """Probability in [0, 1] that the speech in ``pcm`` (16 kHz mono, ending now) is a finished turn."""
        if self._session is None:
            raise RuntimeError("SmartTurn.probability() before load()")
        out = self._session.run(None, {"input_features": self.features(pcm)[np.newaxis]})
        return float(np.asarray(out[0]).reshape(-1)[0])

    def unload(self) -> None:
        self._session = self._features = None
