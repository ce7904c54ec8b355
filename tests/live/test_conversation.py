"""A spoken question into a real (PulseAudio) microphone, a spoken reply out of a real speaker device."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicepipe.asr.stage import ASRConfig, ASRStage
from voicepipe.frames import BotSpeakingFrame, InterruptionFrame, PlaybackFrame, TTSAudioFrame
from voicepipe.stage import Direction
from voicepipe.testing.fakes import FakeLLM, FakeLLMConfig
from voicepipe.testing.speech import rms
from voicepipe.text.stage import SentenceChunkerStage
from voicepipe.tts.stage import TTSConfig, TTSStage
from voicepipe.vad.stage import VADConfig, VADStage

from .scenario import (
    SAMPLE_RATE,
    bot_started,
    converse,
    ended_turns,
    live_pipeline,
    question,
    transcripts,
    wait_for,
)

pytestmark = pytest.mark.slow

REPLY = "Paris is the capital of France. It is a lovely city on the river Seine, famous for its museums and cafes."


def stages(whisper_dir: str, piper_model: str, llm) -> list:
    return [
        VADStage(VADConfig(), name="vad"),
        ASRStage(ASRConfig(model=whisper_dir), name="asr"),
        llm,
        SentenceChunkerStage(name="chunker"),
        TTSStage(TTSConfig(engine="piper", model=piper_model), name="tts"),
    ]


async def test_spoken_question_gets_one_spoken_reply(room, whisper_dir, piper_model):
    llm = FakeLLM(FakeLLMConfig(reply=REPLY), name="llm")
    pipeline = live_pipeline(stages(whisper_dir, piper_model, llm))
    recording = room.record("bot.monitor")

    async def script(timeline, collector):
        room.play(question("What is the capital of France?"), SAMPLE_RATE, "user")
        await wait_for(lambda: ended_turns(collector), 90, "the end of the first turn")
        await asyncio.sleep(1.5)  # a second turn would have started by now

    timeline, collector = await converse(pipeline, script)
    reply_audio = recording.stop()

    said = transcripts(timeline)
    assert len(said) == 1, [t.text for t in said]
    assert "capital of france" in said[0].text.lower()
    assert len(ended_turns(collector)) == 1 and not ended_turns(collector)[0].interrupted
    # the reply really came out of the device: about as much loud audio as Piper synthesized
    synthesized = sum(f.duration for _, _, f in timeline.of(TTSAudioFrame, Direction.DOWNSTREAM))
    loud = _voiced_seconds(reply_audio, room_rate=16000)
    assert synthesized > 2.0
    assert loud > 0.5 * synthesized, (loud, synthesized)
    heard = [f for _, n, f in timeline.of(PlaybackFrame, Direction.UPSTREAM) if n == "speaker"]
    assert heard and heard[-1].finished and heard[-1].text == REPLY
    speaking = [f.speaking for _, n, f in timeline.of(BotSpeakingFrame, Direction.UPSTREAM) if n == "speaker"]
    assert speaking == [True, False]


def _voiced_seconds(pcm: np.ndarray, room_rate: int, block_s: float = 0.02, level: float = 0.01) -> float:
    block = int(room_rate * block_s)
    usable = len(pcm) // block * block
    if usable == 0:
        return 0.0
    blocks = pcm[:usable].reshape(-1, block)
    return float((np.sqrt(np.mean(blocks**2, axis=1)) > level).sum() * block_s)


async def test_echo_guard_keeps_the_assistant_from_answering_itself(room, whisper_dir, piper_model, monkeypatch):
    # the speaker plays into the same sink the microphone records: every word of the reply comes back into the mic
    monkeypatch.setenv("PULSE_SINK", "user")
    llm = FakeLLM(FakeLLMConfig(reply=REPLY), name="llm")
    pipeline = live_pipeline(stages(whisper_dir, piper_model, llm), mode="echo-guard")
    mic_input = room.record("user.monitor")

    async def script(timeline, collector):
        room.play(question("What is the capital of France?"), SAMPLE_RATE, "user")
        await wait_for(lambda: ended_turns(collector), 90, "the end of the first turn")
        await asyncio.sleep(3.0)  # long enough for the echo to have become a second turn

    timeline, collector = await converse(pipeline, script)
    looped = mic_input.stop()
    assert rms(looped) > 0.01  # the reply did reach the microphone
    said = transcripts(timeline)
    assert len(said) == 1, [t.text for t in said]
    assert len(ended_turns(collector)) == 1
    assert bot_started(timeline)
    assert not timeline.of(InterruptionFrame)
