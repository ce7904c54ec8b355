"""``voicepipe say``: chunker + TTS to a WAV file, with the time to first audio printed."""

from __future__ import annotations

from pathlib import Path

import jiwer
import pytest
import soundfile as sf

from tests.support.speech import resample
from voicepipe.cli.main import main

from .conftest import transcribe, words


@pytest.mark.slow
def test_say_writes_a_wav_with_piper(tmp_path: Path, piper_model: str, whisper, capsys) -> None:
    out = tmp_path / "out.wav"
    text = "Hello there. The library opens early in the morning."
    code = main(["say", text, "--engine", "piper", "--model", piper_model, "--sample-rate", "16000", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "first audio after" in printed
    pcm, rate = sf.read(out, dtype="float32")
    assert rate == 16_000 and pcm.ndim == 1 and len(pcm) / rate > 2.0
    assert jiwer.wer(words(text), words(transcribe(whisper, pcm))) <= 0.1


@pytest.mark.slow
def test_say_with_kokoro_voice(tmp_path: Path, kokoro_files: tuple[str, str], whisper) -> None:
    out = tmp_path / "k.wav"
    model, voices = kokoro_files
    code = main(["say", "Good morning.", "--model", model, "--voices", voices, "--voice", "jm_kumo", "-o", str(out)])
    assert code == 0
    pcm, rate = sf.read(out, dtype="float32")
    assert rate == 24_000
    assert jiwer.wer("good morning", words(transcribe(whisper, resample(pcm, rate, 16_000)))) <= 0.5


def test_say_user_mistakes_exit_2(tmp_path: Path, capsys) -> None:
    assert main(["say", "Hi", "--model", str(tmp_path / "none.onnx"), "-o", str(tmp_path / "x.wav")]) == 2
    assert "model: no such file" in capsys.readouterr().err
    assert main(["say", "Hi", "--engine", "piper", "-o", str(tmp_path / "x.txt")]) == 2
    assert "cannot write audio in the '.txt' format" in capsys.readouterr().err
    assert main(["say", "Hi", "--speed", "9", "-o", str(tmp_path / "x.wav")]) == 2
    assert "--speed" in capsys.readouterr().err


def test_say_options_are_the_settings_with_their_defaults(capsys) -> None:
    """Each option is made from the setting it fills, so ``say`` and pipeline.yaml cannot disagree on a default."""
    from voicepipe.tts.engine import TTSEngineConfig
    from voicepipe.tts.kokoro import KokoroEngine

    with pytest.raises(SystemExit):
        main(["say", "--help"])
    options = " ".join(capsys.readouterr().out.split()).replace("- ", "-").split("options:")[1]
    helps = {part.split()[0]: part for part in options.split(" --")[1:]}  # option name -> its help text
    for field in ("threads", "speed", "language"):
        assert helps[field].endswith(f"(default: {TTSEngineConfig.model_fields[field].default})"), helps[field]
    assert helps["voices"].endswith(f"(default: {KokoroEngine.Config.model_fields['voices'].default})")
