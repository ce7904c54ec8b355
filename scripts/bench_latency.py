"""Voice-to-voice latency: spoken questions played in real time through the pipeline, one turn after another.

For each question the time from its last voiced sample to the first reply sample out of TTS, and its parts:
endpointing (last voiced sample -> the VAD's end of speech), ASR (-> final transcript), LLM first token, first text
chunk, TTS first audio. p50/p90 over the turns (the first turn is a warm-up and not counted).

The "user" is a scripted source: it sends silence in real time, speaks a question (espeak-ng, 16 kHz), and waits for
the reply to end before the next one, as a person would. Replies go to a WAV sink (no playback pacing).

    .venv/bin/python scripts/bench_latency.py --tts kokoro piper --turns 10 --json results.json

Each lever of the fast path can be switched off to measure its share (all on by default, as in pipeline.yaml):
``--smart-turn off`` (end of turn by the hangover only), ``--first-words off`` (no word cap on the first chunk),
``--tts-warm-up off``, ``--core-priority off`` (the LLM decodes while the first chunk is synthesized),
``--tts-threads 1``, ``--speculative off``. ``--frame-ms`` and ``--early-ms`` set the VAD's frame and the pause after
which Whisper starts on the words so far; each run counts those provisional segments (each a Whisper run) and how many
the user's next word voided.

Speculative replies (the LLM starts at the pause, held until the turn is confirmed) are on, as in the default
pipeline; ``--speculative off`` measures without them, for their share. ``transcript_to_audio`` is the wait after the
final transcript (what speculation shortens). A speculative turn reports no LLM-first-token, first-chunk or
TTS-first-audio parts (its reply began before its final transcript); voice to voice counts until the held audio is
released.

Models: faster-whisper tiny.en and Piper/Kokoro from the PyPI packages of the dev extra, and by default a real chat
model on llama.cpp (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, greedy), so first-token, first-clause and TTS timings come
from real replies of real length. ``--llm qwen35-shape`` runs the full-size random Qwen3.5-0.8B

(``voicepipe.testing.checkpoints``) as Q4_K_M GGUF instead, whose tokens carry the text of a scripted reply (see
``ScriptedTextChat``: random weights speak no words); ``--llm fake`` runs a scripted LLM; ``--gguf`` any chat GGUF.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use
import numpy as np

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.audio.wav import WavSink, WavSinkConfig
from voicepipe.frames import AudioFrame, EndOfTurnFrame, Frame, SpeechEndedFrame, SpeechResumedFrame, UserAudioFrame
from voicepipe.metrics import TurnMetrics
from voicepipe.pipeline import build_pipeline
from voicepipe.stage import Direction, Source, Stage

QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "Can you tell me a joke?",
    "How do I boil an egg?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "What is the square root of sixteen?",
    "Can you recommend a good book?",
    "Why is the sky blue?",
    "How do you say hello in Spanish?",
    "What should I cook for dinner tonight?",
    "How long does it take to walk a mile?",
    "What is the tallest mountain in the world?",
    "Tell me something about elephants.",
    "What year did the first moon landing happen?",
]
LLM_NAMES = {
    "real": "qwen2.5-coder-0.5b-instruct q4_k_m (real text)",
    "qwen35-shape": "qwen3.5-0.8b-random q4_k_m (scripted text)",
    "fake": "scripted fake LLM",
}
RATE = SPEECH_SAMPLE_RATE
BLOCK = RATE // 50  # 20 ms, as a microphone delivers


class ScriptedUser(Source):
    """Speaks each question in real time, then sends silence until the reply has ended (plus ``gap_s``)."""

    def __init__(self, questions: list[np.ndarray], turn_ended: asyncio.Event, gap_s: float = 0.6) -> None:
        super().__init__(name="user")
        self.questions = questions
        self.turn_ended = turn_ended
        self.gap_s = gap_s
        self.voice_end: list[float] = []  # arrival time of each question's last voiced sample

    async def frames(self) -> AsyncIterator[Frame]:
        start = time.monotonic()
        sent = 0
        silence = np.zeros(BLOCK, dtype=np.float32)

        async def block(pcm: np.ndarray) -> AudioFrame:
            nonlocal sent
            sent += len(pcm)
            delay = start + sent / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            return AudioFrame(pcm=pcm, sample_rate=RATE)

        for _ in range(int(1.0 * RATE / BLOCK)):
            yield await block(silence)
        for question in self.questions:
            self.turn_ended.clear()
            last_voiced = int(np.flatnonzero(np.abs(question) > 0.01)[-1])
            for offset in range(0, len(question), BLOCK):
                frame = await block(question[offset : offset + BLOCK])
                if offset <= last_voiced < offset + BLOCK:
                    self.voice_end.append(frame.timestamp)
                yield frame
            while not self.turn_ended.is_set():
                yield await block(silence)
            for _ in range(int(self.gap_s * RATE / BLOCK)):
                yield await block(silence)


class TurnWatcher:
    """Observer: when the VAD ended each turn, when each reply ended, and how many provisional segments (each one a
    Whisper run) the VAD sent per turn and how many of them the user's next word voided."""

    def __init__(self, turn_ended: asyncio.Event) -> None:
        self.turn_ended = turn_ended
        self.speech_end_seen: dict[int, float] = {}
        self.end_predicted: dict[int, bool] = {}  # the end-of-turn model ended the turn at the pause
        self.provisional: dict[int, int] = {}
        self.resumed: dict[int, int] = {}

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM:
            return
        if isinstance(frame, UserAudioFrame) and not frame.final:
            self.provisional[frame.turn_id] = self.provisional.get(frame.turn_id, 0) + 1
        elif isinstance(frame, SpeechResumedFrame):
            self.resumed[frame.turn_id] = self.resumed.get(frame.turn_id, 0) + 1
        elif isinstance(frame, SpeechEndedFrame):
            self.speech_end_seen.setdefault(frame.turn_id, time.monotonic())
            self.end_predicted.setdefault(frame.turn_id, frame.predicted)
        elif isinstance(frame, EndOfTurnFrame):
            self.turn_ended.set()


