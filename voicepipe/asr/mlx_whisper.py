"""mlx-whisper engine: float32 on CPU (``fp16=False``), greedy decoding (mlx-whisper has no beam search).

``model`` may be an mlx-whisper directory, an HF repo id of one, or a CTranslate2 (faster-whisper) directory, which
is converted once (``voicepipe.asr.convert_mlx``) so both engines can run the same weights. On Linux, MLX's CPU
matmuls go through BLAS: preloading OpenBLAS (``LD_PRELOAD=.../openblas-pthread/libblas.so.3``) speeds it up ~6x.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from voicepipe._optional import require
from voicepipe.asr.base import SAMPLE_RATE, GuardConfig, Transcription, TranscriptSegment, apply_guards
from voicepipe.errors import ModelLoadError

__all__ = ["MLXWhisperTranscriber", "DEFAULT_MODEL"]

DEFAULT_MODEL = "mlx-community/whisper-tiny.en-mlx"
_WINDOW = 30 * SAMPLE_RATE  # Whisper's input window


class MLXWhisperTranscriber:
    """Whisper on MLX; audio longer than 30 s is decoded window by window."""

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        language: str | None = "en",
        beam_size: int = 1,
        guard: GuardConfig | None = None,
    ) -> None:
        if beam_size != 1:
            raise ValueError("mlx-whisper decodes greedily only: set beam_size to 1")
        self.model_name = model
        self.language = language
        self.guard = guard or GuardConfig()
        self._model = None

    def load(self) -> None:
        if self._model is not None:
            return
        require("mlx_whisper", extra="mlx-whisper", purpose="the mlx-whisper engine")
        import mlx.core as mx
        from mlx.utils import tree_map
        from mlx_whisper.load_models import load_model

        from voicepipe.asr.convert_mlx import converted_dir, is_ct2_dir

        path = Path(self.model_name).expanduser()
        source = str(converted_dir(path)) if path.is_dir() and is_ct2_dir(path) else self.model_name
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
        if self._model is None:
            self.load()
        import mlx.core as mx
        from mlx_whisper.audio import N_FRAMES, log_mel_spectrogram, pad_or_trim
        from mlx_whisper.decoding import DecodingOptions

        started = time.perf_counter()
        audio = np.asarray(pcm, dtype=np.float32)
        options = DecodingOptions(language=self.language, without_timestamps=True, fp16=False, temperature=0.0)
        segments: list[TranscriptSegment] = []
        language = self.language
        for offset in range(0, max(len(audio), 1), _WINDOW):
            window = audio[offset : offset + _WINDOW]
            mel = log_mel_spectrogram(window, n_mels=self._model.dims.n_mels, padding=0)
            mel = pad_or_trim(mel, N_FRAMES, axis=-2).astype(mx.float32)
            result = self._model.decode(mel, options)
            language = result.language
            segments.append(
                TranscriptSegment(result.text, result.avg_logprob, result.no_speech_prob, result.compression_ratio)
            )
        text = apply_guards(segments, self.guard)
        return Transcription(text, language, segments, time.perf_counter() - started)
