"""Third-party engines: the README's espeak-ng TTS engine, installed as a real package (module + dist-info with an
entry point in ``voicepipe.engines.tts``), is picked with ``engine:`` in pipeline.yaml, has its settings checked, and
speaks words Whisper hears."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import soxr

from voicepipe.config import build_stages, parse_pipeline
from voicepipe.errors import ConfigError
from voicepipe.frames import TextChunkFrame, TTSAudioFrame
from voicepipe.registry import engine_registry
from voicepipe.testing.harness import run_stage

README = Path(__file__).resolve().parents[2] / "README.md"


def _readme_engine() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    return textwrap.dedent(next(b for b in blocks if "class EspeakTTS(TTSEngine)" in b))


@pytest.fixture(scope="module")
def whisper_tiny_en() -> str:
    from tests.support.whisper_assets import whisper_tiny_en_dir

    return str(whisper_tiny_en_dir())


@pytest.fixture
def installed_engine(tmp_path, monkeypatch):
    """The README's engine installed the way pip installs a package: its module plus a dist-info with entry points."""
    site = tmp_path / "site"
    (site / "vp_espeak").mkdir(parents=True)
    (site / "vp_espeak" / "__init__.py").write_text("")
    (site / "vp_espeak" / "espeak.py").write_text(_readme_engine())
    (site / "vp_espeak" / "broken.py").write_text("raise ImportError('this engine needs libfoo')\n")
    dist = site / "vp_espeak-0.1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vp-espeak\nVersion: 0.1.0\n")
    (dist / "entry_points.txt").write_text(
        "[voicepipe.engines.tts]\n"
        "espeak = vp_espeak.espeak:EspeakTTS\n"
        "broken-tts = vp_espeak.broken:Thing\n"
        "[voicepipe.engines.asr]\n"
        "espeak-as-asr = vp_espeak.espeak:EspeakTTS\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in [m for m in sys.modules if m.startswith("vp_espeak")]:
        sys.modules.pop(name, None)


def test_registry_lists_the_engine_with_its_package(installed_engine):
    infos = {i.name: i for i in engine_registry("tts").list()}
    assert infos["espeak"].origin == "vp-espeak 0.1.0" and infos["espeak"].error is None
    assert infos["broken-tts"].cls is None and "this engine needs libfoo" in infos["broken-tts"].error
    assert infos["piper"].origin.startswith("voicepipe ")  # built-in engines register the same way


def test_an_engine_of_another_role_is_refused_with_the_choices(installed_engine):
    text = "stages:\n  - type: asr\n    engine: espeak-as-asr\n"
    with pytest.raises(ConfigError, match=r"p.yaml:3: stages\[0\].engine: asr engine 'espeak-as-asr' is a tts engine"):
        parse_pipeline(text, "p.yaml")


def test_engine_settings_are_checked_with_their_line(installed_engine):
    text = "stages:\n  - type: tts\n    engine: espeak\n    words_per_minute: 9999\n"
    with pytest.raises(ConfigError, match=r"p.yaml:4: stages\[0\].words_per_minute: .*450"):
        parse_pipeline(text, "p.yaml")
    text = "stages:\n  - type: tts\n    engine: espeak\n    wpm: 160\n"
    with pytest.raises(ConfigError, match=r"p.yaml:4: stages\[0\].wpm: unknown field"):
        parse_pipeline(text, "p.yaml")


async def test_the_readme_engine_speaks_in_a_pipeline(installed_engine, whisper_tiny_en):
    from faster_whisper import WhisperModel

    text = "stages:\n  - type: tts\n    engine: espeak\n    words_per_minute: 160\n    warm_up: false\n"
    (stage,) = build_stages(parse_pipeline(text, "p.yaml"))
    out = await run_stage(stage, [TextChunkFrame(text="The capital of France is Paris.", turn_id=1)])
    audio = [f for f in out if isinstance(f, TTSAudioFrame)]
    assert audio, out
    pcm = np.concatenate([f.pcm.reshape(-1) for f in audio]).astype(np.float32)
    pcm16k = soxr.resample(pcm, audio[0].sample_rate, 16000)
    segments, _ = WhisperModel(whisper_tiny_en, device="cpu", compute_type="int8").transcribe(pcm16k, language="en")
    heard = " ".join(s.text for s in segments).lower()
    assert "paris" in heard, heard
