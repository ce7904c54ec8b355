"""Smart Turn v3 end-of-turn prediction: the real model (fetched from the pipecat-ai wheel on PyPI), real speech.

The utterances are read by Piper's joe voice; they were picked as clear cases, not tuned on (the threshold is the
model's own 0.5). ``scripts/bench_end_of_turn.py`` reports the false end-of-turn rate on a larger held-out set.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from tests.support import speech
from voicepipe.frames import MetricsFrame, SpeechEndedFrame, SpeechStartedFrame, UserAudioFrame
from voicepipe.testing.harness import run_stage
from voicepipe.vad.smart_turn import WINDOW_SAMPLES, SmartTurn
from voicepipe.vad.stage import VADConfig, VADStage

pytest.importorskip("onnxruntime", reason="needs the vad extra")

COMPLETE = ["What time is it in Tokyo right now?", "Please turn off the lights in the living room."]
INCOMPLETE = ["So what I was thinking is that", "Let me think about it and"]


@pytest.fixture(scope="module")
def smart_turn() -> SmartTurn:
    model = SmartTurn()
    model.load()
    return model


def test_features_match_transformers_whisper_extractor(smart_turn: SmartTurn) -> None:
    transformers = pytest.importorskip("transformers", reason="the reference extractor is in the dev extra")
    clip = speech.piper(COMPLETE[0])
    reference = transformers.WhisperFeatureExtractor(chunk_length=8)(
        np.pad(clip, (WINDOW_SAMPLES - len(clip), 0)),
        sampling_rate=16000,
        padding="max_length",
        max_length=WINDOW_SAMPLES,
        truncation=True,
        do_normalize=True,
        return_tensors="np",
    ).input_features[0]
    ours = smart_turn.features(clip)
    assert ours.shape == reference.shape == (80, 800)
    np.testing.assert_allclose(ours, reference, atol=1e-4)


async def _turn(text: str, **fields: object) -> list:
    clip = speech.pad(speech.piper(text), lead=0.5, trail=1.5)
    stage = VADStage(VADConfig(**fields))
    return await run_stage(stage, speech.audio_frames(clip, start_timestamp=100.0))


@pytest.mark.parametrize("text", COMPLETE)
async def test_a_finished_question_ends_at_the_pause(text: str) -> None:
    out = await _turn(text)
    ended = [f for f in out if isinstance(f, SpeechEndedFrame)]
    assert len(ended) == 1 and ended[0].predicted
    assert ended[0].end_of_turn_probability > 0.5
    provisional, final = [f for f in out if isinstance(f, UserAudioFrame)]
    # ended at the pause: the final segment is the provisional one, so the early transcript is used as it is
    assert not provisional.final and final.final and provisional.end_time == final.end_time
    cost = [f.values["end_of_turn_model_s"] for f in out if isinstance(f, MetricsFrame)]
    assert len(cost) == 1


async def test_with_early_ms_the_transcription_audio_goes_out_before_the_model_is_asked() -> None:
    out = await _turn(COMPLETE[1], early_ms=90, pause_ms=200)
    kinds = [type(f) for f in out]
    provisional, final = [f for f in out if isinstance(f, UserAudioFrame)]
    # the provisional audio is out before the model is asked (its metrics) and before the turn ends
    assert kinds.index(UserAudioFrame) < kinds.index(MetricsFrame) < kinds.index(SpeechEndedFrame)
    ended = next(f for f in out if isinstance(f, SpeechEndedFrame))
    assert ended.predicted
    assert provisional.end_time == final.end_time == pytest.approx(ended.audio_time + 0.09, abs=1e-6)
    np.testing.assert_array_equal(provisional.pcm, final.pcm)


@pytest.mark.parametrize("text", INCOMPLETE)
async def test_an_unfinished_sentence_waits_for_the_hangover(text: str) -> None:
    out = await _turn(text)
    ended = [f for f in out if isinstance(f, SpeechEndedFrame)]
    assert len(ended) == 1 and not ended[0].predicted
    assert ended[0].end_of_turn_probability < 0.5


async def test_hangover_mode_never_asks_the_model() -> None:
    out = await _turn(COMPLETE[0], end_of_turn="hangover")
    ended = next(f for f in out if isinstance(f, SpeechEndedFrame))
    assert not ended.predicted and ended.end_of_turn_probability is None
    assert not [f for f in out if isinstance(f, MetricsFrame)]


async def test_without_the_model_the_hangover_ends_the_turn_and_one_warning_says_so(
    tmp_path, caplog: pytest.LogCaptureFixture
) -> None:
    broken = tmp_path / "smart-turn.onnx"
    broken.write_bytes(b"not an onnx file")
    with caplog.at_level(logging.WARNING, logger="voicepipe.vad"):
        out = await _turn(COMPLETE[0], smart_turn_model=str(broken))
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "hangover" in warnings[0].getMessage()
    ended = next(f for f in out if isinstance(f, SpeechEndedFrame))
    assert not ended.predicted


async def test_going_on_after_a_predicted_end_interrupts_that_turn_and_resumes_it() -> None:
    """ "Wait." is a whole utterance, so the model ends the turn at the pause; the user goes on within the hangover."""
    clip = speech.concat(
        speech.silence(0.5),
        speech.piper("Wait."),
        speech.silence(0.35),
        speech.piper("Tell me about Germany instead."),
        speech.silence(1.5),
    )
    out = await run_stage(VADStage(), speech.audio_frames(clip, start_timestamp=100.0))
    kinds = [(type(f).__name__, f.turn_id) for f in out if not isinstance(f, MetricsFrame | UserAudioFrame)]
    assert kinds == [
        ("SpeechStartedFrame", 1),
        ("SpeechEndedFrame", 1),
        ("InterruptionFrame", 1),
        ("SpeechStartedFrame", 2),
        ("SpeechEndedFrame", 2),
    ]
    assert next(f for f in out if isinstance(f, SpeechStartedFrame) and f.turn_id == 2).resumes_turn == 1
    finals = [f for f in out if isinstance(f, UserAudioFrame) and f.final]
    assert finals[1].start_time == finals[0].start_time and finals[1].duration > finals[0].duration + 1.0
