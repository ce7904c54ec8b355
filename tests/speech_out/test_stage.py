"""The TTS stage with real engines: round trip through Whisper, streaming order, interruption, blocks and positions."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import jiwer
import numpy as np
import pytest

from voicepipe.frames import (
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    TextChunkFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Sink, Source
from voicepipe.testing.harness import run_pipeline, run_stage
from voicepipe.tts.normalize import normalize_text
from voicepipe.tts.stage import WARM_UP_TEXT, TTSConfig, TTSStage

from .conftest import RecordingEngine, transcribe, words

NO_WARM_UP = TTSConfig(warm_up=False)  # tests that watch every synthesize call from the first one
SENTENCES = [
    "The weather is nice today, so we can walk to the park.",
    "Please turn off the lights in the kitchen before you leave.",
    "My brother bought a new car last week.",
    "Can you tell me how to get to the train station?",
    "I would like a cup of coffee with milk.",
]


def audio_frames(frames: list[Frame], turn_id: int | None = None) -> list[TTSAudioFrame]:
    return [f for f in frames if isinstance(f, TTSAudioFrame) and (turn_id is None or f.turn_id == turn_id)]


@pytest.mark.slow
async def test_round_trip_through_whisper(engine, whisper) -> None:
    """Each sentence, synthesized chunk by chunk and resampled to 16 kHz, is understood by Whisper (WER <= 10%)."""
    stage = TTSStage(TTSStage.Config(sample_rate=16_000), engine=engine)
    chunks = [TextChunkFrame(text=s, index=i, turn_id=1) for i, s in enumerate(SENTENCES)]
    out = await run_stage(stage, [*chunks, LLMResponseEndFrame(turn_id=1)])

    blocks = audio_frames(out)
    assert isinstance(out[-1], LLMResponseEndFrame), "the response end must follow the turn's last audio"
    assert {b.sample_rate for b in blocks} == {16_000}
    hypotheses = []
    for i, sentence in enumerate(SENTENCES):
        mine = [b for b in blocks if b.chunk_index == i]
        assert mine and all(b.chunk_text == sentence for b in mine)
        # blocks of 160 ms; the last is the tail, 80 to 240 ms (a tail under half a block joins the one before)
        assert all(abs(b.duration - 0.16) < 1e-3 for b in mine[:-1])
        assert 0.08 - 1e-3 <= mine[-1].duration < 0.24 + 1e-3
        # char spans tile the chunk text in order
        assert mine[0].char_start == 0 and mine[-1].char_end == len(sentence)
        assert all(a.char_end == b.char_start for a, b in zip(mine, mine[1:], strict=False))
        assert all(b.char_start <= b.char_end for b in mine)
        pcm = np.concatenate([b.pcm for b in mine])
        assert pcm.dtype == np.float32 and np.abs(pcm).max() <= 1.0
        hypotheses.append(words(transcribe(whisper, pcm)))
    wer = jiwer.wer([words(s) for s in SENTENCES], hypotheses)
    assert wer <= 0.10, f"WER {wer:.2%}: {hypotheses}"


REPLY = (
    "Sure, I can help you with that today. The museum opens at nine in the morning on weekdays. "
    "Tickets can be bought online or at the front desk."
)


async def test_first_audio_leaves_before_the_second_chunk_is_synthesized(engine) -> None:
    """LLM tokens -> chunker -> TTS: the first block is out before synthesis of the second chunk even starts."""
    from voicepipe.text.stage import SentenceChunkerStage

    spy = RecordingEngine(engine)
    tokens = [LLMTokenFrame(text=REPLY[i : i + 7], turn_id=1) for i in range(0, len(REPLY), 7)]
    out = await run_pipeline(
        [SentenceChunkerStage(), TTSStage(NO_WARM_UP, engine=spy)],
        [*tokens, LLMResponseEndFrame(text=REPLY, turn_id=1)],
    )
    blocks = audio_frames(out)
    assert len(spy.calls) >= 3, [c.text for c in spy.calls]
    assert blocks[0].chunk_index == 0
    assert blocks[0].timestamp < spy.calls[1].started
    assert sorted({b.chunk_index for b in blocks}) == list(range(len(spy.calls)))
    assert isinstance(out[-1], LLMResponseEndFrame)
    # only the first chunk is the critical path (the LLM waits while it is synthesized)
    assert [c.critical for c in spy.calls] == [True] + [False] * (len(spy.calls) - 1)
    assert len(spy.calls[0].text.split()) <= 8  # the first chunk is a few words: "Sure, I can help you"


async def test_setup_speaks_a_warm_up_phrase_that_is_never_sent(engine) -> None:
    spy = RecordingEngine(engine)
    out = await run_pipeline([TTSStage(engine=spy)], [TextChunkFrame(text="Hello there.", index=0, turn_id=1)])
    assert [c.text for c in spy.calls] == [normalize_text(WARM_UP_TEXT, "en-us"), "Hello there."]
    assert {f.chunk_text for f in audio_frames(out)} == {"Hello there."}


LONG = (
    "This is a rather long sentence that keeps going for quite a while, because it has to give the engine "
    "plenty of work, so that the interruption certainly arrives while the words are still being synthesized "
    "and long before the speaker could have played them to the person who is listening"
)


class _InterruptWhileSynthesizing(Source):
    """Sends a long chunk, waits until the real engine is busy with it, then barges in and starts turn 2."""

    def __init__(self, busy: threading.Event) -> None:
        super().__init__(name="interrupter")
        self.busy = busy

    async def frames(self) -> AsyncIterator[Frame]:
        yield TextChunkFrame(text=LONG, index=0, turn_id=1)
        if not await asyncio.to_thread(self.busy.wait, 60):
            raise RuntimeError("the engine never started")
        await asyncio.sleep(0.02)
        yield InterruptionFrame(turn_id=2)
        yield TextChunkFrame(text="Okay, go ahead.", index=0, turn_id=2)
        yield TextChunkFrame(text=LONG, index=1, turn_id=1)  # late text of the interrupted reply


async def test_interruption_mid_sentence_aborts_synthesis(engine) -> None:
    spy = RecordingEngine(engine)
    out = await run_pipeline([_InterruptWhileSynthesizing(spy.started), TTSStage(NO_WARM_UP, engine=spy)])
    cut = next(i for i, f in enumerate(out) if isinstance(f, InterruptionFrame))
    late = audio_frames(out[cut:], turn_id=1)
    assert sum(b.duration for b in late) <= 0.05, "audio of the interrupted turn after the interruption"
    assert spy.calls[0].outcome == "SynthesisCancelled", "the running synthesis was not aborted"
    assert [c.text for c in spy.calls[1:]] == ["Okay, go ahead."], "late chunks of turn 1 must be dropped"
    assert audio_frames(out, turn_id=2), "the next turn is spoken normally"
    assert not [f for f in out if isinstance(f, ErrorFrame)]


class _ResumeAnotherTurn(Source):
    """Turn 1's reply is being synthesized when the VAD withdraws turn 2 alone (the user went on after it ended)."""

    def __init__(self, busy: threading.Event) -> None:
        super().__init__(name="resumer")
        self.busy = busy

    async def frames(self) -> AsyncIterator[Frame]:
        yield TextChunkFrame(text=SENTENCES[0], index=0, turn_id=1)
        if not await asyncio.to_thread(self.busy.wait, 60):
            raise RuntimeError("the engine never started")
        yield InterruptionFrame(turn_id=2, turn_only=True)
        yield TextChunkFrame(text="A reply to the fragment.", index=0, turn_id=2)  # late: dropped
        yield TextChunkFrame(text=SENTENCES[1], index=1, turn_id=1)


