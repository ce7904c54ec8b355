"""mlx-whisper engine: float32 on CPU (``fp16=False``), greedy decoding (mlx-whisper has no beam search).

``model`` may be an mlx-whisper directory, an HF repo id of one, or a CTranslate2 (faster-whisper) directory, which
is converted once (``voicepipe.convert.whisper_to_mlx``) so both engines can run the same weights. On Linux, MLX's CPU
matmuls go through BLAS: preloading OpenBLAS (``LD_PRELOAD=.../openblas-pthread/libblas.so.3``) speeds it up ~6x.
"""

from __future__ import annotations

import concurrent.futures
import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from pydantic import field_validator

from voicepipe._optional import require
from voicepipe.asr.base import ASREngine, Transcription, TranscriptSegment, WhisperConfig, apply_guards
from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.errors import ModelLoadError

__all__ = ["MLXWhisperTranscriber", "MLXWhisperConfig", "DEFAULT_MODEL"]

DEFAULT_MODEL = "mlx-community/whisper-tiny.en-mlx"
_WINDOW = 30 * SPEECH_SAMPLE_RATE  # Whisper's input window
T = TypeVar("T")


class _MLXThread:
    """One process-lifetime daemon thread for every MLX call of this engine.

    Hand-written because of an MLX bug (ml-explore/mlx#3126, still in mlx 0.32.4 on Linux): when a thread that ran
    MLX work exits, the process may abort at exit ("terminate called without an active exception"; 1 run in 6 here).
    A daemon thread that never exits does not trigger it (0 in 12). Started on first use, never in a constructor.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def call(self, fn: Callable[..., T], /, *args: Any) -> T:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="voicepipe-mlx-whisper", daemon=True)
                self._thread.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._jobs.put((fn, args, future))
        return future.result()

    def _loop(self) -> None:
        while True:
            fn, args, future = self._jobs.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the caller, who re-raises it
                future.set_exception(exc)


_MLX = _MLXThread()


class MLXWhisperConfig(WhisperConfig):
    """``engine: mlx-whisper`` settings: Whisper's, with greedy decoding only."""

    @field_validator("beam_size")
    @classmethod
    def _greedy_only(cls, beam_size: int) -> int:
        if beam_size != 1:
            raise ValueError("mlx-whisper decodes greedily only; set beam_size: 1")
        return beam_size


class MLXWhisperTranscriber(ASREngine):
    """Whisper on MLX; audio longer than 30 s is decoded window by window."""

    Config = MLXWhisperConfig
    config: MLXWhisperConfig

    def __init__(self, config: MLXWhisperConfig | None = None) -> None:
        super().__init__(config)
        self.model_name = self.config.model or DEFAULT_MODEL
        self._model = None

    def load(self) -> None:
        if self._model is None:
            _MLX.call(self._load)

    def _load(self) -> None:
        require("mlx_whisper", extra="mlx-whisper", purpose="the mlx-whisper engine")
        import mlx.core as mx
        from mlx.utils import tree_map
        from mlx_whisper.load_models import load_model

        from voicepipe.assets import locate
        from voicepipe.convert.whisper_to_mlx import converted_dir, is_ct2_dir

        path = locate(self.model_name, field="asr.model", want="dir")
        source = str(converted_dir(path)) if path.is_dir() and is_ct2_dir(path) else str(path)
        if path.is_dir() and not (Path(source) / "config.json").is_file():
            raise ModelLoadError(
                f"asr.model: {path} is neither an mlx-whisper nor a CTranslate2 Whisper directory (no config.json)"
            )
        try:
            model = load_model(source, dtype=mx.float32)
        except Exception as exc:
            raise ModelLoadError(
                f"asr.model: cannot load mlx-whisper model {self.model_name!r} ({type(exc).__name__}: {exc}); "
                "give a local directory (mlx-whisper or CTranslate2), or a repo id that is cached when offline"
            ) from exc
        # weights saved as float16 would make MLX compute in float16, which is slow and lossy on CPU
        model.update(
            tree_map(lambda p: p.astype(mx.float32) if mx.issubdtype(p.dtype, mx.floating) else p, model.parameters())
        )
        mx.eval(model.parameters())
        self._model = model

    def unload(self) -> None:
        _MLX.call(self._drop)

    def _drop(self) -> None:
        self._model = None

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def memory_footprint(self) -> int:
        if self._model is None:
            return 0
        from mlx.utils import tree_flatten

        return sum(p.nbytes for _, p in tree_flatten(self._model.parameters()))

    def transcribe(self, pcm: np.ndarray) -> Transcription:
        self.load()
        return _MLX.call(self._transcribe, pcm)

    def _transcribe(self, pcm: np.ndarray) -> Transcription:
        import mlx.core as mx
        from mlx_whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
        from mlx_whisper.decoding import DecodingOptions

        started = time.perf_counter()
        audio = np.asarray(pcm, dtype=np.float32)
        options = DecodingOptions(language=self.config.language, without_timestamps=True, fp16=False, temperature=0.0)
        segments: list[TranscriptSegment] = []
        language = self.config.language
        for offset in range(0, max(len(audio), 1), _WINDOW):
            window = audio[offset : offset + _WINDOW]
            mel = log_mel_spectrogram(window, n_mels=self._model.dims.n_mels, padding=0)
            mel = pad_or_trim(mel, N_FRAMES, axis=-2).astype(mx.float32)
            result = self._model.decode(mel, options)
            language = result.language
            segments.append(
                TranscriptSegment(result.text, result.avg_logprob, result.no_speech_prob, result.compression_ratio)
            )
        text = apply_guards(segments, self.config)
        return Transcription(text, language, segments, time.perf_counter() - started)
