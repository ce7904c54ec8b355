"""faster-whisper (CTranslate2) engine: int8 on CPU by default, greedy decoding unless beam_size > 1."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from pydantic import Field

from voicepipe._optional import require
from voicepipe.asr.base import ASREngine, Transcription, TranscriptSegment, WhisperConfig, apply_guards
from voicepipe.cores import schedule
from voicepipe.errors import ModelLoadError

__all__ = ["FasterWhisperTranscriber", "FasterWhisperConfig", "DEFAULT_MODEL"]

DEFAULT_MODEL = "Systran/faster-whisper-tiny.en"

#: The files faster-whisper reads from a model repo (what its own ``download_model`` fetches).
_REPO_FILES = ["config.json", "preprocessor_config.json", "model.bin", "tokenizer.json", "vocabulary.*"]

_BYTES_PER_WEIGHT = {"int8": 1, "int8_float32": 1, "int8_float16": 1, "float16": 2, "bfloat16": 2, "float32": 4}


class FasterWhisperConfig(WhisperConfig):
    """``engine: faster-whisper`` settings: Whisper's, plus CTranslate2's threads and weight type."""

    threads: int = Field(2, ge=1, description="CPU threads for faster-whisper")
    compute_type: str = Field("int8", description="faster-whisper weight type: int8, float32, ...")


class FasterWhisperTranscriber(ASREngine):
    """Whisper on CTranslate2. ``model`` is a CT2 directory, an HF repo id, or a faster-whisper size name."""

    Config = FasterWhisperConfig
    config: FasterWhisperConfig

    def __init__(self, config: FasterWhisperConfig | None = None) -> None:
        super().__init__(config)
        self.model_name = self.config.model or DEFAULT_MODEL
        self._model = None
        self._footprint = 0

    def load(self) -> None:
        if self._model is not None:
            return
        fw = require("faster_whisper", extra="whisper", purpose="the faster-whisper engine")
        path = _locate(self.model_name)
        source = str(path)
        if not (path / "model.bin").is_file():
            raise ModelLoadError(
                f"asr.model: {path} has no model.bin, so it is not a CTranslate2 Whisper directory; "
                "point it at a faster-whisper model (or an HF repo id such as Systran/faster-whisper-tiny.en)"
            )
        try:
            self._model = fw.WhisperModel(
                source, device="cpu", compute_type=self.config.compute_type, cpu_threads=self.config.threads
            )
        except Exception as exc:  # hub errors, corrupt files, unknown names: all surface here
            raise ModelLoadError(
                f"asr.model: cannot load faster-whisper model {self.model_name!r} ({type(exc).__name__}: {exc}); "
                "give a local CTranslate2 directory, or a repo id that is in the Hugging Face cache when offline"
            ) from exc
        self._footprint = self._estimate_footprint(source)

    def _estimate_footprint(self, source: str) -> int:
        """CT2 keeps the weights in ``compute_type``; model.bin stores float16, so scale its size."""
        path = Path(source)
        model_bin = path / "model.bin" if path.is_dir() else None
        if model_bin is None or not model_bin.is_file():
            model_dir = getattr(getattr(self._model, "model", None), "model_path", None)
            model_bin = Path(model_dir) / "model.bin" if model_dir else None
        if model_bin is None or not model_bin.is_file():
            return 0
        return int(model_bin.stat().st_size / 2 * _BYTES_PER_WEIGHT.get(self.config.compute_type, 4))

    def unload(self) -> None:
        self._model = None
        self._footprint = 0

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    @property
    def memory_footprint(self) -> int:
        return self._footprint if self._model is not None else 0

    def transcribe(self, pcm: np.ndarray) -> Transcription:
        if self._model is None:
            self.load()
        started = time.perf_counter()
        with schedule.critical("asr"):  # the user waits for this: llama.cpp background work waits (voicepipe.cores)
            return self._transcribe(pcm, started)

    def _transcribe(self, pcm: np.ndarray, started: float) -> Transcription:
        # no temperature fallback (it re-decodes, doubling latency) and no built-in skipping: the guard decides
        segments, info = self._model.transcribe(
            np.asarray(pcm, dtype=np.float32),
            language=self.config.language,
            beam_size=self.config.beam_size,
            temperature=0.0,
            condition_on_previous_text=False,
            without_timestamps=True,
            vad_filter=False,
            no_speech_threshold=None,
            log_prob_threshold=None,
            compression_ratio_threshold=None,
        )
        decoded = [TranscriptSegment(s.text, s.avg_logprob, s.no_speech_prob, s.compression_ratio) for s in segments]
        text = apply_guards(decoded, self.config)
        return Transcription(text, info.language, decoded, time.perf_counter() - started)


def _locate(name: str) -> Path:
    """The local directory of ``name`` (``voicepipe.assets.locate``'s rule), where faster-whisper's size names
    (``tiny.en``) stand for their hub repos, fetched on first use."""
    from faster_whisper import utils

    from voicepipe.assets import locate

    if "/" not in name and not Path(name).expanduser().exists():
        # size names map to repos in faster-whisper's own table (not exported under a public name)
        repo = getattr(utils, "_MODELS", {}).get(name)
        if repo is None:
            raise ModelLoadError(
                f"asr.model: {name!r} is neither a directory, a repo id (owner/name) nor a faster-whisper size "
                f"({', '.join(utils.available_models())})"
            )
        name = repo
    return locate(name, field="asr.model", want="dir", allow_patterns=_REPO_FILES)
