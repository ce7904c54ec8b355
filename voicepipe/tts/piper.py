"""Piper (piper-tts): a VITS voice per ``.onnx`` file with its ``.onnx.json`` config; fast on a CPU.

The session is built here (not by ``PiperVoice.load``) so the thread count is ours to set and the run can be aborted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from voicepipe._optional import require
from voicepipe.assets import locate
from voicepipe.errors import ModelLoadError
from voicepipe.memory.rss import release_freed_memory, rss_bytes
from voicepipe.tts.engine import CancellableSession, TTSEngine, TTSEngineConfig, open_session

__all__ = ["PiperEngine", "DEFAULT_MODEL"]

#: en_US "joe" (medium quality) from the Piper voice collection on the hub.
DEFAULT_MODEL = "rhasspy/piper-voices/en/en_US/joe/medium/en_US-joe-medium.onnx"


class PiperEngine(TTSEngine):
    """Piper over a voice's ``.onnx`` (a local path or a hub file) and the ``.onnx.json`` config beside it.

    The files are found (and downloaded once) by ``load``. ``voice`` picks a speaker of a multi-speaker model by name;
    ``speed`` > 1 speaks faster.
    """

    class Config(TTSEngineConfig):
        """Piper's settings: its voice file and the shared TTS settings."""

        model: str = Field(
            DEFAULT_MODEL,
            description="Piper voice .onnx: a local path or owner/repo/file on the Hugging Face hub (its .onnx.json "
            "config is read from beside it).",
        )

        @model_validator(mode="before")
        @classmethod
        def _voices_is_kokoros(cls, data: Any) -> Any:
            # the one Kokoro setting a Piper user is likely to carry over: say so instead of "unknown field"
            if isinstance(data, dict) and "voices" in data:
                problem = PydanticCustomError(
                    "kokoro_setting", "'voices' is a Kokoro setting; Piper's voice is its model file: remove 'voices'"
                )
                raise ValidationError.from_exception_data(
                    cls.__name__, [InitErrorDetails(type=problem, loc=("voices",), input=data["voices"])]
                )
            return data

    config: Config

    def __init__(self, config: PiperEngine.Config | None = None) -> None:
        super().__init__(config)
        self.voice = self.config.voice
        self.model_path: Path | None = None  # set by resolve_files()
        self.config_path: Path | None = None
        self._voice = None
        self._session: CancellableSession | None = None
        self._syn_config = None
        self._loaded_bytes = 0

    def resolve_files(self) -> tuple[Path, Path]:
        """The local voice file and its config, downloading hub references the first time (``load`` calls this)."""
        if self.model_path is None or self.config_path is None:
            ref = self.config.model
            self.model_path = locate(ref, field="model", want="file")
            if Path(ref).expanduser().exists():  # a local voice: its config lies beside it (checked in load)
                self.config_path = Path(f"{self.model_path}.json")
            else:  # a voice in a hub repo: its config is the file of the same name plus .json there
                self.config_path = locate(f"{ref}.json", field="model", want="file")
        return self.model_path, self.config_path

    def load(self) -> None:
        if self._voice is not None:
            return
        require("piper", extra="piper", purpose="The Piper TTS engine")
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        model_path, config_path = self.resolve_files()
        for path, what in ((model_path, "model"), (config_path, "voice config")):
            if not path.is_file():
                raise ModelLoadError(f"Piper {what} file not found: {path}; check the tts 'model' setting")
        try:
            config = PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"Piper voice config {config_path} is unreadable ({type(exc).__name__}: {exc}); "
                "download the .onnx.json that belongs to the voice again"
            ) from exc
        before = rss_bytes()
        session = open_session(model_path, self.config.threads, "Piper")
        speaker_id = None
        if self.voice is not None:
            speakers = config.speaker_id_map or {}
            if self.voice not in speakers:
                names = ", ".join(speakers) or "none: it has a single speaker, leave 'voice' unset"
                raise ModelLoadError(f"voice {self.voice!r} is not a speaker of {model_path}; speakers: {names}")
            speaker_id = speakers[self.voice]
        self._session = CancellableSession(session, shrink_arena=self.config.release_arena)
        self._voice = PiperVoice(session=self._session, config=config)
        self._syn_config = SynthesisConfig(speaker_id=speaker_id, length_scale=config.length_scale / self.config.speed)
        self.sample_rate = config.sample_rate
        self._loaded_bytes = rss_bytes() - before

    def unload(self) -> None:
        if self._voice is not None:
            self._voice = self._session = None
            release_freed_memory()

    @property
    def is_loaded(self) -> bool:
        return self._voice is not None

    @property
    def memory_footprint(self) -> int:
        if self._voice is None or self.model_path is None:
            return 0
        # what loading added to the resident set, at least the file's size (onnxruntime may map it lazily)
        return max(self._loaded_bytes, self.model_path.stat().st_size)

    def synthesize(self, text: str) -> np.ndarray:
        if self._voice is None or self._session is None:
            raise RuntimeError("PiperEngine.synthesize() before load()")
        self._session.reset()
        parts = [chunk.audio_float_array for chunk in self._voice.synthesize(text, syn_config=self._syn_config)]
        if not parts:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate(parts).astype(np.float32, copy=False)

    def cancel(self) -> None:
        if self._session is not None:
            self._session.cancel()
