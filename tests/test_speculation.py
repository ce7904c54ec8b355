"""Speculative replies, the protocol: the LLM stage answers the provisional transcript at a pause, the gate before the
sink holds that reply until the final transcript confirms it, and drops it when the user goes on.

The chat model here is a scripted stand-in (``ScriptedChat``): these tests are about which frames reach the sink and
what the history keeps, which a real model would only make slow. ``tests/llm/test_speculation_real.py`` runs the
real 0.5B chat model through the same paths. No test sleeps: the source waits for events the pipeline produced.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence

from voicepipe.frames import (
    Frame,
    LLMResponseEndFrame,
    LLMTokenFrame,
    MetricsFrame,
    ReplyFrame,
    SpeculationConfirmFrame,
    SpeculationDiscardFrame,
    SpeculationStartFrame,
    SpeechResumedFrame,
    SpeechStartedFrame,
    TranscriptFrame,
    TTSAudioFrame,
)
from voicepipe.llm.base import ChatEngine, GenerationStats
from voicepipe.llm.chat_format import ChatMessage
from voicepipe.llm.stage import LLMConfig, LLMStage
from voicepipe.pipeline import VoicePipeline
from voicepipe.speculation import SpeculationGate
from voicepipe.stage import Direction, Stage
from voicepipe.testing.fakes import FakeTTS
from voicepipe.testing.harness import ListSource, run_pipeline
from voicepipe.text.stage import SentenceChunkerStage


class ScriptedChat(ChatEngine):
    """Answers "Reply to <last user message>, in a few words." word by word; counts its replies and rewinds.

    A scripted engine, so the speculation protocol is tested with exact, known replies (a real model's are not)."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[str] = []  # the user message each reply answered
        self.rewinds: list[list[ChatMessage]] = []
        self.finished = asyncio.Event()  # set whenever a reply has been streamed to its end
        self.last_stats = GenerationStats()

    @staticmethod
    def reply_to(question: str) -> str:
        return f"Reply to {question}, in a few words. That is all."

    def load(self) -> None: ...

    def unload(self) -> None: ...

    @property
    def is_loaded(self) -> bool:
        return True

    def generate_stream(self, messages: Sequence[ChatMessage], sampling: object = None) -> Iterator[str]:
        raise NotImplementedError("the stage streams asynchronously")

    async def agenerate_stream(self, messages: Sequence[ChatMessage], sampling: object) -> AsyncIterator[str]:
        question = messages[-1].content
        self.replies.append(question)
        for i, word in enumerate(self.reply_to(question).split(" ")):
            await asyncio.sleep(0)  # one event-loop turn per token, like a model on its own thread
            yield word if i == 0 else " " + word
        self.finished.set()

    def rewind(self, messages: Sequence[ChatMessage]) -> None:
        self.rewinds.append(list(messages))


def script(items: list) -> ListSource:
    """The scripted user: frames, and events that make it wait until the pipeline has set them."""
    return ListSource(items, name="script")


class Log:
    """Observer: every downstream frame as (producing stage's name, frame), in order (each is seen once, where it
    was produced)."""

    def __init__(self) -> None:
        self.pushes: list[tuple[str, Frame]] = []
        self.synthesized = asyncio.Event()  # the TTS has passed a whole reply on to the gate (set by ReplyEndProbe)

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is Direction.DOWNSTREAM:
            self.pushes.append((source.name if source else "", frame))


class ReplyEndProbe(Stage):
    """Between the TTS and the gate: sets ``event`` when a reply's end has passed the TTS (all its audio is out)."""

    def __init__(self, event: asyncio.Event) -> None:
        super().__init__(name="probe")
        self.event = event

    async def process(self, frame: Frame) -> None:
        await self.push(frame)
        if isinstance(frame, LLMResponseEndFrame):
            self.event.set()


def _stages(chat: ScriptedChat) -> list[Stage]:
    llm = LLMStage(LLMConfig(system_prompt=""), name="llm", model=chat)
    return [llm, SentenceChunkerStage(name="chunker"), FakeTTS(name="tts")]


async def _run(
    chat: ScriptedChat, items: list[Frame | asyncio.Event], log: Log | None = None
) -> tuple[LLMStage, Log, list[Frame]]:
    stages = _stages(chat)
    log = log or Log()
    pipeline = VoicePipeline([script(items), *stages, ReplyEndProbe(log.synthesized)], observers=[log])
    out: list[Frame] = []
    pipeline.on_output(out.append)
    await asyncio.wait_for(pipeline.run(), 60)
    return stages[0], log, out  # type: ignore[return-value]


def _spoken(out: list[Frame]) -> str:
    """The reply text the sink received as audio, chunk by chunk."""
    chunks: list[tuple[int, int, str]] = []
    for frame in out:
        key = (frame.turn_id, frame.chunk_index, frame.chunk_text) if isinstance(frame, TTSAudioFrame) else None
        if key is not None and (not chunks or chunks[-1] != key):
            chunks.append(key)
    return " ".join(text for _, _, text in chunks)


async def test_the_pipeline_puts_a_gate_before_the_sink_only_when_a_stage_speculates() -> None:
    chat = ScriptedChat()
    assert isinstance(VoicePipeline(_stages(chat)).stages[-1], SpeculationGate)
    off = LLMStage(LLMConfig(speculative=False), model=chat)
    assert not any(isinstance(s, SpeculationGate) for s in VoicePipeline([off]).stages)


async def test_a_confirmed_speculation_is_spoken_and_held_until_the_turn_is_confirmed() -> None:
    chat, log = ScriptedChat(), Log()
    question = "what time is it"
    llm, log, out = await _run(
        chat,
        [
            SpeechStartedFrame(turn_id=1),
            TranscriptFrame(text=question, final=False, turn_id=1),
            log.synthesized,  # the whole reply is generated and synthesized before the turn ends
            TranscriptFrame(text="What time is it?", turn_id=1),
        ],
        log,
    )
    reply = ScriptedChat.reply_to(question)
    assert chat.replies == [question]  # answered once, at the pause; the final transcript did not start another
    assert _spoken(out) == reply
    assert [f.text for f in out if isinstance(f, LLMResponseEndFrame)] == [reply]
    assert llm.history == [ChatMessage("user", question), ChatMessage("assistant", reply)]
    confirm = next(i for i, (_, f) in enumerate(log.pushes) if isinstance(f, SpeculationConfirmFrame))
    released = [i for i, (name, f) in enumerate(log.pushes) if name == "speculation-gate" and isinstance(f, ReplyFrame)]
    synthesized = [i for i, (name, f) in enumerate(log.pushes) if name == "tts" and isinstance(f, TTSAudioFrame)]
    assert synthesized and max(synthesized) < confirm  # the audio was ready before the turn ended ...
    assert released and min(released) > confirm  # ... but nothing reached the sink before the confirmation
    metrics = [f.values for f in out if isinstance(f, MetricsFrame) and "llm_speculative" in f.values]
    assert [m["llm_speculative"] for m in metrics] == [1.0]
    assert llm.discarded_speculations == 0


async def test_a_speculation_is_discarded_when_the_user_goes_on() -> None:
    chat = ScriptedChat()
    llm, log, out = await _run(
        chat,
        [
            SpeechStartedFrame(turn_id=1),
            TranscriptFrame(text="book a table", final=False, turn_id=1),
            chat.finished,  # its reply is complete and held
            SpeechResumedFrame(turn_id=1),  # ... but the user goes on
            TranscriptFrame(text="book a table for two at eight", turn_id=1),
        ],
    )
    final = ScriptedChat.reply_to("book a table for two at eight")
    assert chat.replies == ["book a table", "book a table for two at eight"]
    assert _spoken(out) == final  # no word of the discarded reply reached the sink
    assert [f.text for f in out if isinstance(f, LLMTokenFrame | LLMResponseEndFrame)][-1] == final
    assert "book a table," not in " ".join(f.text for f in out if isinstance(f, LLMTokenFrame))
    assert llm.history == [ChatMessage("user", "book a table for two at eight"), ChatMessage("assistant", final)]
    assert llm.discarded_speculations == 1
    assert chat.rewinds == [[]]  # the model was told to forget everything beyond the (empty) conversation
    assert any(isinstance(f, SpeculationDiscardFrame) for _, f in log.pushes)


async def test_a_speculation_is_discarded_when_the_final_transcript_differs() -> None:
    chat = ScriptedChat()
    llm, _, out = await _run(
        chat,
        [
            TranscriptFrame(text="Hello.", turn_id=1),  # a normal first turn
            SpeechStartedFrame(turn_id=2),
            TranscriptFrame(text="turn off the light", final=False, turn_id=2),
            TranscriptFrame(text="turn off the lights in the kitchen", turn_id=2),
        ],
    )
    first, second = ScriptedChat.reply_to("Hello."), ScriptedChat.reply_to("turn off the lights in the kitchen")
    assert _spoken(out) == f"{first} {second}"
    assert [m.content for m in llm.history] == ["Hello.", first, "turn off the lights in the kitchen", second]
    assert chat.rewinds == [[ChatMessage("user", "Hello."), ChatMessage("assistant", first)]]


async def test_the_gate_holds_releases_and_drops_by_speculation() -> None:
    """Whatever order the confirmation (system lane) takes against the markers, only the confirmed reply passes."""
    frames: list[Frame] = [
        SpeculationStartFrame(turn_id=1, speculation=1),
        LLMTokenFrame(text="old", turn_id=1),
        SpeechResumedFrame(turn_id=1),  # not a reply frame: passes while the reply is held
        SpeculationDiscardFrame(turn_id=1, speculation=1),
        SpeculationStartFrame(turn_id=1, speculation=2),
        LLMTokenFrame(text="new", turn_id=1),
        SpeculationConfirmFrame(turn_id=1, speculation=2),
        LLMTokenFrame(text="more", turn_id=1),
    ]
    out = await run_pipeline([SpeculationGate()], frames)
    assert [f.text for f in out if isinstance(f, LLMTokenFrame)] == ["new", "more"]
    assert [type(f) for f in out if not isinstance(f, LLMTokenFrame)] == [SpeechResumedFrame]


def test_the_live_view_shows_a_speculative_reply_only_once_its_turn_is_confirmed() -> None:
    from voicepipe.cli.view import ConversationState

    view = ConversationState()
    llm = Stage(name="llm")

    def see(*frames: Frame) -> None:
        for frame in frames:
            view.on_frame(frame, llm, Direction.DOWNSTREAM)

    see(
        SpeculationStartFrame(turn_id=1, speculation=1),
        LLMTokenFrame(text="Sure, a table", turn_id=1),
        SpeculationDiscardFrame(turn_id=1, speculation=1),
        SpeculationStartFrame(turn_id=1, speculation=2),
        LLMTokenFrame(text="Two people", turn_id=1),
    )
    assert view.reply == ""  # nothing is shown while the turn may still go on
    see(TranscriptFrame(text="book a table for two", turn_id=1), SpeculationConfirmFrame(turn_id=1, speculation=2))
    see(LLMTokenFrame(text=" at eight.", turn_id=1))
    assert view.reply == "Two people at eight."


def test_voice_to_voice_of_a_speculative_turn_counts_from_the_release_not_the_synthesis() -> None:
    """The audio was ready before the turn ended; what the user waits for is the moment the gate lets it out."""
    import numpy as np

    from voicepipe.frames import EndOfTurnFrame, SpeechEndedFrame
    from voicepipe.metrics import MetricsObserver

    now = [0.0]
    finished = []
    metrics = MetricsObserver(finished.append, clock=lambda: now[0])
    tts, gate, sink = Stage(name="tts"), SpeculationGate(), Stage(name="speaker")
    audio = TTSAudioFrame(pcm=np.zeros(160, dtype=np.float32), sample_rate=16000, turn_id=1)
    steps: list[tuple[float, Frame, Stage]] = [
        (0.0, SpeechEndedFrame(turn_id=1, speech_end_timestamp=0.05), Stage(name="vad")),
        (0.2, SpeculationStartFrame(turn_id=1, speculation=1), Stage(name="llm")),
        (0.3, LLMTokenFrame(text="Paris.", turn_id=1), Stage(name="llm")),
        (0.4, audio, tts),  # synthesized, held by the gate
        (0.5, TranscriptFrame(text="capital of France", turn_id=1), Stage(name="asr")),
        (0.5, SpeculationConfirmFrame(turn_id=1, speculation=1), Stage(name="llm")),
        (0.55, audio, gate),  # released
        (0.6, LLMResponseEndFrame(text="Paris.", turn_id=1), gate),
        (1.0, EndOfTurnFrame(turn_id=1), sink),
    ]
    for t, frame, source in steps:
        now[0] = t
        metrics.on_frame(frame, source, Direction.DOWNSTREAM)
    (turn,) = finished
    assert turn.speculative and turn.reply == "Paris."
    assert turn.latencies_ms()["voice_to_voice_ms"] == 500.0
    assert "llm_first_token_ms" not in turn.latencies_ms()  # the reply began before the transcript: no such part


async def test_a_turn_ended_too_early_is_forgotten_when_the_user_goes_on() -> None:
    """The end-of-turn model ended turn 1 at a pause and it was answered; the user went on, so the VAD starts turn 2
    with turn 1's audio in it (``resumes_turn``): the history holds turn 2 alone, and the model is rewound to it."""
    chat = ScriptedChat()
    items: list[Frame | asyncio.Event] = [
        SpeechStartedFrame(turn_id=1),
        TranscriptFrame(text="Book me a table", final=True, turn_id=1),
        chat.finished,
        SpeechStartedFrame(turn_id=2, resumes_turn=1),
        TranscriptFrame(text="Book me a table for two tonight", final=True, turn_id=2),
    ]
    llm, _, _ = await _run(chat, items)
    assert [(m.role, m.content) for m in llm.history] == [
        ("user", "Book me a table for two tonight"),
        ("assistant", ScriptedChat.reply_to("Book me a table for two tonight")),
    ]
    assert chat.rewinds and chat.rewinds[-1] == [], chat.rewinds  # the model forgot turn 1 before answering turn 2
