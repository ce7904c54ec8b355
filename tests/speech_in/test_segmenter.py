"""The segmenter state machine on real VAD models (webrtcvad, Silero) and espeak-ng speech: no Whisper here."""

from __future__ import annotations

import numpy as np
import pytest

from tests.support import speech
from voicepipe.vad.segmenter import EndCheck, Pause, Resume, Segmenter, SegmenterConfig, SpeechEnd, SpeechStart
from voicepipe.vad.silero import SileroVAD
from voicepipe.vad.webrtc import WebRTCVAD

from .conftest import CLEAN_SET

MODELS = {
    "webrtc": WebRTCVAD,  # aggressiveness 2
    "webrtc3": lambda: WebRTCVAD(WebRTCVAD.Config(aggressiveness=3)),
    "silero": SileroVAD,
}


def run(segmenter: Segmenter, pcm: np.ndarray, block: int = 320) -> list:
    events = []
    for offset in range(0, len(pcm), block):
        events += segmenter.feed(pcm[offset : offset + block])
    return events + segmenter.flush()


def ends(events: list) -> list[SpeechEnd]:
    return [e for e in events if isinstance(e, SpeechEnd)]


def speech_bounds(pcm: np.ndarray, threshold: float = 1e-3) -> tuple[float, float]:
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    return loud[0] / 16000, loud[-1] / 16000


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_one_segment_per_utterance_covering_the_speech(engine: str, clean_clips: list[np.ndarray]) -> None:
    stream = speech.concat(*clean_clips)
    events = run(Segmenter(MODELS[engine]()), stream)
    assert [type(e) for e in events].count(SpeechStart) == len(CLEAN_SET)
    segments = [e.segment for e in ends(events)]
    assert len(segments) == len(CLEAN_SET) and all(s is not None for s in segments)
    offset = 0.0
    for clip, segment in zip(clean_clips, segments, strict=True):
        first, last = speech_bounds(clip)
        # the segment holds every sample of the utterance (pre-roll before, early_ms after)
        assert segment.start_time <= offset + first
        assert segment.end_time >= offset + last
        assert len(segment.pcm) == round((segment.end_time - segment.start_time) * 16000)
        offset += len(clip) / 16000


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_preroll_starts_the_segment_300ms_before_the_onset(engine: str) -> None:
    clip = speech.pad(speech.espeak("Seven fishes swim slowly."), 1.0, 1.0)
    events = run(Segmenter(MODELS[engine]()), clip)
    onset = next(e for e in events if isinstance(e, SpeechStart)).onset_time
    segment = ends(events)[0].segment
    assert segment.start_time == pytest.approx(onset - 0.3, abs=1e-6)
    # the pre-roll is real audio from the stream, not padding
    start = int(round(segment.start_time * 16000))
    np.testing.assert_array_equal(segment.pcm[:4800], clip[start : start + 4800])
    no_preroll = ends(run(Segmenter(MODELS[engine](), SegmenterConfig(preroll_ms=0)), clip))[0].segment
    assert no_preroll.start_time == pytest.approx(onset, abs=1e-6)


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_pause_segment_equals_final_when_the_user_does_not_resume(engine: str) -> None:
    clip = speech.pad(speech.espeak("Remind me to call my mother."), 0.5, 1.0)
    events = run(Segmenter(MODELS[engine]()), clip)
    kinds = [type(e) for e in events]
    assert kinds == [SpeechStart, Pause, SpeechEnd]
    provisional, final = events[1].segment, events[2].segment
    assert (provisional.start_time, provisional.end_time) == (final.start_time, final.end_time)
    np.testing.assert_array_equal(provisional.pcm, final.pcm)


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_transcription_starts_before_the_end_check_on_the_same_final_audio(engine: str) -> None:
    """early_ms < pause_ms: the provisional segment goes out first, the end-of-turn check follows, and the final
    segment is the provisional one (so its transcript can be used), whether the check or the hangover ends it."""
    clip = speech.pad(speech.espeak("Remind me to call my mother."), 0.5, 1.0)
    config = SegmenterConfig(early_ms=90, pause_ms=200, end_check=True)
    segmenter, events, fed = Segmenter(MODELS[engine](), config), [], {}
    for offset in range(0, len(clip), 320):
        for event in segmenter.feed(clip[offset : offset + 320]):
            events.append(event)
            fed[type(event)] = offset + 320  # samples fed when the event came out
            if isinstance(event, Pause):
                assert not segmenter.in_pause and segmenter.end_turn() == []  # too early to end the turn
    events += segmenter.flush()
    assert [type(e) for e in events] == [SpeechStart, Pause, EndCheck, SpeechEnd]
    provisional, check, final = events[1].segment, events[2].segment, events[3].segment
    last_voiced = events[3].last_voiced_time
    assert provisional.end_time == pytest.approx(last_voiced + 0.09, abs=1e-6)
    assert check.end_time == pytest.approx(last_voiced + 0.2, abs=1e-6)
    assert (fed[EndCheck] - fed[Pause]) / 16000 >= 0.09  # the check came a real 100 ms or so later
    np.testing.assert_array_equal(provisional.pcm, final.pcm)
    # ended by the check instead of the hangover: the same final segment
    segmenter = Segmenter(MODELS[engine](), config)
    predicted = []
    for offset in range(0, len(clip), 320):
        new = segmenter.feed(clip[offset : offset + 320])
        if new and isinstance(new[-1], EndCheck):
            assert segmenter.in_pause
            new += segmenter.end_turn()
        predicted += new
    done = ends(predicted)
    assert len(done) == 1 and done[0].predicted
    np.testing.assert_array_equal(done[0].segment.pcm, provisional.pcm)


