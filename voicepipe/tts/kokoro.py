"""Kokoro-82M on kokoro-onnx (onnxruntime + espeak-ng phonemes).

kokoro-onnx returns a whole text as one array, so the stage hands it one chunk (a clause or sentence) at a time.
The session is built here rather than by kokoro-onnx so the thread count is ours to set (the stage's ``threads``;
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

from voicepipe._optional import require
from voicepipe.errors import ModelLoadError
from voicepipe.tts.engine import (
    CancellableSession,
    SynthesisCancelled,
    TTSEngine,
    release_memory,
    resident_bytes,
    session_options,
)

__all__ = ["KokoroEngine", "DEFAULT_MODEL", "DEFAULT_VOICES", "DEFAULT_VOICE"]

#: Kokoro-82M v1.0 as kokoro-onnx publishes it (fp32 graph and the voices of v1.0), mirrored on the hub.
DEFAULT_MODEL = "fastrtc/kokoro-onnx/kokoro-v1.0.onnx"
DEFAULT_VOICES = "fastrtc/kokoro-onnx/voices-v1.0.bin"
DEFAULT_VOICE = "af_heart"
SAMPLE_RATE = 24_000


class KokoroEngine(TTSEngine):
    """Kokoro over local files: ``model_path`` (.onnx) and ``voices_path`` (kokoro-onnx's voices archive, .bin/.npz).

    ``voice=None`` takes ``af_heart`` when the archive has it, else its first voice.
    """

    def __init__(
        self,
        model_path: str | Path,
        voices_path: str | Path,
        *,
        voice: str | None = None,
        speed: float = 1.0,
        language: str = "en-us",
        threads: int = 1,
        release_arena: bool = False,
    ) -> None:
        self.model_path = Path(model_path)
        self.voices_path = Path(voices_path)
        self.voice = voice
        self.speed = speed
        self.language = language
        self.threads = threads
        self.release_arena = release_arena  # see CancellableSession's shrink_arena
        self.sample_rate = SAMPLE_RATE
        self._kokoro = None
        self._session: CancellableSession | None = None
        self._style: np.ndarray | None = None
        self._loaded_bytes = 0

    def load(self) -> None:
        if self._kokoro is not None:
            return
        require("kokoro_onnx", extra="kokoro", purpose="The Kokoro TTS engine")
        import kokoro_onnx
        import onnxruntime as ort

        for path, what in ((self.model_path, "model"), (self.voices_path, "voices")):
            if not path.is_file():
                raise ModelLoadError(f"Kokoro {what} file not found: {path}; check the tts '{what}' setting")
        before = resident_bytes()
        try:
            session = ort.InferenceSession(
                str(self.model_path), sess_options=session_options(self.threads), providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ModelLoadError(
                f"Kokoro model file {self.model_path} is not a valid ONNX model ({str(exc).splitlines()[0]}); "
                "download it again or point the tts 'model' setting at a good copy"
            ) from exc
        names = {i.name for i in session.get_inputs()}
        if not {"style", "speed"} <= names:
            raise ModelLoadError(f"{self.model_path} is an ONNX model but not a Kokoro one (inputs: {sorted(names)})")
        wrapped = CancellableSession(session, shrink_arena=self.release_arena)
        try:
            kokoro = kokoro_onnx.Kokoro.from_session(wrapped, str(self.voices_path))
            voices = list(kokoro.get_voices())
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise ModelLoadError(
                f"Kokoro voices file {self.voices_path} is unreadable ({exc}); it must be kokoro-onnx's voices "
                "archive (voices-v1.0.bin)"
            ) from exc
        voice = self.voice or (DEFAULT_VOICE if DEFAULT_VOICE in voices else voices[0] if voices else None)
        if voice not in voices:
            raise ModelLoadError(f"voice {voice!r} is not in {self.voices_path}; available: {', '.join(voices)}")
        self._style = np.asarray(kokoro.get_voice_style(voice), dtype=np.float32)
        self.voice = voice
        self._kokoro, self._session = kokoro, wrapped
        self._loaded_bytes = resident_bytes() - before

    def unload(self) -> None:
        if self._kokoro is not None:
            self._kokoro = self._session = self._style = None
            release_memory()

    @property
    def is_loaded(self) -> bool:
        return self._kokoro is not None

    @property
    def memory_footprint(self) -> int:
        if self._kokoro is None:
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
            audio, _ = self._kokoro.create(text, voice=self._style, speed=self.speed, lang=self.language)
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