def build_stages(args: argparse.Namespace, tts: str, out_wav: Path) -> list[Stage]:
    from tests.support.whisper_assets import whisper_tiny_en_dir
    from voicepipe.asr.stage import ASRConfig, ASRStage
    from voicepipe.text.stage import SentenceChunkerStage
    from voicepipe.tts.stage import TTSConfig, TTSStage
    from voicepipe.vad.stage import VADConfig, VADStage

    if tts == "kokoro":
        from tests.support.tts_assets import kokoro_model_path, kokoro_voices_path

        files = {"model": str(kokoro_model_path()), "voices": str(kokoro_voices_path())}
    else:
        from tests.support.tts_assets import piper_joe_model_path

        files = {"model": str(piper_joe_model_path())}
    levers = {"warm_up": args.tts_warm_up == "on", "first_chunk_priority": args.core_priority == "on"}
    if args.tts_threads is not None:
        levers["threads"] = args.tts_threads
    if args.release_arena is not None:
        levers["release_arena"] = args.release_arena == "on"
    tts_config = TTSConfig(engine=tts, **files, **levers)
    end_of_turn = "smart-turn" if args.smart_turn == "on" else "hangover"
    chunker = {} if args.first_words is None else {"first_max_words": _first_words(args.first_words)}
    vad = {} if args.pause_ms is None else {"pause_ms": args.pause_ms}
    if args.early_ms is not None:
        vad["early_ms"] = args.early_ms
    if args.frame_ms is not None:
        vad["frame_ms"] = args.frame_ms
    return [
        VADStage(VADConfig(hangover_ms=args.hangover_ms, end_of_turn=end_of_turn, **vad), name="vad"),
        ASRStage(ASRConfig(model=str(whisper_tiny_en_dir())), name="asr"),
        build_llm(args),
        SentenceChunkerStage(SentenceChunkerStage.Config(**chunker), name="chunker"),
        TTSStage(tts_config, name="tts"),
        WavSink(WavSinkConfig(path=str(out_wav)), name="sink"),
    ]


