"""Fixtures for live-conversation tests: a private PulseAudio server and the real tiny models.

The server's null sink ``user`` is the "user's mouth" (its monitor is the pipeline's microphone) and ``bot`` is the
pipeline's speaker (the tests record ``bot.monitor``). Whisper tiny.en and the Piper voice come from PyPI packages of
the ``dev`` extra; nothing is downloaded.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator

import pytest

from voicepipe.testing.pulse import PulseServer, pulse_server, reinitialize_portaudio


@pytest.fixture(scope="session")
def pulse() -> Iterator[PulseServer]:
    if shutil.which("pulseaudio") is None or shutil.which("pacat") is None:
        pytest.skip("needs pulseaudio and pulseaudio-utils (scripts/install_system_deps.sh)")
    with pulse_server(("user", "bot")) as server:
        if "sounddevice" in sys.modules:  # PortAudio enumerated ALSA devices before the server ran
            reinitialize_portaudio()
        yield server


@pytest.fixture
def room(pulse: PulseServer) -> Iterator[PulseServer]:
    """The server, with silence streaming into the mic (a null sink's monitor is silent only while fed) and the
    server restarted first if an earlier test killed it."""
    if not pulse.running:
        pulse.start()
        reinitialize_portaudio()
    tone = pulse.room_tone("user")
    try:
        yield pulse
    finally:
        tone.terminate()
        tone.wait(timeout=5)


@pytest.fixture(scope="session")
def whisper_dir() -> str:
    from tests.support.whisper_assets import whisper_tiny_en_dir

    return str(whisper_tiny_en_dir())


@pytest.fixture(scope="session")
def piper_model() -> str:
    from tests.support.tts_assets import piper_joe_model_path

    return str(piper_joe_model_path())


@pytest.fixture(scope="session")
def chat_gguf() -> str:
    """A real chat model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI): replies a listener can check."""
    pytest.importorskip("llama_cpp")
    from tests.support.llm_assets import qwen25_05b_gguf

    return str(qwen25_05b_gguf())


@pytest.fixture(scope="session")
def listener():  # noqa: ANN201
    """Whisper base, to hear what came out of the speaker device."""
    from tests.support.whisper_assets import whisper_base_dir
    from voicepipe.asr.faster_whisper import FasterWhisperTranscriber

    engine = FasterWhisperTranscriber(
        FasterWhisperTranscriber.Config(model=str(whisper_base_dir()), language="en", threads=2)
    )
    engine.load()
    yield lambda pcm: engine.transcribe(pcm).text
    engine.unload()