async def test_a_turn_only_interruption_leaves_another_turns_speech_alone(piper_engine) -> None:
    spy = RecordingEngine(piper_engine)
    out = await run_pipeline([_ResumeAnotherTurn(spy.started), TTSStage(NO_WARM_UP, engine=spy)])
    assert [(c.text, c.outcome) for c in spy.calls] == [(SENTENCES[0], "done"), (SENTENCES[1], "done")]
    assert {f.chunk_index for f in audio_frames(out, turn_id=1)} == {0, 1} and not audio_frames(out, turn_id=2)


class _RealTimeSpeaker(Sink):
    """Consumes audio at playback speed, in 10 ms steps, and logs when each step "played".

    There is no sound card here, so this stands in for the speaker; it paces like one (the pipeline cancels the
    block in flight on an interruption, as it would a real sink's write).
    """

    def __init__(self) -> None:
        super().__init__(name="speaker")
        self.played: list[tuple[float, int, float]] = []  # (monotonic time, turn, seconds)
        self.interrupted_at: float | None = None
        self.first_audio = asyncio.Event()

    async def process(self, frame: Frame) -> None:
        loop = asyncio.get_running_loop()
        if isinstance(frame, InterruptionFrame):
            self.interrupted_at = frame.timestamp  # when the barge-in was detected (loop.time() is monotonic too)
        elif isinstance(frame, TTSAudioFrame):
            self.first_audio.set()
            remaining = frame.duration
            while remaining > 1e-9:
                step = min(0.01, remaining)
                await asyncio.sleep(step)
                self.played.append((loop.time(), frame.turn_id, step))
                remaining -= step
        await self.push(frame)


