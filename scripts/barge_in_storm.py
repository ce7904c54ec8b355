"""Barge-in storm: a user who interrupts the assistant over and over, on real audio devices.

A private PulseAudio server with two null sinks (``voicepipe.testing.pulse``) stands in for the sound card: the
"user" speaks questions (Piper's joe voice) into sink ``user``, whose monitor is the pipeline's microphone; the
pipeline answers on sink ``bot``. The pipeline is the live one: mic -> turn-taking (barge-in) -> webrtcvad -> Whisper
tiny.en -> the real Qwen2.5-Coder-0.5B-Instruct on llama.cpp -> chunker -> Piper -> speaker.

The user asks a question, waits until the reply is playing, then (no sooner than ``60 / --per-minute`` seconds after
the last question) talks over it with the next question: an interruption. Checked at the end, after the last reply:

- no lost turn: every question became one final transcript, and every turn ended out of the speaker;
- no stuck "speaking" state: the speaker's last report is "stopped", turn-taking and the live view say listening;
- history consistent: user and assistant alternate, every assistant message is what was heard of a reply (a
  prefix of what the LLM generated for it), and the last user message is the last question heard.

The exit status is 1 when a check fails. The full storm (20 interruptions a minute for 10 minutes):

    .venv/bin/python scripts/barge_in_storm.py --minutes 10 --per-minute 20 --json storm.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

QUESTIONS = [
    "Tell me about the history of Paris.",
    "Wait, tell me about Berlin instead.",
    "Actually, how do volcanoes work?",
    "No, explain how a bicycle works.",
    "Tell me a long story about a dragon.",
    "Stop, what is the biggest ocean?",
    "Describe how bread is made.",
    "Hold on, why do cats purr?",
]


def build(args: argparse.Namespace, observers: list):
    from tests.support.whisper_assets import whisper_tiny_en_dir
    from voicepipe.asr.stage import ASRConfig, ASRStage
    from voicepipe.audio.device import MicConfig, MicSource, SpeakerConfig, SpeakerSink
    from voicepipe.llm.stage import LLMConfig, LLMStage
    from voicepipe.pipeline import build_pipeline
    from voicepipe.text.stage import SentenceChunkerStage
    from voicepipe.tts.stage import TTSConfig, TTSStage
    from voicepipe.vad.stage import VADConfig, VADStage
    from voicepipe.vad.turn_taking import TurnTaking, TurnTakingConfig

    llm = LLMConfig(
        engine="llamacpp",
        model=args.model,
        temperature=0,
        max_tokens=args.max_tokens,
        system_prompt="You are a helpful voice assistant. Answer in three or four spoken sentences.",
        n_ctx=4096,
    )
    stages = [
        MicSource(MicConfig(device="pulse"), name="mic"),
        TurnTaking(TurnTakingConfig(mode="barge-in"), name="turn-taking"),
        VADStage(VADConfig(), name="vad"),
        ASRStage(ASRConfig(model=str(whisper_tiny_en_dir())), name="asr"),
        LLMStage(llm, name="llm"),
        SentenceChunkerStage(name="chunker"),
        TTSStage(TTSConfig(engine="piper", model=args.piper), name="tts"),
        SpeakerSink(SpeakerConfig(device="pulse"), name="speaker"),
    ]
    return build_pipeline(stages, observers=observers)


class Log:
    """Observer: what happened, for the checks (each frame is seen once, where it was produced)."""

    def __init__(self) -> None:
        from voicepipe.cli.view import ConversationState

        self.view = ConversationState()
        self.transcripts: list[tuple[int, str]] = []
        self.generated: dict[int, str] = {}
        self.speaking: list[tuple[float, int, bool]] = []
        self.interruptions: list[tuple[float, int]] = []
        self.resumed: list[int] = []  # turns the end-of-turn model ended early, resumed by the user
        self.ended: dict[int, bool] = {}
        self.errors: list[str] = []

    def on_frame(self, frame, source, direction) -> None:
        from voicepipe.frames import (
            BotSpeakingFrame,
            EndOfTurnFrame,
            ErrorFrame,
            InterruptionFrame,
            LLMTokenFrame,
            SpeculationDiscardFrame,
            TranscriptFrame,
        )

        self.view.on_frame(frame, source, direction)
        if isinstance(frame, TranscriptFrame) and frame.final:
            self.transcripts.append((frame.turn_id, frame.text))
        elif isinstance(frame, LLMTokenFrame):  # an interrupted reply never gets its LLMResponseEndFrame
            self.generated[frame.turn_id] = self.generated.get(frame.turn_id, "") + frame.text
        elif isinstance(frame, SpeculationDiscardFrame):  # a reply started at a pause, dropped: not this turn's
            self.generated.pop(frame.turn_id, None)
        elif isinstance(frame, BotSpeakingFrame):
            self.speaking.append((time.monotonic(), frame.turn_id, frame.speaking))
        elif isinstance(frame, InterruptionFrame) and frame.turn_only:
            self.resumed.append(frame.turn_id)  # the VAD ended a turn too early and the user went on: no barge-in
            # its words belong to the turn that goes on: the question is transcribed (and answered) there
            self.transcripts = [(turn, text) for turn, text in self.transcripts if turn != frame.turn_id]
        elif isinstance(frame, InterruptionFrame):
            self.interruptions.append((time.monotonic(), frame.turn_id))
        elif isinstance(frame, EndOfTurnFrame):
            self.ended[frame.turn_id] = frame.interrupted
        elif isinstance(frame, ErrorFrame):
            self.errors.append(frame.message)

    def speaking_since(self, turn: int) -> float | None:
        for t, turn_id, speaking in self.speaking:
            if turn_id == turn and speaking:
                return t
        return None


async def wait_for(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


async def storm(args: argparse.Namespace, room) -> dict[str, Any]:
    from tests.support.speech import SAMPLE_RATE, pad, piper

    voices = {q: pad(piper(q, args.piper), lead=0.2, trail=0.3) for q in QUESTIONS}
    log = Log()
    built = build(args, [log])
    pipeline = built.pipeline
    await built.setup()
    run = asyncio.create_task(built.run(setup=False))
    asked: list[str] = []
    stalls: list[str] = []
    period = 60.0 / args.per_minute
    started = time.monotonic()
    try:
        last_asked = 0.0
        while True:
            question = QUESTIONS[len(asked) % len(QUESTIONS)]
            room.play(voices[question], SAMPLE_RATE, "user")
            asked.append(question)
            last_asked = time.monotonic()
            count = len(asked)
            if not await wait_for(lambda: len(log.transcripts) >= count, 60):  # noqa: B023
                stalls.append(f"question {count} was never transcribed")
                break

            # the last transcript's turn, looked up again on each check: a turn ended early and resumed by the user
            # (the rest of the question after a pause) gives way to the turn that goes on, which gets the reply
            def replying(count: int = count) -> bool:
                return len(log.transcripts) >= count and log.speaking_since(log.transcripts[-1][0]) is not None

            if not await wait_for(replying, 120):
                stalls.append(f"the reply to question {count} never started playing")
                break
            turn = log.transcripts[-1][0]
            done = (
                len(asked) > args.interruptions
                if args.interruptions
                else time.monotonic() - started > args.minutes * 60
            )
            if done:
                break
            # talk over the reply: into it by --into-reply seconds, and not sooner than the storm's period
            into = log.speaking_since(turn) + args.into_reply
            await asyncio.sleep(max(0.0, into - time.monotonic(), last_asked + period - time.monotonic()))
        last_turn = log.transcripts[-1][0] if log.transcripts else 0
        if not await wait_for(lambda: last_turn in log.ended, 180):
            stalls.append("the last reply never ended")
        await asyncio.sleep(1.0)  # the speaker's last report, the echo tail
        elapsed = time.monotonic() - started
    finally:
        run.cancel()
        await asyncio.gather(run, return_exceptions=True)
    return report(args, pipeline, log, asked, stalls, elapsed)


def _words(text: str) -> str:
    return " ".join(text.split())


def report(args, pipeline, log: Log, asked: list[str], stalls: list[str], elapsed: float) -> dict[str, Any]:
    history = pipeline.stage("llm").history
    turns = [turn for turn, _ in log.transcripts]
    failures = list(stalls)
    if len(log.transcripts) != len(asked):
        failures.append(f"{len(asked)} questions asked, {len(log.transcripts)} turns transcribed")
    lost = [turn for turn in turns if turn not in log.ended]
    if lost:
        failures.append(f"turns that never ended: {lost}")
    if log.speaking and log.speaking[-1][2]:
        failures.append(f"the speaker still reports speaking (turn {log.speaking[-1][1]})")
    if pipeline.stage("turn-taking").bot_speaking:
        failures.append("turn-taking still thinks the assistant is speaking")
    if log.view.state != "listening":
        failures.append(f"the live view is stuck in '{log.view.state}'")
    roles = [m.role for m in history]
    if any(a == b for a, b in zip(roles, roles[1:], strict=False)) or (roles and roles[0] != "user"):
        failures.append(f"history roles do not alternate: {roles}")
    replies = [_words(text) for text in log.generated.values()]
    unheard = [
        m.content
        for m in history
        if m.role == "assistant" and not any(r.startswith(_words(m.content)) for r in replies)
    ]
    if unheard:
        failures.append(f"assistant messages that are no prefix of a generated reply: {unheard[:2]}")
    users = [m.content for m in history if m.role == "user"]
    if log.transcripts and (not users or users[-1] != log.transcripts[-1][1].strip()):
        failures.append("the last question heard is not the last user message in history")
    if log.errors:
        failures.append(f"{len(log.errors)} stage errors, first: {log.errors[0]}")
    interrupted = sum(1 for turn in turns if log.ended.get(turn))
    return {
        "minutes": round(elapsed / 60, 2),
        "questions": len(asked),
        "turns": len(turns),
        "interruptions": len(log.interruptions),
        "turns_resumed_after_a_predicted_end": len(log.resumed),
        "interrupted_turns": interrupted,
        "interruptions_per_minute": round(len(log.interruptions) / (elapsed / 60), 1) if elapsed else 0.0,
        "history_messages": len(history),
        "errors": log.errors,
        "failures": failures,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long the storm lasts")
    parser.add_argument("--per-minute", type=float, default=20.0, help="interruptions a minute at most")
    parser.add_argument("--interruptions", type=int, help="stop after this many instead of after --minutes")
    parser.add_argument("--into-reply", type=float, default=0.8, help="seconds of reply heard before interrupting")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--model", help="chat GGUF (default: the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M)")
    parser.add_argument("--json", metavar="PATH", help="write the report here")
    args = parser.parse_args()
    if shutil.which("pulseaudio") is None or shutil.which("pacat") is None:
        print("needs pulseaudio and pulseaudio-utils (scripts/install_system_deps.sh)", file=sys.stderr)
        return 2
    from tests.support.tts_assets import piper_joe_model_path
    from voicepipe.testing.pulse import pulse_server, reinitialize_portaudio

    if args.model is None:
        from tests.support.llm_assets import qwen25_05b_gguf

        args.model = str(qwen25_05b_gguf())
    args.piper = str(piper_joe_model_path())
    with pulse_server(("user", "bot")) as room:
        if "sounddevice" in sys.modules:
            reinitialize_portaudio()
        tone = room.room_tone("user")
        try:
            result = asyncio.run(storm(args, room))
        finally:
            tone.terminate()
            tone.wait(timeout=5)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    for failure in result["failures"]:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
