"""Barge-in on a real device path: the user talks over the reply, the reply stops, history keeps what was heard."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.speech import espeak, pad, piper
from voicepipe.asr.stage import ASRConfig, ASRStage
from voicepipe.frames import (
    BotSpeakingFrame,
    EndOfTurnFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction
from voicepipe.text.stage import SentenceChunkerStage
from voicepipe.tts.stage import TTSConfig, TTSStage
from voicepipe.vad.stage import VADConfig, VADStage

from .scenario import (
    SAMPLE_RATE,
    converse,
    ended_turns,
    live_pipeline,
    neural_question,
    question,
    real_llm,
    transcripts,
    wait_for,
)

pytestmark = pytest.mark.slow


def stages(whisper_dir: str, piper_model: str, llm) -> list:
    return [
        VADStage(VADConfig(), name="vad"),
        ASRStage(ASRConfig(model=whisper_dir), name="asr"),
        llm,
        SentenceChunkerStage(name="chunker"),
        TTSStage(TTSConfig(engine="piper", model=piper_model), name="tts"),
    ]


def speaking_times(timeline, speaking: bool) -> list[tuple[float, int]]:
    return [
        (t, f.turn_id)
        for t, n, f in timeline.of(BotSpeakingFrame, Direction.UPSTREAM)
        if n == "speaker" and f.speaking is speaking
    ]


def heard_reports(timeline, turn: int) -> list[PlaybackFrame]:
    return [f for _, n, f in timeline.of(PlaybackFrame, Direction.UPSTREAM) if n == "speaker" and f.turn_id == turn]


async def test_talking_over_the_reply_stops_it_and_keeps_only_what_was_heard(room, whisper_dir, piper_model, chat_gguf):
    """A real reply is cut; the history keeps the heard words and the next answer follows the new question."""
    llm = real_llm(chat_gguf, max_tokens=80, temperature=0.0)
    pipeline = live_pipeline(stages(whisper_dir, piper_model, llm), mode="barge-in")
    recording = room.record("bot.monitor")

    async def script(timeline, collector):
        room.play(neural_question("Tell me about the history of Paris.", piper_model), SAMPLE_RATE, "user")
        await wait_for(lambda: speaking_times(timeline, True), 90, "the reply to start playing")
        await asyncio.sleep(2.0)
        room.play(pad(piper("Wait, tell me about Germany instead.", piper_model), 0, 0.3), SAMPLE_RATE, "user")
        await wait_for(lambda: len(transcripts(timeline)) >= 2, 60, "the second question's transcript")
        await wait_for(lambda: [1 for _, turn in speaking_times(timeline, True) if turn > 1], 60, "the second reply")
        await wait_for(lambda: [f for f in ended_turns(collector) if f.turn_id > 1], 90, "the second reply's end")

    timeline, collector = await converse(pipeline, script)
    audio = recording.stop()

    interruptions = [(t, f) for t, n, f in timeline.of(InterruptionFrame) if n == "turn-taking"]
    assert len(interruptions) == 1 and interruptions[0][1].turn_id == 1
    t_interrupt = interruptions[0][0]

    # the LLM and TTS stop: nothing of turn 1 is produced after the interruption (100 ms of grace)
    late = [
        t - t_interrupt
        for t, n, f in timeline.of(LLMTokenFrame) + timeline.of(TTSAudioFrame)
        if f.turn_id == 1 and n in ("llm", "tts") and t > t_interrupt
    ]
    assert max(late, default=0.0) < 0.1, late

    # playback stops: the first reply's turn ends interrupted, and the device goes quiet
    first_end = [f for f in ended_turns(collector) if f.turn_id == 1]
    assert first_end and first_end[0].interrupted
    stopped = [t for t, turn in speaking_times(timeline, False) if turn == 1]
    assert stopped and stopped[0] - t_interrupt < 0.5
    # the recording starts when the speaker's stream does: align it on the first sound of the reply
    first_start = speaking_times(timeline, True)[0][0]
    first_loud = np.flatnonzero(np.abs(audio) > 0.02)[0] / SAMPLE_RATE
    at = first_loud - first_start  # recording time = monotonic time + at
    played = _segment(audio, stopped[0] + at - 1.0, stopped[0] + at)
    after = _segment(audio, stopped[0] + at + 0.3, stopped[0] + at + 1.0)
    assert _rms(played) > 0.02 and _rms(after) < 0.003, (_rms(played), _rms(after))

    # history ends where playback stopped: the LLM keeps the heard part of reply 1, not what it generated
    # (the reply may still have been generating when it was cut: what was generated is every token of turn 1)
    generated = "".join(f.text for _, n, f in timeline.of(LLMTokenFrame) if n == "llm" and f.turn_id == 1)
    history = pipeline.stage("llm").history
    assert [m.role for m in history[:3]] == ["user", "assistant", "user"]
    kept = history[1].content
    progress = [f.text for f in heard_reports(timeline, 1) if not f.finished]
    final = heard_reports(timeline, 1)[-1]
    assert final.finished and kept and kept in progress  # the last report before the interruption
    assert final.text.startswith(kept)  # the device played out at most its own buffer after that
    assert len(kept) < len(generated.strip()) and len(final.text) < len(generated.strip())
    assert "germany" in history[2].content.lower()
    # the next answer follows the conversation as heard: it is about Germany, and the cut reply's unheard rest is
    # nowhere in what the model is given
    second = [f for _, n, f in timeline.of(LLMResponseEndFrame) if n == "llm" and f.turn_id > 1][0].text
    assert "german" in second.lower(), second
    unheard = generated.strip()[len(kept) :].strip()
    assert unheard and all(unheard not in m.content for m in history), (unheard, history)


async def test_a_short_backchannel_does_not_interrupt(room, whisper_dir, piper_model, tiny_gguf):
    pipeline = live_pipeline(stages(whisper_dir, piper_model, real_llm(tiny_gguf, max_tokens=8)), mode="barge-in")

    async def script(timeline, collector):
        room.play(question("What is the capital of France?"), SAMPLE_RATE, "user")
        await wait_for(lambda: speaking_times(timeline, True), 90, "the reply to start playing")
        await asyncio.sleep(1.0)
        room.play(espeak("uh huh", words_per_minute=220), SAMPLE_RATE, "user")  # 0.32 s
        await wait_for(lambda: ended_turns(collector), 90, "the reply to finish")
        await asyncio.sleep(1.0)

    timeline, collector = await converse(pipeline, script)
    assert pipeline.stage("turn-taking").backchannels >= 1  # it was heard, and let through as silence
    assert not timeline.of(InterruptionFrame)
    assert len(transcripts(timeline)) == 1
    ends = [f for f in collector.downstream if isinstance(f, EndOfTurnFrame)]
    assert len(ends) == 1 and not ends[0].interrupted
    generated = [f for _, n, f in timeline.of(LLMResponseEndFrame) if n == "llm"][0].text
    assert pipeline.stage("llm").history[-1].content == generated  # heard in full: all of it kept


def _segment(audio: np.ndarray, t0: float, t1: float) -> np.ndarray:
    return audio[max(0, int(t0 * SAMPLE_RATE)) : max(0, int(t1 * SAMPLE_RATE))]


def _rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(pcm.astype(np.float64) ** 2))) if len(pcm) else 0.0
