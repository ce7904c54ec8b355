"""Kokoro-82M on kokoro-onnx (onnxruntime + espeak-ng phonemes).

kokoro-onnx returns a whole text as one array, so the stage hands it one chunk (a clause or sentence) at a time.
The session is built here rather than by kokoro-onnx so the thread count is ours to set (the ``threads`` setting;
its first chunk of a reply has the cores to itself, see ``voicepipe.cores``).

Where a call's time goes (int8 graph, profiled with onnxruntime on the 2-core box): about 90% in the decoder's
generator (the vocoder's resblocks, mostly ``ConvInteger``), which grows with the length of the audio; phonemizing
takes ~30 ms on the first call and under 1 ms after; the graph's first run costs ~10% extra (hence the stage's
warm-up). A copy of the graph with float convolutions was not faster. So the time to the first sound follows the
length of the first chunk, which the chunker keeps to a few words.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
from pydantic import Field

from voicepipe._optional import require
from voicepipe.assets import locate
from voicepipe.errors import ModelLoadError
from voicepipe.memory.rss import release_freed_memory, rss_bytes
from voicepipe.tts.engine import CancellableSession, SynthesisCancelled, TTSEngine, TTSEngineConfig, open_session

__all__ = ["KokoroEngine", "DEFAULT_MODEL", "DEFAULT_VOICES", "DEFAULT_VOICE"]

#: Kokoro-82M v1.0 as kokoro-onnx publishes it (fp32 graph and the voices of v1.0), mirrored on the hub.
DEFAULT_MODEL = "fastrtc/kokoro-onnx/kokoro-v1.0.onnx"
DEFAULT_VOICES = "fastrtc/kokoro-onnx/voices-v1.0.bin"
DEFAULT_VOICE = "af_heart"
SAMPLE_RATE = 24_000


class KokoroEngine(TTSEngine):
    """Kokoro over a model (.onnx) and kokoro-onnx's voices archive (.bin/.npz), each a local path or a hub file.

    The files are found (and downloaded once) by ``load``. ``voice`` unset takes ``af_heart`` when the archive has it,
    else its first voice.
    """

    class Config(TTSEngineConfig):
        """Kokoro's settings: its two files and the shared TTS settings."""

        model: str = Field(
            DEFAULT_MODEL, description="Kokoro .onnx graph: a local path or owner/repo/file on the Hugging Face hub."
        )
        voices: str = Field(
            DEFAULT_VOICES, description="Kokoro voices archive (voices-v1.0.bin): a local path or owner/repo/file."
        )

    config: Config
    sample_rate = SAMPLE_RATE

    def __init__(self, config: KokoroEngine.Config | None = None) -> None:
        super().__init__(config)
        self.voice = self.config.voice  # the voice in use once loaded (the archive's default when unset)
        self.model_path: Path | None = None  # set by resolve_files()
        self.voices_path: Path | None = None
        self._kokoro = None
        self._session: CancellableSession | None = None
        self._style: np.ndarray | None = None
        self._loaded_bytes = 0

    def resolve_files(self) -> tuple[Path, Path]:
        """The local model and voices files, downloading hub references the first time (``load`` calls this)."""
        if self.model_path is None or self.voices_path is None:
            self.model_path = locate(self.config.model, field="model", want="file")
            self.voices_path = locate(self.config.voices, field="voices", want="file")
        return self.model_path, self.voices_path

    def load(self) -> None:
        if self._kokoro is not None:
            return
        require("kokoro_onnx", extra="kokoro", purpose="The Kokoro TTS engine")
        import kokoro_onnx

        model_path, voices_path = self.resolve_files()
        for path, what in ((model_path, "model"), (voices_path, "voices")):
            if not path.is_file():
                raise ModelLoadError(f"Kokoro {what} file not found: {path}; check the tts '{what}' setting")
        before = rss_bytes()
        session = open_session(model_path, self.config.threads, "Kokoro")
        names = {i.name for i in session.get_inputs()}
        if not {"style", "speed"} <= names:
            raise ModelLoadError(f"{model_path} is an ONNX model but not a Kokoro one (inputs: {sorted(names)})")
        wrapped = CancellableSession(session, shrink_arena=self.config.release_arena)
        try:
            kokoro = kokoro_onnx.Kokoro.from_session(wrapped, str(voices_path))
            voices = list(kokoro.get_voices())
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelLoadError(
                f"Kokoro voices file {voices_path} is unreadable ({exc}); it must be kokoro-onnx's voices "
                "archive (voices-v1.0.bin)"
            ) from exc
        voice = self.config.voice or (DEFAULT_VOICE if DEFAULT_VOICE in voices else voices[0] if voices else None)
        if voice not in voices:
            raise ModelLoadError(f"voice {voice!r} is not in {voices_path}; available: {', '.join(voices)}")
        self._style = np.asarray(kokoro.get_voice_style(voice), dtype=np.float32)
        self.voice = voice
        self._kokoro, self._session = kokoro, wrapped
        self._loaded_bytes = rss_bytes() - before

    def unload(self) -> None:
        if self._kokoro is not None:
            self._kokoro = self._session = self._style = None
            release_freed_memory()

    @property
    def is_loaded(self) -> bool:
        return self._kokoro is not None

    @property
    def memory_footprint(self) -> int:
        if self._kokoro is None or self.model_path is None:
            return 0
        # what loading added to the resident set (weights unpacked by onnxruntime), at least the file's size
        return max(self._loaded_bytes, self.model_path.stat().st_size)

    @property
    def voices(self) -> list[str]:
        return list(self._kokoro.get_voices()) if self._kokoro is not None else []

    def synthesize(self, text: str) -> np.ndarray:
        if self._kokoro is None or self._session is None:
            raise RuntimeError("KokoroEngine.synthesize() before load()")
        self._session.reset()
        try:
            audio, _ = self._kokoro.create(text, voice=self._style, speed=self.config.speed, lang=self.config.language)
        except SynthesisCancelled:
            raise
        except ValueError as exc:  # "no phonemes": normalization let nothing through
            if "phonemes" in str(exc):
                return np.zeros(0, dtype=np.float32)
            raise
        return np.asarray(audio, dtype=np.float32)

    def cancel(self) -> None:
        if self._session is not None:
            self._session.cancel()
