"""Benchmark end-of-turn prediction (Smart Turn v3 in the ``vad`` stage): its cost per call, and how often it ends a
turn early, on finished and unfinished utterances it was never tuned on.

Cost: ``SmartTurn.probability`` (features + ONNX run) on 2 s and 8 s of speech, per onnxruntime thread count.
Early ends: each utterance (read by Piper's joe voice and by espeak-ng), with 1.5 s of silence after it, goes through
the real ``VADStage`` with its defaults; a turn "ended early" when the model ended it at the pause
(``SpeechEndedFrame.predicted``) instead of the hangover. For finished utterances that is the gain (the share that
saves ``hangover_ms - pause_ms``); for unfinished ones it is the false end-of-turn rate (the user gets cut off).
The sentences below are held out: not used to choose anything (the threshold is the model's own 0.5).

    .venv/bin/python scripts/bench_end_of_turn.py                  # everything, prints a table and load average
    .venv/bin/python scripts/bench_end_of_turn.py --calls 5 --limit 2   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

COMPLETE = [
    "Set a timer for ten minutes.",
    "What is the tallest mountain in Europe?",
    "Can you recommend a good book about history?",
    "Turn the volume down a little.",
    "How do I make a cup of green tea?",
    "I need to buy milk and bread today.",
    "Who wrote the novel Pride and Prejudice?",
    "Play some relaxing music for me.",
    "Is it going to rain this weekend?",
    "Thank you, that was very helpful.",
    "Send a message to Anna saying I will be late.",
    "What does the word serendipity mean?",
]
INCOMPLETE = [
    "Can you remind me to",
    "I think the best way to do this would be",
    "What I really want to know is whether",
    "Could you tell me how many",
    "My sister lives in a town near the",
    "The reason I am asking is because",
    "I would like to order a pizza with",
    "If it is sunny tomorrow then maybe we could",
    "Tell me something about the history of",
    "I was going to ask you about",
    "Before we start, I need to",
    "The meeting is on Tuesday at",
]


def bench_cost(calls: int, threads: list[int]) -> None:
    import numpy as np

    from tests.support import speech
    from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
    from voicepipe.vad.smart_turn import SmartTurn

    clip = speech.piper(" ".join(COMPLETE[:6]))
    print(f"Smart Turn v3 cost per call ({calls} calls, median / p90):")
    for n in threads:
        model = SmartTurn(threads=n)
        model.load()
        for seconds in (2, 8):
            pcm = np.ascontiguousarray(clip[-seconds * SPEECH_SAMPLE_RATE :])
            features, total = [], []
            for _ in range(calls):
                start = time.perf_counter()
                model.features(pcm)
                features.append(time.perf_counter() - start)
                start = time.perf_counter()
                model.probability(pcm)
                total.append(time.perf_counter() - start)
            print(
                f"  threads={n} audio={seconds} s: total {_ms(total)}  (features alone {_ms(features)})",
                flush=True,
            )


def _ms(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return f"{statistics.median(values) * 1000:.0f} / {p90 * 1000:.0f} ms"


async def ended_early(pcm, vad: dict[str, int]) -> tuple[bool, float | None]:  # noqa: ANN001 - float32 16 kHz
    """``vad``: the stage settings that differ from its defaults."""
    from tests.support import speech
    from voicepipe.frames import SpeechEndedFrame
    from voicepipe.testing.harness import run_stage
    from voicepipe.vad.stage import VADConfig, VADStage

    config = VADConfig(**vad)
    out = await run_stage(VADStage(config), speech.audio_frames(speech.pad(pcm, 0.5, 1.5), start_timestamp=0.0))
    ends = [f for f in out if isinstance(f, SpeechEndedFrame)]
    # an utterance split into two turns at an inner pause also counts: the user was cut off there
    return any(f.predicted for f in ends), (ends[0].end_of_turn_probability if ends else None)


def bench_rate(limit: int | None, vad: dict[str, int]) -> None:
    from tests.support import speech

    voices = {"piper": speech.piper, "espeak": speech.espeak}
    settings = ", ".join(f"{k} {v}" for k, v in vad.items()) or "the stage's defaults"
    print(f"Turns ended at the pause by the model (of those spoken; Smart Turn v3, threshold 0.5, {settings}):")
    for voice, speak in voices.items():
        for kind, sentences in (("complete", COMPLETE), ("incomplete", INCOMPLETE)):
            chosen = sentences[:limit]
            results = [asyncio.run(ended_early(speak(text), vad)) for text in chosen]
            early = sum(flag for flag, _ in results)
            label = "ended early (good)" if kind == "complete" else "FALSE end of turn"
            print(f"  {voice:6s} {kind:10s}: {early}/{len(chosen)} {label} = {early / len(chosen):.0%}", flush=True)
            for text, (flag, probability) in zip(chosen, results, strict=True):
                shown = "-" if probability is None else f"{probability:.2f}"
                print(f"      {'early' if flag else 'hangover':8s} p={shown}  {text}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30, help="timed calls per case for the cost")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime threads to time")
    parser.add_argument("--limit", type=int, default=None, help="only the first N sentences of each kind")
    parser.add_argument("--pause-ms", type=int, help="VAD pause at which the model is asked (default: the stage's)")
    parser.add_argument(
        "--frame-ms", type=int, choices=(10, 20, 30), help="webrtcvad frame length (default: the engine's)"
    )
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-rate", action="store_true")
    args = parser.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    if not args.skip_cost:
        bench_cost(args.calls, args.threads)
    if not args.skip_rate:
        vad = {k: v for k, v in (("pause_ms", args.pause_ms), ("frame_ms", args.frame_ms)) if v is not None}
        bench_rate(args.limit, vad)


if __name__ == "__main__":
    main()
