"""Soak: many turns through one pipeline with a real LLM and a real TTS; does anything grow?

Each turn is a typed question (a final transcript, the LLM's input) sent as soon as the previous turn's reply has
left the sink, so nothing waits in real time: LLM (the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M on llama.cpp, greedy)
-> chunker -> Piper or Kokoro -> WAV sink (a temporary file, deleted afterwards). After each turn the process's
resident memory, its thread count and the event loop's task count are sampled. Reported, after a warm-up:

- RSS growth from the end of the warm-up to the last turn (limit ``--max-rss-growth-pct``, 5 %);
- thread and asyncio-task counts at the end of the warm-up and at the end (no growth allowed); the event loop's
  default executor (``asyncio.to_thread``, named ``asyncio_N``) starts workers on demand up to its fixed bound, so its
  workers are counted apart and only checked against that bound;
- the p50 of the time from question to first reply audio over the last ``--window`` turns vs the first ``--window``
  after the warm-up (limit ``--max-drift-pct``, 10 %).

The exit status is 1 when a limit is exceeded. The full soak (results go to BENCHMARKS.md, on a quiet machine):

    .venv/bin/python scripts/soak.py --turns 500 --tts piper --json soak-piper.json
    .venv/bin/python scripts/soak.py --turns 500 --tts kokoro --json soak-kokoro.json

Each sample also says where the memory sits (file/anonymous pages, malloc's heap, the prompt cache; ``--mappings``
and ``--tracemalloc`` add each large anonymous mapping and Python's own allocations). To tell the parts apart, run
the LLM alone (``--tts none``, a fake TTS) and then the TTS alone on that run's replies (``--replay REPORT``):

    .venv/bin/python scripts/soak.py --turns 100 --tts none --json llm.json
    .venv/bin/python scripts/soak.py --turns 100 --replay llm.json --mappings --json tts.json
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
import threading
import time
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from voicepipe.build import Overrides, build_pipeline
from voicepipe.config import parse_pipeline
from voicepipe.frames import EndOfTurnFrame, ErrorFrame, Frame, TranscriptFrame
from voicepipe.memory.rss import MB, heap_stats, rss_breakdown, rss_bytes
from voicepipe.metrics import TurnMetrics
from voicepipe.stage import Source

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "How do I boil an egg?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "How do you say hello in Spanish?",
    "What is the tallest mountain in the world?",
    "Tell me something about elephants.",
    "What year did the first moon landing happen?",
    "What is two plus three?",
    "Name a fruit that is yellow.",
]


class QuestionSource(Source):
    """Sends question after question as final transcripts, each once the previous reply has left the sink."""

    def __init__(self, turns: int, questions: list[str] = QUESTIONS) -> None:
        super().__init__(name="questions")
        self.count = turns
        self.questions = questions
        self.turn_over = asyncio.Event()

    async def frames(self) -> AsyncIterator[Frame]:
        for i in range(self.count):
            self.turn_over.clear()
            yield TranscriptFrame(text=self.questions[i % len(self.questions)], final=True, turn_id=self.turns.next())
            await self.turn_over.wait()


def pipeline_yaml(
    model: str | None,
    tts: str,
    out: Path,
    max_tokens: int,
    max_history: int,
    llm_threads: int | None = None,
    release_arena: bool | None = None,
) -> str:
    if tts == "none":
        tts_stage = "  - type: fake-tts\n"
    elif tts == "kokoro":
        from tests.support.tts_assets import KOKORO_TEST_VOICE, kokoro_model_path, kokoro_voices_path

        tts_stage = (
            f"  - type: kokoro\n    model: {kokoro_model_path()}\n    voices: {kokoro_voices_path()}\n"
            f"    voice: {KOKORO_TEST_VOICE}\n"
        )
    else:
        from tests.support.tts_assets import piper_joe_model_path

        tts_stage = f"  - type: piper\n    model: {piper_joe_model_path()}\n"
    llm_stage = (
        '  - type: fake-llm\n    reply: "{text}"\n'
        if model is None
        else f"  - type: llm\n    engine: llamacpp\n    model: {model}\n    temperature: 0\n"
        f"    max_tokens: {max_tokens}\n    max_history: {max_history}\n"
        + (f"    n_threads: {llm_threads}\n" if llm_threads else "")
    )
    if release_arena is not None and tts != "none":
        tts_stage += f"    release_arena: {'true' if release_arena else 'false'}\n"
    return f"""stages:
{llm_stage}  - type: chunker
{tts_stage}  - type: wav-sink
    path: {out}