def build_llm(args: argparse.Namespace) -> Stage:
    if args.llm == "fake":
        from voicepipe.testing.fakes import FakeLLM, FakeLLMConfig

        return FakeLLM(FakeLLMConfig(reply="Sure. Here is a short answer to that.", token_delay_ms=35), name="llm")
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat
    from voicepipe.llm.stage import LLMConfig, LLMStage

    config = LLMConfig(
        engine="llamacpp",
        max_tokens=args.max_tokens,
        disable_thinking=True,
        seed=0,
        temperature=0.0,
        speculative=args.speculative == "on",
    )
    threads = {} if args.llm_shared_threads is None else {"shared_threads": _threads(args.llm_shared_threads)}
    if args.llm == "real":
        source = args.gguf or str(_real_chat_gguf())
        model = Qwen35LlamaCppChat.from_pretrained(source, n_ctx=4096, load=False, progress=False, **threads)
        return LLMStage(config, name="llm", model=model)
    source = args.gguf or str(_full_size_gguf())
    model = Qwen35LlamaCppChat.from_pretrained(source, n_ctx=4096, load=False, progress=False, **threads)
    return LLMStage(config, name="llm", model=ScriptedTextChat(model, REPLIES))


def _first_words(value: str) -> int | None:
    return None if value == "off" else int(value)


def _threads(value: str) -> int | None:
    return None if value == "none" else int(value)


class ScriptedTextChat:
    """Benchmark only: the real engine computes every token (same prefill, decode and prompt cache), but the text of
    each token comes from a scripted English reply in the same tokenizer.

    Random weights give no speakable text (the full-size random Qwen3.5 emits "\n\n" forever), and the chunker and
    TTS need real sentences for their timings to mean anything. Each generation step of the engine yields the next
    token of the script; the reply ends with the script (or at max_tokens).
    """

    def __init__(self, model: Any, replies: list[str]) -> None:
        self._model = model
        self._replies = replies
        self._pieces: list[list[str]] = []
        self._turn = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def load(self) -> None:
        self._model.load()
        self._pieces = [[self._model.detokenize([t]) for t in self._model.tokenize(r)] for r in self._replies]

    async def agenerate_stream(self, messages: Any, sampling: Any = None) -> AsyncIterator[str]:
        from voicepipe.llm.sampling import ChatSamplingConfig

        pieces = self._pieces[self._turn % len(self._pieces)]
        self._turn += 1
        # the engine's own generation loop, one token per step on its thread (as ChatModel.agenerate_stream does)
        steps = self._model._reply_steps(list(messages), sampling or ChatSamplingConfig())
        done = object()
        try:
            for piece in pieces:
                if await self._model.arun(next, steps, done) is done:
                    break
                yield piece
        finally:
            await asyncio.shield(self._model.arun(steps.close))


REPLIES = [
    "The capital of France is Paris. It sits on the river Seine and is famous for its museums.",
    "The moon is about three hundred and eighty four thousand kilometres away, on average.",
    "Sure. Why did the scarecrow win an award? Because he was outstanding in his field.",
    "Put the egg in boiling water for about nine minutes, then cool it in cold water.",
    "William Shakespeare wrote Romeo and Juliet, in the late fifteen hundreds.",
    "A spider has eight legs. Insects, by comparison, have six.",
    "The square root of sixteen is four, because four times four is sixteen.",
    "Try The Hobbit by Tolkien. It is a short, warm adventure that most people enjoy.",
    "Sunlight scatters off the air, and blue light scatters the most, so the sky looks blue.",
    "In Spanish you say hola. For good morning, you can say buenos dias.",
    "How about a simple pasta with tomatoes, garlic and basil? It takes twenty minutes.",
    "Walking a mile takes most people about fifteen to twenty minutes.",
    "Mount Everest is the tallest mountain, at about eight thousand eight hundred metres.",
    "Elephants are the largest land animals. They live in family groups led by the oldest female.",
    "The first moon landing was in July nineteen sixty nine, with Apollo eleven.",
]


def _real_chat_gguf() -> Path:
    from tests.support.llm_assets import qwen25_05b_gguf

    return qwen25_05b_gguf()


def _full_size_gguf() -> Path:
    from voicepipe.convert.to_gguf import gguf_for_checkpoint
    from voicepipe.testing.checkpoints import full_size_checkpoint

    return gguf_for_checkpoint(full_size_checkpoint(), "q4_k_m")


