"""The VAD stage through the real pipeline harness: turn ids, frames in and out, resampling, arrival timestamps."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import speech
from voicepipe.config import parse_pipeline
from voicepipe.frames import (
    AudioFrame,
    InterruptionFrame,
    MetricsFrame,
    SpeechEndedFrame,
    SpeechStartedFrame,
    TextChunkFrame,
    UserAudioFrame,
)
from voicepipe.testing.harness import run_stage
from voicepipe.vad.segmenter import Pause, Segmenter, SpeechEnd
from voicepipe.vad.silero import SileroVAD
from voicepipe.vad.stage import VADConfig, VADStage

from .conftest import CLEAN_SET


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
async def test_each_utterance_is_a_turn_with_its_own_id(engine: str, clean_stream: np.ndarray) -> None:
    out = await run_stage(VADStage(VADConfig(engine=engine)), speech.audio_frames(clean_stream))
    assert not [f for f in out if isinstance(f, AudioFrame)]  # microphone audio is consumed
    starts = [f for f in out if isinstance(f, SpeechStartedFrame)]
    assert [f.turn_id for f in starts] == list(range(1, len(CLEAN_SET) + 1))
    for turn in range(1, len(CLEAN_SET) + 1):
        frames = [f for f in out if f.turn_id == turn and not isinstance(f, MetricsFrame)]  # metrics: a side channel
        kinds = [(type(f).__name__, getattr(f, "final", None)) for f in frames]
        # gaps between words longer than early_ms each send provisional audio that the next word voids
        gaps = (len(kinds) - 4) // 2
        assert kinds == [
            ("SpeechStartedFrame", None),
            *[("UserAudioFrame", False), ("SpeechResumedFrame", None)] * gaps,
            ("UserAudioFrame", False),
            ("SpeechEndedFrame", None),
            ("UserAudioFrame", True),
        ]
        # the last provisional audio is the final audio, so its transcript is used as it is
        np.testing.assert_array_equal(frames[-3].pcm, frames[-1].pcm)


async def test_other_frames_pass_through_in_order() -> None:
    clip = speech.pad(speech.espeak("Hello there."), 0.5, 1.0)
    frames = list(speech.audio_frames(clip))
    marker = TextChunkFrame(text="marker")
    out = await run_stage(VADStage(), [*frames[:10], marker, *frames[10:], InterruptionFrame()])
    assert marker in out and any(isinstance(f, InterruptionFrame) for f in out)
    assert out.index(marker) < next(i for i, f in enumerate(out) if isinstance(f, SpeechStartedFrame))


async def test_speech_end_timestamp_is_when_the_last_voiced_sample_arrived() -> None:
    clip = speech.pad(speech.espeak("Remind me to call my mother."), 0.5, 1.0)
    # a virtual clock: each 20 ms frame "arrives" 20 ms after the previous one, starting at t=1000 s
    out = await run_stage(VADStage(), speech.audio_frames(clip, start_timestamp=1000.0))
    ended = next(f for f in out if isinstance(f, SpeechEndedFrame))
    last_voiced = ended.audio_time
    # the frame holding that sample started at floor(t / 20 ms) * 20 ms and carries that stream time + 1000 s
    expected = 1000.0 + np.ceil(last_voiced / 0.02 - 1e-9) * 0.02 - 0.02
    assert ended.speech_end_timestamp == pytest.approx(expected, abs=1e-6)
    _, last = np.flatnonzero(np.abs(clip) > 1e-3)[[0, -1]] / 16000
    assert abs(last_voiced - last) < 0.25


def _final_segments(out: list) -> list[UserAudioFrame]:
    return [f for f in out if isinstance(f, UserAudioFrame) and f.final]


@pytest.mark.parametrize(
    ("rate", "stereo"),
    [(8000, False), (44100, False), (48000, True), (44100, True)],
    ids=["8k", "44k1", "48k-stereo", "44k1-stereo"],
)
async def test_any_rate_and_channel_count_is_resampled_to_16k_mono(rate: int, stereo: bool) -> None:
    clip16 = speech.concat(
        speech.pad(speech.espeak("Please turn on the lights."), 0.6, 0.8),
        speech.pad(speech.espeak("What time is it?"), 0.2, 1.0),
    )
    reference = _final_segments(await run_stage(VADStage(VADConfig(engine="silero")), speech.audio_frames(clip16)))
    audio = speech.resample(clip16, 16000, rate)
    if stereo:
        audio = speech.to_stereo(audio, right_gain=0.5)  # the mono mix is 0.75 x the signal
    out = await run_stage(VADStage(VADConfig(engine="silero")), speech.audio_frames(audio, rate))
    segments = _final_segments(out)
    assert len(segments) == len(reference) == 2
    gain = 0.75 if stereo else 1.0
    for got, ref in zip(segments, reference, strict=True):
        assert got.sample_rate == 16000 and got.pcm.ndim == 1 and got.pcm.dtype == np.float32
        assert abs(got.start_time - ref.start_time) <= 0.07 and abs(got.end_time - ref.end_time) <= 0.07
        # same audio: align by the stream positions and compare (8 kHz loses the band above 4 kHz)
        offset = round((got.start_time - ref.start_time) * 16000)
        a = got.pcm[max(0, -offset) :]
        b = ref.pcm[max(0, offset) :]
        n = min(len(a), len(b))
        correlation = np.corrcoef(a[:n], b[:n] * gain)[0, 1]
        assert correlation > (0.9 if rate == 8000 else 0.99)
        assert np.sqrt(np.mean(a[:n] ** 2)) == pytest.approx(np.sqrt(np.mean(b[:n] ** 2)) * gain, rel=0.1)


@pytest.mark.parametrize("name", ["silero", "voicepipe.vad.silero:SileroVAD"])
async def test_engine_silero_in_a_pipeline_file_runs_silero_from_the_registry(name: str) -> None:
    text = f"stages:\n  - type: vad\n    engine: {name}\n    end_of_turn: hangover\n    min_speech_ms: 200\n"
    stage = parse_pipeline(text, "p.yaml").stages[0].build()
    assert stage.engine is None  # built in setup(), not by the constructor
    clip = speech.pad(speech.espeak("Turn on the lights."), 0.5, 1.0)
    noise = speech.pink_noise(4.0, level=0.05, seed=3)  # steady noise: never speech to Silero
    out = await run_stage(stage, speech.audio_frames(speech.concat(clip, noise)))
    assert isinstance(stage.engine, SileroVAD) and stage.engine.is_loaded and stage.engine.memory_footprint > 0
    assert len([f for f in out if isinstance(f, UserAudioFrame) and f.final]) == 1


def test_by_default_the_provisional_audio_leaves_one_10ms_frame_after_the_last_voiced_one() -> None:
    """The stage's defaults (webrtcvad on 10 ms frames, early_ms 10): Whisper gets the words so far as soon as one
    silent 10 ms frame follows the last voiced one, and that audio ends there (30 ms later with 30 ms frames)."""
    config = VADConfig()
    segmenter = Segmenter(config.build_engine(), config.segmenter_config())
    clip = speech.pad(speech.espeak("Remind me to call my mother."), 0.5, 1.0)
    pauses, ends = [], []
    for offset in range(0, len(clip), 160):  # 10 ms at a time, so the moment each event goes out is known
        events = segmenter.feed(clip[offset : offset + 160])
        pauses += [((offset + 160) / 16000, e) for e in events if isinstance(e, Pause)]
        ends += [e for e in events if isinstance(e, SpeechEnd)]
    sent_at, pause = pauses[-1]  # the one no word voids (short gaps between words send earlier ones)
    (end,) = ends
    assert pause.segment.end_time == pytest.approx(end.last_voiced_time + 0.010, abs=1e-6)
    assert sent_at == pytest.approx(pause.segment.end_time, abs=1e-6)


def test_config_errors_name_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="pause_ms"):
        VADConfig(pause_ms=800, hangover_ms=500)
    with pytest.raises(ValidationError, match="early_ms"):
        VADConfig(early_ms=250, pause_ms=200)
    with pytest.raises(ValidationError, match="engine"):
        VADConfig(engine="cobra")
    with pytest.raises(ValidationError, match="frame_ms"):
        VADConfig(frame_ms=25)