def test_a_gap_between_early_ms_and_pause_ms_resumes_without_an_end_check() -> None:
    first, second = speech.espeak("Turn on the radio"), speech.espeak("and play some jazz.")
    clip = speech.concat(speech.silence(0.5), first, speech.silence(0.15), second, speech.silence(1.0))
    config = SegmenterConfig(early_ms=60, pause_ms=200, end_check=True)
    events = run(Segmenter(WebRTCVAD(), config), clip)
    kinds = [type(e) for e in events]
    assert kinds.count(Pause) == 2 and kinds.count(Resume) == 1  # the gap: a provisional segment, then voided
    assert kinds.count(EndCheck) == 1  # only the real end lasted pause_ms
    assert kinds.index(Resume) < kinds.index(EndCheck)


def test_early_ms_longer_than_pause_ms_is_refused() -> None:
    with pytest.raises(ValueError, match="early_ms"):
        SegmenterConfig(early_ms=300, pause_ms=200).check()


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_resuming_after_a_short_pause_keeps_one_segment(engine: str) -> None:
    first, second = speech.espeak("Turn on the radio"), speech.espeak("and play some jazz.")
    clip = speech.concat(speech.silence(0.5), first, speech.silence(0.35), second, speech.silence(1.0))
    events = run(Segmenter(MODELS[engine]()), clip)
    starts = [e for e in events if isinstance(e, SpeechStart)]
    pauses = [e for e in events if isinstance(e, Pause)]
    assert len(starts) == 1 and len(ends(events)) == 1
    assert len(pauses) == 2  # one in the 350 ms gap, one at the end
    final = ends(events)[0].segment
    assert pauses[0].segment.end_time < final.end_time - 1.0  # the first provisional segment missed the second part
    assert pauses[-1].segment.end_time == final.end_time


@pytest.mark.parametrize("engine", ["webrtc", "silero"])
def test_a_40s_monologue_is_split_below_the_cap_and_nothing_is_lost(engine: str) -> None:
    sentences = [speech.espeak(text) for text in CLEAN_SET * 3]
    gap = speech.silence(0.25)  # shorter than the hangover: one long turn
    monologue = speech.concat(speech.silence(0.5), *[p for s in sentences for p in (s, gap)], speech.silence(1.0))
    assert len(monologue) / 16000 > 40
    events = run(Segmenter(MODELS[engine]()), monologue)
    segments = [e.segment for e in ends(events) if e.segment is not None]
    assert len(segments) >= 3
    assert all(s.end_time - s.start_time <= 15.0 + 1e-6 for s in segments)
    assert sum(e.capped for e in ends(events)) >= 2
    # every sample of speech is in some segment
    covered = np.zeros(len(monologue), dtype=bool)
    for s in segments:
        covered[round(s.start_time * 16000) : round(s.end_time * 16000)] = True
    assert not np.any((np.abs(monologue) > 1e-3) & ~covered)


def test_short_blips_are_not_segments() -> None:
    click = speech.espeak("uh")[:1600]  # 100 ms of voice
    clip = speech.concat(speech.silence(0.5), click, speech.silence(1.0))
    events = run(Segmenter(WebRTCVAD(), SegmenterConfig(min_speech_ms=250)), clip)
    assert all(e.segment is None for e in ends(events))
    assert not [e for e in events if isinstance(e, Pause)]


@pytest.mark.parametrize("engine", ["webrtc", "webrtc3", "silero"])
@pytest.mark.parametrize("kind", ["white", "pink"])
def test_no_speech_starts_in_pure_noise(engine: str, kind: str) -> None:
    for level, seed in ((0.05, 1), (0.2, 2)):  # -26 and -14 dBFS
        assert run(Segmenter(MODELS[engine]()), speech.noise(kind, 8.0, level=level, seed=seed)) == []