"""


def memory_breakdown(llm: Any, traced: bool) -> dict[str, float]:
    """Where the resident memory is, in MB: mapped files vs anonymous pages, malloc's heap (in use / held free /
    mmapped blocks), the LLM's prompt-cache snapshots and (with ``--tracemalloc``) Python's own allocations."""
    out = {f"rss_{k}_mb": v / MB for k, v in rss_breakdown().items() if k != "shmem"}
    out.update({f"malloc_{k}_mb": v / MB for k, v in heap_stats().items()})
    model = getattr(llm, "model", None)
    if model is not None:
        out["prompt_cache_mb"] = model.prompt_cache.nbytes / MB
        out["prompt_cache_snapshots"] = len(model.prompt_cache)
    if traced:
        out["python_traced_mb"] = tracemalloc.get_traced_memory()[0] / MB
    return {k: round(v, 1) for k, v in out.items()}


def big_anonymous_mappings(min_mb: float = 16) -> dict[str, float]:
    """Resident MB of each anonymous mapping of at least ``min_mb`` (Linux), keyed ``start-address:size_mb``: large
    malloc blocks (onnxruntime arena regions, llama.cpp buffers) are mapped one by one, so a growing one shows here."""
    out: dict[str, float] = {}
    try:
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as smaps:
            key = None
            for line in smaps:
                head = line.split()
                if not head:
                    continue
                if "-" in head[0] and len(head) >= 5 and not line.startswith(("Size", "Rss")):
                    start, end = (int(x, 16) for x in head[0].split("-"))
                    size_mb = (end - start) / MB
                    key = f"{head[0].split('-')[0]}:{size_mb:.0f}" if len(head) == 5 and size_mb >= min_mb else None
                elif key is not None and head[0] == "Rss:":
                    out[key] = round(int(head[1]) / 1024, 1)
    except OSError:
        return {}
    return out


def _on_off(value: str | None) -> bool | None:
    return None if value is None else value == "on"


def p50(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


async def soak(args: argparse.Namespace, out_wav: Path) -> dict[str, Any]:
    loaded = parse_pipeline(
        pipeline_yaml(
            args.model,
            args.tts,
            out_wav,
            args.max_tokens,
            args.max_history,
            args.llm_threads,
            _on_off(args.release_arena),
        ),
        "soak.yaml",
    )
    source = QuestionSource(args.turns, args.questions)
    samples: list[dict[str, Any]] = []
    finished: dict[int, TurnMetrics] = {}
    errors: list[str] = []
    started = time.monotonic()

    def on_output(frame: Frame) -> None:
        if isinstance(frame, ErrorFrame):
            errors.append(frame.message)
        if isinstance(frame, EndOfTurnFrame) and frame.turn_id > 0:
            samples.append(
                {
                    "turn": frame.turn_id,
                    "rss_mb": rss_bytes() / MB,
                    "threads": sum(1 for t in threading.enumerate() if not t.name.startswith("asyncio_")),
                    "pool_threads": sum(1 for t in threading.enumerate() if t.name.startswith("asyncio_")),
                    "tasks": len(asyncio.all_tasks()),
                    **memory_breakdown(llm, args.tracemalloc),
                    **({"mappings": big_anonymous_mappings()} if args.mappings else {}),
                }
            )
            if args.progress and frame.turn_id % 10 == 0:
                s = samples[-1]
                print(f"turn {frame.turn_id}: RSS {s['rss_mb']:.0f} MB, {s['threads']} threads, {s['tasks']} tasks")
            source.turn_over.set()

    run = build_pipeline(
        loaded, Overrides(source=source), on_turn=lambda turn: finished.__setitem__(turn.turn_id, turn)
    )
    llm = next((stage for stage in run.stages if hasattr(stage, "model")), None)
    if args.tracemalloc:
        tracemalloc.start()
    run.pipeline.on_output(on_output)
    await run.run()
    wall = time.monotonic() - started

    latency = {}
    for turn_id, turn in finished.items():
        t = turn.times
        if "transcript" in t and "first_audio" in t:
            latency[turn_id] = (t["first_audio"] - t["transcript"]) * 1000
    for sample in samples:  # each turn's latency in the report, so a drift can be read turn by turn
        if sample["turn"] in latency:
            sample["latency_ms"] = round(latency[sample["turn"]], 1)
    warm = samples[min(args.warmup, len(samples)) - 1] if samples else None
    last = samples[-1] if samples else None
    after = [latency[s["turn"]] for s in samples[args.warmup :] if s["turn"] in latency]
    window = min(args.window, len(after) // 2)
    first_p50, last_p50 = p50(after[:window]), p50(after[-window:] if window else [])
    report: dict[str, Any] = {
        "turns": len(samples),
        "turns_asked": args.turns,
        "tts": args.tts,
        "model": Path(args.model).name if args.model else f"replay of {args.replay}",
        "max_tokens": args.max_tokens,
        "max_history": args.max_history,
        "tts_release_arena": args.release_arena or "engine default",
        "warmup_turns": args.warmup,
        "window": window,
        "wall_s": round(wall, 1),
        "errors": errors,
        "machine": f"{platform.node()} {platform.machine()} {platform.processor() or ''}".strip(),
        "date": time.strftime("%Y-%m-%d", time.gmtime()),
        "replies_sample": [finished[i].reply for i in sorted(finished)[:3]],
        "replies": [finished[i].reply for i in sorted(finished)],
    }
    if warm is not None and last is not None:
        growth = (last["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"] * 100
        report.update(
            rss_after_warmup_mb=round(warm["rss_mb"], 1),
            rss_end_mb=round(last["rss_mb"], 1),
            rss_peak_mb=round(max(s["rss_mb"] for s in samples), 1),
            rss_growth_pct=round(growth, 2),
            threads_after_warmup=warm["threads"],
            threads_end=last["threads"],
            threads_max=max(s["threads"] for s in samples[args.warmup - 1 :]),
            pool_threads_max=max(s["pool_threads"] for s in samples),
            pool_threads_bound=min(32, (os.cpu_count() or 1) + 4),  # ThreadPoolExecutor's default max_workers
            tasks_after_warmup=warm["tasks"],
            tasks_end=last["tasks"],
            tasks_max=max(s["tasks"] for s in samples[args.warmup - 1 :]),
        )
    if first_p50 is not None and last_p50 is not None:
        report.update(
            latency_p50_first_ms=round(first_p50, 1),
            latency_p50_last_ms=round(last_p50, 1),
            latency_drift_pct=round((last_p50 - first_p50) / first_p50 * 100, 2),
        )
    report["samples"] = samples
    report["failures"] = check(report, args)
    return report


def check(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    failures = []
    if report["turns"] != report["turns_asked"]:
        failures.append(f"only {report['turns']} of {report['turns_asked']} turns finished")
    if report["errors"]:
        failures.append(f"{len(report['errors'])} stage errors, first: {report['errors'][0]}")
    if "rss_growth_pct" not in report:
        return failures + ["no turn finished after the warm-up"]
    if report["rss_growth_pct"] > args.max_rss_growth_pct:
        failures.append(
            f"RSS grew {report['rss_growth_pct']:.1f} % after the warm-up (limit {args.max_rss_growth_pct} %)"
        )
    for what in ("threads", "tasks"):
        if report[f"{what}_end"] > report[f"{what}_after_warmup"]:
            failures.append(f"{what} grew from {report[f'{what}_after_warmup']} to {report[f'{what}_end']}")
    if report["pool_threads_max"] > report["pool_threads_bound"]:
        failures.append(f"{report['pool_threads_max']} default-executor threads, over its bound")
    drift = report.get("latency_drift_pct")
    if args.max_drift_pct is not None and drift is not None and abs(drift) > args.max_drift_pct:
        failures.append(f"latency p50 drifted {drift:+.1f} % (limit {args.max_drift_pct} %)")
    return failures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument(
        "--tts", choices=("piper", "kokoro", "none"), default="piper", help="none: a fake TTS (the LLM alone)"
    )
    parser.add_argument(
        "--replay",
        metavar="REPORT",
        help="the TTS alone: speak the replies of an earlier --json report, with a fake LLM instead of the real one",
    )
    parser.add_argument("--model", help="chat GGUF (default: the real Qwen2.5-Coder-0.5B-Instruct Q4_K_M)")
    parser.add_argument("--max-tokens", type=int, default=48, help="reply length cap (a spoken answer)")
    parser.add_argument(
        "--max-history", type=int, default=20, help="LLM history kept (the steady state starts once it is full)"
    )
    parser.add_argument(
        "--llm-threads", type=int, help="llama.cpp threads (default: every core; 1 leaves a core to a busy machine)"
    )
    parser.add_argument(
        "--release-arena",
        choices=("on", "off"),
        help="TTS release_arena (default: the engine's); compare memory and latency with both",
    )
    parser.add_argument("--warmup", type=int, help="turns not measured (default: 10 %% of the turns, at least 3)")
    parser.add_argument("--window", type=int, default=50, help="turns in each latency p50 window")
    parser.add_argument("--max-rss-growth-pct", type=float, default=5.0)
    parser.add_argument("--max-drift-pct", type=float, default=10.0, help="latency drift limit (negative: off)")
    parser.add_argument("--json", metavar="PATH", help="write the report (with per-turn samples) here")
    parser.add_argument("--progress", action="store_true", help="a line every 10 turns")
    parser.add_argument("--mappings", action="store_true", help="also sample each large anonymous mapping's RSS")
    parser.add_argument("--tracemalloc", action="store_true", help="also sample Python's own allocations (slower)")
    args = parser.parse_args()
    if args.turns < 2:
        parser.error("--turns must be at least 2")
    if args.warmup is None:
        args.warmup = max(3, args.turns // 10)
    args.warmup = max(1, min(args.warmup, args.turns - 1))
    if args.max_drift_pct is not None and args.max_drift_pct < 0:
        args.max_drift_pct = None
    args.questions = QUESTIONS
    if args.replay:
        args.questions = [r for r in json.loads(Path(args.replay).read_text())["replies"] if r.strip()]
        args.model = None
    elif args.model is None:
        from tests.support.llm_assets import qwen25_05b_gguf

        args.model = str(qwen25_05b_gguf())
    with tempfile.TemporaryDirectory(prefix="voicepipe-soak-") as tmp:
        report = asyncio.run(soak(args, Path(tmp) / "replies.wav"))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    summary = {k: v for k, v in report.items() if k not in ("samples", "replies")}
    print(json.dumps(summary, indent=2))
    for failure in report["failures"]:
        print(f"FAIL: {failure}", file=sys.stderr)
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
