"""Piper (piper-tts): a VITS voice per ``.onnx`` file with its ``.onnx.json`` config; fast on a CPU.

The session is built here (not by ``PiperVoice.load``) so the thread count is ours to set and the run can be aborted.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from voicepipe._optional import require
from voicepipe.errors import ModelLoadError
from voicepipe.tts.engine import CancellableSession, TTSEngine, release_memory, resident_bytes, session_options

__all__ = ["PiperEngine", "DEFAULT_MODEL"]

#: en_US "joe" (medium quality) from the Piper voice collection on the hub.
DEFAULT_MODEL = "rhasspy/piper-voices/en/en_US/joe/medium/en_US-joe-medium.onnx"


class PiperEngine(TTSEngine):
    """Piper over local files: ``model_path`` (.onnx) and ``config_path`` (default: ``model_path`` + ``.json``).

    ``voice`` picks a speaker of a multi-speaker model by name; ``speed`` > 1 speaks faster.
    """

    def __init__(
        self,
        model_path: str | Path,
        config_path: str | Path | None = None,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        threads: int = 1,
        release_arena: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.config_path = Path(config_path) if config_path else Path(f"{model_path}.json")
        self.voice = voice
        self.speed = speed
        self.threads = threads
        self.release_arena = release_arena  # see CancellableSession's shrink_arena
        self._voice = None
        self._session: CancellableSession | None = None
        self._syn_config = None
        self._loaded_bytes = 0

    def load(self) -> None:
        if self._voice is not None:
            return
        require("piper", extra="piper", purpose="The Piper TTS engine")
        import onnxruntime as ort
        from piper import PiperVoice, SynthesisConfig
        from piper.config import PiperConfig

        for path, what in ((self.model_path, "model"), (self.config_path, "voice config")):
            if not path.is_file():
                raise ModelLoadError(f"Piper {what} file not found: {path}; check the tts 'model' setting")
        try:
            config = PiperConfig.from_dict(json.loads(self.config_path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as exc:
            raise ModelLoadError(
                f"Piper voice config {self.config_path} is unreadable ({type(exc).__name__}: {exc}); "
                "download the .onnx.json that belongs to the voice again"
            ) from exc
        before = resident_bytes()
        try:
            session = ort.InferenceSession(
                str(self.model_path), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"Piper model file {self.model_path} is not a valid ONNX model ({str(exc).splitlines()[0]}); "
                "download the voice again or point the tts 'model' setting at a good copy"
            ) from exc
        speaker_id = None
        if self.voice is not None:
            speakers = config.speaker_id_map or {}
            if self.voice not in speakers:
                names = ", ".join(speakers) or "none: it has a single speaker, leave 'voice' unset"
                raise ModelLoadError(f"voice {self.voice!r} is not a speaker of {self.model_path}; speakers: {names}")
            speaker_id = speakers[self.voice]
        self._session = CancellableSession(session, shrink_arena=self.release_arena)
        self._voice = PiperVoice(session=self._session, config=config)
        self._syn_config = SynthesisConfig(speaker_id=speaker_id, length_scale=config.length_scale / self.speed)
        self.sample_rate = config.sample_rate
        self._loaded_bytes = resident_bytes() - before

    def unload(self) -> None:
        if self._voice is not None:
            self._voice = self._session = None
            release_memory()

    @property
    def is_loaded(self) -> bool:
        return self._voice is not None

    @property
    def memory_footprint(self) -> int:
        if self._voice is None:
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
