"""WAV source and sink: any rate and layout in, resampled frames out; bad files get one clear line."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from voicepipe.audio.wav import WavSink, WavSinkConfig, WavSource, WavSourceConfig
from voicepipe.errors import UserError
from voicepipe.frames import (
    AudioFrame,
    EndOfTurnFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.testing.harness import Pause, run_pipeline_collect


def sine(rate: int, seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


async def read_all(path, **cfg) -> list[AudioFrame]:
    collector, _ = await run_pipeline_collect([WavSource(WavSourceConfig(path=str(path), **cfg))])
    return [f for f in collector.downstream if isinstance(f, AudioFrame)]


@pytest.mark.parametrize(
    ("rate", "subtype", "channels"),
    [(8000, "PCM_16", 1), (44100, "PCM_24", 2), (48000, "FLOAT", 1), (16000, "PCM_16", 2)],
)
async def test_source_resamples_any_rate_and_layout_to_mono_16k(tmp_path, rate, subtype, channels):
    tone = sine(rate, 1.0)
    data = tone if channels == 1 else np.stack([tone, tone], axis=1)
    path = tmp_path / "x.wav"
    sf.write(path, data, rate, subtype=subtype)
    frames = await read_all(path, tail_silence_ms=0)
    assert all(f.sample_rate == 16000 and f.pcm.ndim == 1 and f.pcm.dtype == np.float32 for f in frames)
    assert all(len(f.pcm) == 320 for f in frames[:-1])  # 20 ms blocks
    pcm = np.concatenate([f.pcm for f in frames])
    assert abs(len(pcm) - 16000) <= 1
    spectrum = np.abs(np.fft.rfft(pcm))
    assert abs(np.argmax(spectrum) * 16000 / len(pcm) - 440) < 3, "the tone's pitch changed: resampling is wrong"
    assert 0.3 < np.max(np.abs(pcm[1000:-1000])) < 0.7


async def test_source_paces_in_real_time_when_asked(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(path, sine(16000, 0.5), 16000)
    import time

    start = time.monotonic()
    await read_all(path, realtime=True, tail_silence_ms=0)
    assert time.monotonic() - start >= 0.45


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "not a readable audio file"),
        (b"this is not audio at all" * 20, "not a readable audio file"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt ", "not a readable audio file"),
    ],
)
async def test_bad_input_files_get_one_clear_line(tmp_path, content, message):
    path = tmp_path / "bad.wav"
    path.write_bytes(content)
    with pytest.raises(UserError, match=message) as info:
        await WavSource(WavSourceConfig(path=str(path))).setup()
    assert "\n" not in str(info.value)


async def test_an_empty_wav_and_a_missing_file_are_user_errors(tmp_path):
    empty = tmp_path / "empty.wav"
    sf.write(empty, np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(UserError, match="contains no audio samples"):
        await WavSource(WavSourceConfig(path=str(empty))).setup()
    with pytest.raises(UserError, match="no such file"):
        await WavSource(WavSourceConfig(path=str(tmp_path / "nope.wav"))).setup()


async def test_sink_resamples_reports_playback_and_ends_turns(tmp_path):
    out = tmp_path / "out.wav"
    sink = WavSink(WavSinkConfig(path=str(out), sample_rate=16000))
    tone = sine(24000, 0.5)
    frames = [
        TTSAudioFrame(
            pcm=tone[:6000], sample_rate=24000, chunk_index=0, chunk_text="Hello there.", char_end=6, turn_id=1
        ),
        TTSAudioFrame(
            pcm=tone[6000:], sample_rate=24000, chunk_index=0, chunk_text="Hello there.", char_end=12, turn_id=1
        ),
        LLMResponseEndFrame(text="Hello there.", turn_id=1),
    ]
    from voicepipe.testing.harness import ListSource

    collector, _ = await run_pipeline_collect([ListSource(frames), sink])
    data, rate = sf.read(out)
    assert rate == 16000 and abs(len(data) - 8000) <= 2
    assert [type(f) for f in collector.downstream][-2:] == [EndOfTurnFrame, type(collector.downstream[-1])]
    playback = [f for _, f in collector.upstream if isinstance(f, PlaybackFrame)]
    assert playback and playback[-1].text == "Hello there." and playback[-1].finished
    assert not list(tmp_path.glob(".out.wav*.partial"))


async def test_sink_ends_an_interrupted_turn_with_what_was_written_and_ignores_another_turns_withdrawal(tmp_path):
    """The sink protocol (``AudioSink``): a barge-in ends the turn being written (its late audio never arrives), a
    ``turn_only`` interruption of another turn leaves the reply alone."""
    out = tmp_path / "out.wav"
    tone = sine(16000, 0.1)

    def block(turn: int, text: str, end: int) -> TTSAudioFrame:
        return TTSAudioFrame(pcm=tone, sample_rate=16000, chunk_text=text, char_end=end, turn_id=turn)

    frames = [
        block(1, "Hello there.", 6),
        Pause(0.05),
        InterruptionFrame(turn_id=9, turn_only=True),  # a withdrawn turn that is not this reply
        block(1, "Hello there.", 12),
        Pause(0.05),
        InterruptionFrame(turn_id=1),
        block(1, "Hello there. And more.", 20),  # late: never written
        block(2, "Sure.", 5),
        LLMResponseEndFrame(text="Sure.", turn_id=2),
    ]
    collector, _ = await run_pipeline_collect([WavSink(WavSinkConfig(path=str(out)))], frames)
    ends = [(f.turn_id, f.interrupted) for f in collector.of_type(EndOfTurnFrame)]
    assert ends == [(1, True), (2, False)]
    finished = [(f.turn_id, f.text) for _, f in collector.upstream if isinstance(f, PlaybackFrame) and f.finished]
    assert finished == [(1, "Hello there."), (2, "Sure.")]
    data, _ = sf.read(out)
    assert len(data) == 3 * len(tone)


async def test_sink_in_a_missing_directory_fails_before_writing(tmp_path):
    sink = WavSink(WavSinkConfig(path=str(tmp_path / "no" / "such" / "dir" / "out.wav")))
    with pytest.raises(UserError, match="does not exist; create it"):
        await sink.setup()