async def run_once(args: argparse.Namespace, tts: str) -> dict[str, Any]:
    from tests.support import speech

    speak = speech.piper if args.voice == "piper" else speech.espeak
    questions = [speech.pad(speak(q), lead=0.0, trail=0.0) for q in QUESTIONS[: args.turns + 1]]
    turn_ended = asyncio.Event()
    user = ScriptedUser(questions, turn_ended)
    watcher = TurnWatcher(turn_ended)
    finished: list[TurnMetrics] = []
    peak_rss = 0
    with tempfile.TemporaryDirectory() as tmp:
        stages = [user, *build_stages(args, tts, Path(tmp) / "reply.wav")]
        run = build_pipeline(stages, on_turn=finished.append, observers=[watcher])
        t0 = time.monotonic()
        await run.setup()
        load_s = time.monotonic() - t0

        async def sample_rss() -> None:
            nonlocal peak_rss
            import psutil

            proc = psutil.Process()
            while True:
                peak_rss = max(peak_rss, proc.memory_info().rss)
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_rss())
        try:
            await asyncio.wait_for(run.run(setup=False), args.timeout)
        finally:
            sampler.cancel()
    turns = []
    for turn in sorted(finished, key=lambda t: t.turn_id):
        i = turn.turn_id - 1
        if i >= len(user.voice_end) or "first_audio" not in turn.times:
            turns.append(
                {
                    "turn": turn.turn_id,
                    "failed": True,
                    "errors": turn.errors,
                    "seen": sorted(turn.times),
                    "transcript": turn.transcript,
                    "reply": turn.reply[:80],
                }
            )
            continue
        voice_end = user.voice_end[i]
        t = turn.times
        row = {
            "turn": turn.turn_id,
            "question": QUESTIONS[i],
            "transcript": turn.transcript,
            "speculative": turn.speculative,
            "voice_to_voice_ms": (t["first_audio"] - voice_end) * 1000,
            "endpointing_ms": (watcher.speech_end_seen.get(turn.turn_id, t["transcript"]) - voice_end) * 1000,
            "asr_ms": (t["transcript"] - watcher.speech_end_seen.get(turn.turn_id, t["transcript"])) * 1000,
            "transcript_to_audio_ms": (t["first_audio"] - t["transcript"]) * 1000,
            "end_predicted": watcher.end_predicted.get(turn.turn_id),
            "provisional_segments": watcher.provisional.get(turn.turn_id, 0),
            "voided_segments": watcher.resumed.get(turn.turn_id, 0),
            "end_of_turn_probability": turn.values.get("end_of_turn_probability"),
            "end_of_turn_model_ms": (
                turn.values["end_of_turn_model_s"] * 1000 if "end_of_turn_model_s" in turn.values else None
            ),
            "reply": turn.reply[:80],
        }
        # a speculative turn's reply started before its final transcript: these parts do not apply to it
        for key, (a, b) in {
            "llm_first_token_ms": ("transcript", "first_token"),
            "first_chunk_ms": ("first_token", "first_chunk"),
            "tts_first_audio_ms": ("first_chunk", "first_audio"),
        }.items():
            if a in t and b in t:
                row[key] = (t[b] - t[a]) * 1000
        turns.append(row)
    counted = [r for r in turns if not r.get("failed")][1:]  # the first turn warms up caches
    keys = (
        "voice_to_voice_ms",
        "endpointing_ms",
        "asr_ms",
        "transcript_to_audio_ms",
        "llm_first_token_ms",
        "first_chunk_ms",
        "tts_first_audio_ms",
    )
    summary = {k: {"p50": _pct(counted, k, 50), "p90": _pct(counted, k, 90)} for k in keys}
    summary["provisional_segments"] = {"total": sum(r["provisional_segments"] for r in counted)}
    summary["voided_segments"] = {"total": sum(r["voided_segments"] for r in counted)}
    return {
        "tts": tts,
        "llm": args.gguf or LLM_NAMES[args.llm],
        "turns_counted": len(counted),
        "failed_turns": sum(1 for r in turns if r.get("failed")),
        "load_s": load_s,
        "peak_rss_mb": peak_rss / 2**20,
        "summary": summary,
        "turns": turns,
    }


