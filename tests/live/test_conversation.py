"""A spoken question into a real (PulseAudio) microphone, a spoken reply out of a real speaker device."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.support.speech import rms
from voicepipe.asr.stage import ASRConfig, ASRStage
from voicepipe.frames import (
    BotSpeakingFrame,
    InterruptionFrame,
    LLMResponseEndFrame,
    PlaybackFrame,
    TextChunkFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction
from voicepipe.text.stage import SentenceChunkerStage
from voicepipe.tts.stage import TTSConfig, TTSStage
from voicepipe.vad.stage import VADConfig, VADStage

from .scenario import (
    SAMPLE_RATE,
    bot_started,
    converse,
    ended_turns,
    live_pipeline,
    neural_question,
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


def voiced_seconds(pcm: np.ndarray, rate: int = SAMPLE_RATE, block_s: float = 0.02, level: float = 0.01) -> float:
    block = int(rate * block_s)
    usable = len(pcm) // block * block
    if usable == 0:
        return 0.0
    blocks = pcm[:usable].reshape(-1, block)
    return float((np.sqrt(np.mean(blocks**2, axis=1)) > level).sum() * block_s)


async def test_spoken_question_gets_one_spoken_true_reply(room, whisper_dir, piper_model, chat_gguf, listener):
    pipeline = live_pipeline(stages(whisper_dir, piper_model, real_llm(chat_gguf, max_tokens=40, temperature=0.0)))
    recording = room.record("bot.monitor")

    async def script(timeline, collector):
        room.play(neural_question("What is the capital of France?", piper_model), SAMPLE_RATE, "user")
        await wait_for(lambda: ended_turns(collector), 90, "the end of the first turn")
        await asyncio.sleep(1.5)  # a second turn would have started by now

    timeline, collector = await converse(pipeline, script)
    reply_audio = recording.stop()

    said = transcripts(timeline)
    assert len(said) == 1, [t.text for t in said]
    assert "capital" in said[0].text.lower() and "france" in said[0].text.lower(), said[
        0
    ].text  # tiny.en wording varies
    assert len(ended_turns(collector)) == 1 and not ended_turns(collector)[0].interrupted
    reply = [f for _, n, f in timeline.of(LLMResponseEndFrame) if n == "llm"][0].text
    assert "paris" in reply.lower(), reply
    # the reply really came out of the device: about as much loud audio as TTS synthesized, and it says the answer
    synthesized = sum(f.duration for _, n, f in timeline.of(TTSAudioFrame) if n == "tts")
    assert synthesized > 1.0, synthesized
    assert voiced_seconds(reply_audio) > 0.5 * synthesized, (voiced_seconds(reply_audio), synthesized)
    heard_from_device = listener(reply_audio)
    assert "paris" in heard_from_device.lower(), heard_from_device
    # heard in full: the final playback report holds every spoken chunk, and the LLM history keeps the whole reply
    chunks = [f.text.strip() for _, n, f in timeline.of(TextChunkFrame) if n == "chunker"]
    heard = [f for _, n, f in timeline.of(PlaybackFrame, Direction.UPSTREAM) if n == "speaker"]
    assert heard[-1].finished and heard[-1].text == " ".join(c for c in chunks if c)
    assert [m.role for m in pipeline.stage("llm").history] == ["user", "assistant"]
    assert pipeline.stage("llm").history[1].content == reply
    speaking = [f.speaking for _, n, f in timeline.of(BotSpeakingFrame, Direction.UPSTREAM) if n == "speaker"]
    assert speaking == [True, False]


@pytest.mark.parametrize("guarded", [True, False], ids=["echo-guard", "control-without-guard"])
async def test_echo_guard_keeps_the_assistant_from_answering_itself(
    room, whisper_dir, piper_model, chat_gguf, monkeypatch, guarded
):
    """The reply (a real model's, so intelligible) must reach the microphone; unguarded, Whisper hears it as a new
    turn (the control shows it does)."""
    monkeypatch.setenv("PULSE_SINK", "user")  # the speaker plays into the sink the microphone records
    llm = real_llm(chat_gguf, max_tokens=40, temperature=0.0)
    pipeline = live_pipeline(stages(whisper_dir, piper_model, llm), mode="echo-guard" if guarded else None)
    mic_input = room.record("user.monitor")

    async def script(timeline, collector):
        room.play(neural_question("What is the capital of France?", piper_model), SAMPLE_RATE, "user")
        await wait_for(lambda: ended_turns(collector), 90, "the end of the first turn")
        if guarded:
            await asyncio.sleep(3.0)  # long enough for the echo to have become a second turn
        else:
            await wait_for(lambda: len(transcripts(timeline)) >= 2, 30, "the echo to become a turn")

    timeline, collector = await converse(pipeline, script)
    looped = mic_input.stop()
    assert rms(looped) > 0.01  # the reply did reach the microphone
    assert bot_started(timeline)
    said = [t.text for t in transcripts(timeline)]
    if guarded:
        assert len(said) == 1, said
        assert len(ended_turns(collector)) == 1
        assert not timeline.of(InterruptionFrame)
    else:
        assert len(said) >= 2 and "paris" in said[1].lower(), said