def test_without_the_noise_gate_webrtcvad_takes_noise_for_speech() -> None:
    """The control for the gate: plain webrtcvad (any mode) calls steady noise speech."""
    noise = speech.pink_noise(8.0, level=0.05, seed=1)
    assert any(
        isinstance(e, SpeechStart)
        for e in run(Segmenter(WebRTCVAD(WebRTCVAD.Config(aggressiveness=3, noise_gate_db=None))), noise)
    )


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
def test_the_default_noise_gate_holds_steady_noise_back_at_every_frame_length(frame_ms: int) -> None:
    """Shorter frames spread a steady noise's level wider above its floor, so the gate's default follows the frame
    length; the control: with 10 ms frames the 30 ms frames' 6 dB lets pink noise frames through."""
    noise = speech.pink_noise(8.0, level=0.05, seed=1)

    def voiced_frames(config: WebRTCVAD.Config) -> int:
        engine = WebRTCVAD(config)
        n = engine.frame_samples
        return int(sum(engine.speech_probability(noise[i : i + n]) for i in range(0, len(noise) - n + 1, n)))

    assert voiced_frames(WebRTCVAD.Config(frame_ms=frame_ms)) == 0
    if frame_ms == 10:
        assert voiced_frames(WebRTCVAD.Config(frame_ms=10, noise_gate_db=6.0)) > 0


@pytest.mark.parametrize("engine", ["webrtc3", "silero"])
@pytest.mark.parametrize(("kind", "snr"), [("white", 20), ("pink", 10)])
def test_noisy_speech_still_one_segment_per_utterance(engine: str, kind: str, snr: int, clean_clips) -> None:
    stream = speech.mix_at_snr(speech.concat(*clean_clips[:3]), snr, kind=kind, seed=2)
    segments = [e.segment for e in ends(run(Segmenter(MODELS[engine]()), stream)) if e.segment is not None]
    assert len(segments) == 3


@pytest.mark.parametrize(
    ("field", "value"),
    [("pause_ms", 600), ("threshold", 0.0), ("max_segment_s", 0.5), ("preroll_ms", -1)],
)
def test_contradictory_timings_name_the_field(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        SegmenterConfig(**{field: value}).check()


def test_speech_without_pauses_is_cut_at_the_cap_and_continues() -> None:
    """Ungated webrtcvad on 30 ms frames calls white noise speech throughout (measured; on 10 ms frames it finds
    short gaps): a stretch of 'speech' with no pause."""
    noise = speech.white_noise(20.0, level=0.05, seed=4)
    ungated = WebRTCVAD.Config(aggressiveness=3, noise_gate_db=None, frame_ms=30)
    events = run(
        Segmenter(WebRTCVAD(ungated), SegmenterConfig(max_segment_s=6.0)),
        noise,
    )
    segments = [e.segment for e in ends(events)]
    assert [e.capped for e in ends(events)][:3] == [True, True, True]
    assert [type(e) for e in events[:4]] == [SpeechStart, SpeechEnd, SpeechStart, SpeechEnd]
    assert segments[0].end_time - segments[0].start_time == pytest.approx(6.0, abs=0.04)
    assert segments[1].start_time == pytest.approx(segments[0].end_time)


def _end_at_each_pause(segmenter: Segmenter, pcm: np.ndarray, block: int = 320) -> list:
    """Feed ``pcm``; at each ``Pause`` ask ``end_turn`` (as an end-of-turn model that always says "finished")."""
    events = []
    for offset in range(0, len(pcm), block):
        new = segmenter.feed(pcm[offset : offset + block])
        events += new
        if new and isinstance(new[-1], Pause):
            events += segmenter.end_turn()
    return events + segmenter.flush()


def test_speech_within_the_hangover_after_a_predicted_end_resumes_the_segment() -> None:
    first, second = speech.espeak("Turn on the radio."), speech.espeak("And play some jazz.")
    clip = speech.concat(speech.silence(0.5), first, speech.silence(0.35), second, speech.silence(1.0))
    events = _end_at_each_pause(Segmenter(WebRTCVAD()), clip)
    starts, done = [e for e in events if isinstance(e, SpeechStart)], ends(events)
    assert [s.resumed for s in starts] == [False, True]
    assert [e.predicted for e in done] == [True, True]
    # the resumed segment starts where the first one started and holds both utterances without a gap
    assert done[1].segment.start_time == done[0].segment.start_time
    assert done[1].segment.end_time >= 0.5 + (len(first) + len(second)) / 16000 + 0.35
    assert len(done[1].segment.pcm) == round((done[1].segment.end_time - done[1].segment.start_time) * 16000)
    np.testing.assert_array_equal(done[1].segment.pcm[: len(done[0].segment.pcm)], done[0].segment.pcm)


def test_speech_after_the_hangover_is_a_new_segment_even_after_a_predicted_end() -> None:
    first, second = speech.espeak("Turn on the radio."), speech.espeak("And play some jazz.")
    clip = speech.concat(speech.silence(0.5), first, speech.silence(0.9), second, speech.silence(1.0))
    events = _end_at_each_pause(Segmenter(WebRTCVAD()), clip)
    starts, done = [e for e in events if isinstance(e, SpeechStart)], ends(events)
    assert [s.resumed for s in starts] == [False, False]
    assert done[1].segment.start_time > done[0].segment.end_time