def _pct(rows: list[dict[str, Any]], key: str, q: int) -> float | None:
    values = sorted(r[key] for r in rows if key in r)
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _markdown(results: list[dict[str, Any]]) -> str:
    keys = (
        "voice_to_voice_ms",
        "endpointing_ms",
        "asr_ms",
        "transcript_to_audio_ms",
        "llm_first_token_ms",
        "first_chunk_ms",
        "tts_first_audio_ms",
    )
    head = "| TTS | turns | " + " | ".join(k.removesuffix("_ms").replace("_", " ") for k in keys)
    head += " | provisional segments (voided) | peak RSS |"
    lines = [head, "|" + "---|" * (len(keys) + 4)]
    for r in results:
        cells = [
            f"{r['summary'][k]['p50']:.0f} / {r['summary'][k]['p90']:.0f}"
            if r["summary"][k]["p50"] is not None
            else "-"
            for k in keys
        ]
        segments = f"{r['summary']['provisional_segments']['total']} ({r['summary']['voided_segments']['total']})"
        lines.append(
            f"| {r['tts']} | {r['turns_counted']} | "
            + " | ".join(cells)
            + f" | {segments} | {r['peak_rss_mb']:.0f} MB |"
        )
    return "\n".join(lines) + "\n\n(p50 / p90 in ms)"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tts", nargs="+", choices=("kokoro", "piper"), default=["kokoro", "piper"])
    parser.add_argument("--turns", type=int, default=10, help="turns counted (one more is run first as a warm-up)")
    parser.add_argument(
        "--llm",
        choices=tuple(LLM_NAMES),
        default="real",
        help="real: a real chat model's replies (default); qwen35-shape: Qwen3.5-0.8B's shape with scripted text",
    )
    parser.add_argument("--gguf", help="GGUF file for --llm real or qwen35-shape (default: see --llm)")
    parser.add_argument("--max-tokens", type=int, default=96, help="reply length cap")
    parser.add_argument("--hangover-ms", type=int, default=500, help="VAD: silence that ends a turn")
    parser.add_argument(
        "--pause-ms", type=int, help="VAD: silence after which Smart Turn is asked (default: the stage's)"
    )
    parser.add_argument(
        "--early-ms", type=int, help="VAD: silence after which transcription starts (default: the stage's)"
    )
    parser.add_argument(
        "--frame-ms", type=int, choices=(10, 20, 30), help="webrtcvad frame length (default: the engine's)"
    )
    on_off = ("on", "off")
    parser.add_argument("--smart-turn", choices=on_off, default="on", help="VAD: Smart Turn ends finished sentences")
    parser.add_argument("--first-words", help="chunker: word cap of the first chunk, or 'off' (default: the stage's)")
    parser.add_argument("--tts-warm-up", choices=on_off, default="on", help="TTS: speak a phrase once at start-up")
    parser.add_argument("--core-priority", choices=on_off, default="on", help="the LLM waits during the first chunk")
    parser.add_argument("--tts-threads", type=int, help="TTS onnxruntime threads (default: the engine's)")
    parser.add_argument(
        "--release-arena",
        choices=on_off,
        help="TTS: hand onnxruntime's memory back after each sentence (default: the engine's)",
    )
    parser.add_argument(
        "--llm-shared-threads",
        help="llama.cpp decode threads while the TTS computes, or 'none' for all cores (default: the engine's)",
    )
    parser.add_argument("--voice", choices=("espeak", "piper"), default="espeak", help="who reads the questions")
    parser.add_argument(
        "--speculative",
        choices=on_off,
        default="on",
        help="LLM: start the reply at the pause, held until the turn ends",
    )
    parser.add_argument("--timeout", type=float, default=900)
    parser.add_argument("--json", metavar="OUT.json", help="write all turns and the summary here")
    args = parser.parse_args()
    if args.turns + 1 > len(QUESTIONS):
        parser.error(f"--turns: at most {len(QUESTIONS) - 1}")
    if args.first_words not in (None, "off") and not (args.first_words.isdigit() and int(args.first_words) >= 3):
        parser.error("--first-words: a number of words (3 or more) or 'off'")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load = os.getloadavg()
    results = []
    for tts in args.tts:
        print(f"running {args.turns + 1} turns with {tts} ...", file=sys.stderr, flush=True)
        results.append(asyncio.run(run_once(args, tts)))
        for row in results[-1]["turns"]:
            print(json.dumps({k: (round(v) if isinstance(v, float) else v) for k, v in row.items()}), file=sys.stderr)
    levers = (
        "smart_turn",
        "pause_ms",
        "early_ms",
        "frame_ms",
        "first_words",
        "tts_warm_up",
        "core_priority",
        "tts_threads",
        "release_arena",
        "llm_shared_threads",
        "voice",
    )
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "levers": {k: getattr(args, k) for k in levers},
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_before": load,
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(info))
    print(_markdown(results))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