class _InterruptWhilePlaying(Source):
    def __init__(self, speaker: _RealTimeSpeaker) -> None:
        super().__init__(name="interrupter")
        self.speaker = speaker

    async def frames(self) -> AsyncIterator[Frame]:
        yield TextChunkFrame(text=SENTENCES[0], index=0, turn_id=1)
        yield TextChunkFrame(text=SENTENCES[1], index=1, turn_id=1)
        await asyncio.wait_for(self.speaker.first_audio.wait(), 60)
        await asyncio.sleep(0.5)
        yield InterruptionFrame(turn_id=2)


async def test_interruption_while_speaking_stops_audio_within_50ms(piper_engine) -> None:
    speaker = _RealTimeSpeaker()
    await run_pipeline([_InterruptWhilePlaying(speaker), TTSStage(engine=piper_engine), speaker])
    assert speaker.interrupted_at is not None
    before = sum(s for t, _, s in speaker.played if t <= speaker.interrupted_at)
    after = sum(s for t, _, s in speaker.played if t > speaker.interrupted_at)
    assert before >= 0.1, "the reply should have been playing when the user barged in"
    assert after <= 0.05, f"{after * 1000:.0f} ms of audio played after the interruption"


@pytest.mark.parametrize("total", [1, 100, 2_400, 3_839, 3_841, 24_000])
@pytest.mark.parametrize("text", ["a", "Hi.", "The weather is nice today."])
def test_block_spans_tile_the_chunk(total: int, text: str) -> None:
    from voicepipe.tts.stage import _blocks, _char_span

    blocks = _blocks(total, 3_840)  # 160 ms at 24 kHz
    assert blocks[0][0] == 0 and blocks[-1][1] == total
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:], strict=False))
    assert all(end - start < 1.5 * 3_840 for start, end in blocks)
    spans = [_char_span(text, start, end, total) for start, end in blocks]
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))
    assert all(end >= 1 for _, end in spans), "char_end 0 means 'whole chunk' to the sinks"


@pytest.mark.parametrize("engine_name", ["kokoro", "piper"])
async def test_speed_setting_changes_the_pace(engine_name: str, kokoro_files, piper_model) -> None:
    model, voices = kokoro_files
    files = {"model": piper_model} if engine_name == "piper" else {"model": model, "voices": voices, "voice": "jm_kumo"}
    lengths = {}
    for speed in (1.0, 1.5):
        stage = TTSStage(TTSStage.Config(engine=engine_name, speed=speed, **files))
        out = await run_stage(stage, [TextChunkFrame(text="One, two, three, four, five.", turn_id=1)])
        lengths[speed] = sum(f.duration for f in audio_frames(out))
    assert 0.5 < lengths[1.5] / lengths[1.0] < 0.85, lengths


async def test_heard_text_reported_by_the_sink_is_the_reply(piper_engine, tmp_path) -> None:
    """chunker -> TTS -> WAV sink: the chunk/char positions let the sink report the spoken reply as heard."""
    from voicepipe.audio.wav import WavSink
    from voicepipe.frames import PlaybackFrame
    from voicepipe.testing.harness import run_pipeline_collect
    from voicepipe.text.stage import SentenceChunkerStage

    sink = WavSink(WavSink.Config(path=str(tmp_path / "reply.wav")))
    collector, _ = await run_pipeline_collect(
        [SentenceChunkerStage(), TTSStage(engine=piper_engine), sink],
        [LLMTokenFrame(text=REPLY, turn_id=1), LLMResponseEndFrame(text=REPLY, turn_id=1)],
    )
    reports = [f for _, f in collector.upstream if isinstance(f, PlaybackFrame) and f.finished]
    assert reports and reports[-1].text == REPLY
