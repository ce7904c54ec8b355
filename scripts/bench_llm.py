#!/usr/bin/env python
"""Benchmark a Qwen3.5 chat engine: prefill 128/1024 tokens, decode tok/s, peak RSS, TTFT at turn 1 vs turn 20.

    python scripts/bench_llm.py --engine llamacpp                 # full-size random 0.8B checkpoint -> Q4_K_M
    python scripts/bench_llm.py --engine llamacpp --model x.gguf  # any GGUF / checkpoint dir / repo
    python scripts/bench_llm.py --engine mlx --model DIR --quantization int4

For llama.cpp the same file also runs through raw ``llama_cpp.Llama`` (eval + sample, no voicepipe code) in the same
process, interleaved with voicepipe's runs, so the overhead ratio compares like with like. The memory-bandwidth
ceiling (weights bytes read per token / measured read bandwidth) is measured here too. Other engines plug in at
``build_engine`` and ``raw_baseline``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from voicepipe.llm import ChatMessage, ChatModel, ChatSamplingConfig

GREEDY = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=1, disable_thinking=True)
TEXT = (
    "The quick brown fox jumps over the lazy dog while the museum opens at nine on weekdays and closes at five. "
    "Visitors can buy tickets online or at the door, and children under twelve enter for free. "
)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB on Linux
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def read_bandwidth_gbs(threads: int, size_mb: int = 512, repeats: int = 5) -> float:
    """Sustained memory read bandwidth with ``threads`` threads (numpy reductions release the GIL)."""
    data = np.ones(size_mb * 2**20 // 4, dtype=np.float32)
    parts = np.array_split(data, threads)
    best = 0.0
    for _ in range(repeats):
        workers = [threading.Thread(target=np.sum, args=(p,)) for p in parts]
        start = time.perf_counter()
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        best = max(best, data.nbytes / (time.perf_counter() - start) / 1e9)
    return best


def prompt_tokens(model: ChatModel, n: int) -> list[int]:
    ids = model.tokenize(TEXT * (n // 20 + 2))
    return ids[:n]


# -- engines ----------------------------------------------------------------------------------------------------------


def resolve_llamacpp_model(args: argparse.Namespace) -> Path:
    from voicepipe.llm.llamacpp import resolve_gguf

    source = args.model
    if source is None:
        from voicepipe.testing.checkpoints import full_size_checkpoint

        source = str(full_size_checkpoint())
    return resolve_gguf(source, quantization=args.quantization or "q4_k_m")


def build_engine(args: argparse.Namespace) -> ChatModel:
    if args.engine == "llamacpp":
        from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

        return Qwen35LlamaCppChat.from_pretrained(args.gguf, load=False, n_ctx=args.n_ctx, n_threads=args.threads)
    if args.engine == "mlx":
        from voicepipe.llm.mlx import Qwen35MLXChat

        source = args.model
        if source is None:
            from voicepipe.testing.checkpoints import full_size_checkpoint

            source = str(full_size_checkpoint())
        return Qwen35MLXChat.from_pretrained(source, quantization=args.quantization or "int4", load=False)
    raise SystemExit(f"--engine {args.engine!r} is not supported by this script")


@dataclass
class RawBaseline:
    """The same work through the engine's own Python API, without voicepipe."""

    prefill: Callable[[list[int]], float]  # seconds to prefill from an empty state
    decode: Callable[[list[int], int], float]  # tokens/s of n greedy decode steps after a prompt
    nbytes: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def mlx_raw_baseline(engine: ChatModel) -> RawBaseline:
    """Stock mlx-lm: its ``load_model`` and ``generate_step`` on the same weight files, run on the engine's thread."""
    import mlx.core as mx
    from mlx_lm.generate import generate_step
    from mlx_lm.models.cache import make_prompt_cache
    from mlx_lm.utils import load_model

    model = engine._call(lambda: load_model(engine.model_dir, model_config={"model_type": "qwen3_5"})[0])

    def greedy(logprobs: Any) -> Any:
        return mx.argmax(logprobs, axis=-1)

    def run(tokens: list[int], n: int) -> tuple[float, float]:
        start = time.perf_counter()
        steps = generate_step(
            mx.array(tokens), model, max_tokens=n, sampler=greedy, prompt_cache=make_prompt_cache(model)
        )
        first = None
        for token, _ in steps:
            int(token)
            first = first or time.perf_counter()
        return first - start, time.perf_counter() - first

    def prefill(tokens: list[int]) -> float:
        return engine._call(run, tokens, 1)[0]

    def decode(tokens: list[int], n: int) -> float:
        # After an 8-token prompt: stock mlx-lm prefills ~1 s per token on a Linux CPU (no quantized GEMM there).
        return (n - 1) / engine._call(run, tokens[-8:], n)[1]

    return RawBaseline(prefill, decode, engine.memory_footprint, {"model": model})


def preload_openblas() -> None:
    """MLX's Linux CPU wheel calls cblas_sgemm; Debian's OpenBLAS makes fp32 matmuls ~20x faster than the bundled
    reference BLAS. LD_PRELOAD only takes effect at process start, so re-execute this script with it set."""
    from voicepipe.llm.mlx import OPENBLAS

    if sys.platform != "linux" or "openblas" in os.environ.get("LD_PRELOAD", "") or not os.path.exists(OPENBLAS):
        return
    if os.environ.get("VOICEPIPE_NO_OPENBLAS") == "1":
        return
    env = {**os.environ, "LD_PRELOAD": f"{OPENBLAS} {os.environ.get('LD_PRELOAD', '')}".strip()}
    os.execve(sys.executable, [sys.executable, *sys.argv], env)


def raw_baseline(args: argparse.Namespace, engine: ChatModel | None = None) -> RawBaseline | None:
    if args.engine == "mlx" and engine is not None:
        return mlx_raw_baseline(engine)
    if args.engine != "llamacpp":
        return None
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=str(args.gguf),
        n_ctx=args.n_ctx,
        n_batch=512,
        n_ubatch=512,
        n_threads=args.threads or os.cpu_count(),
        n_threads_batch=args.threads or os.cpu_count(),
        verbose=False,
    )

    def prefill(tokens: list[int]) -> float:
        llm.reset()
        start = time.perf_counter()
        llm.eval(tokens)
        llm.sample(temp=0.0, repeat_penalty=1.0)
        return time.perf_counter() - start

    def decode(tokens: list[int], n: int) -> float:
        llm.reset()
        llm.eval(tokens)
        token = llm.sample(temp=0.0, repeat_penalty=1.0)
        start = time.perf_counter()
        for _ in range(n - 1):
            llm.eval([token])
            token = llm.sample(temp=0.0, repeat_penalty=1.0)
        return (n - 1) / (time.perf_counter() - start)

    return RawBaseline(prefill, decode, int(llama_cpp.llama_model_size(llm.model)))


# -- measurements -----------------------------------------------------------------------------------------------------


def vp_prefill(model: ChatModel, tokens: list[int]) -> float:
    model.reset_state()
    model.generate_tokens(tokens, GREEDY)
    return model.last_stats.ttft_s or 0.0


def vp_decode(model: ChatModel, tokens: list[int], n: int) -> float:
    model.reset_state()
    sampling = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=n)
    out = model.generate_tokens(tokens, sampling)
    stats = model.last_stats
    decode_s = stats.total_s - (stats.ttft_s or 0.0)
    return (len(out) - 1) / decode_s if len(out) > 1 else 0.0


def conversation_ttft(model: ChatModel, turns: int, *, warm: bool, reply_tokens: int = 24) -> list[dict[str, float]]:
    """TTFT per turn of a greedy conversation (short replies). ``warm``: prefill each finished turn, as LLMStage does
    while the user is silent. Also measures turn N cold (state reset) for comparison."""
    model.reset_state()
    sampling = ChatSamplingConfig(temperature=0.0, max_tokens=reply_tokens, disable_thinking=True)
    messages = [ChatMessage("system", "You are a helpful voice assistant. Answer briefly.")]
    rows = []
    for i in range(turns):
        messages.append(ChatMessage("user", f"Question {i + 1}: what should I see at the museum today?"))
        reply = model.generate(messages, sampling)
        stats = model.last_stats
        rows.append(
            {
                "turn": i + 1,
                "ttft_s": stats.first_token_s,
                "prompt": stats.prompt_tokens,
                "prefilled": stats.prefill_tokens,
            }
        )
        messages.append(ChatMessage("assistant", reply))
        if warm:
            model.warm(messages)
    model.reset_state()
    model.generate(messages[:-1], sampling)
    rows.append(
        {"turn": turns, "cold": 1.0, "ttft_s": model.last_stats.first_token_s, "prompt": model.last_stats.prompt_tokens}
    )
    return rows


def median_of(fn: Callable[[], float], repeats: int) -> float:
    return statistics.median(fn() for _ in range(repeats))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["llamacpp", "mlx"], default="llamacpp")
    parser.add_argument("--model", help="GGUF file, checkpoint dir or repo (default: full-size random checkpoint)")
    parser.add_argument("--quantization", help="llama.cpp: q4_k_m (default), q4_0, q8_0, bf16, f32; mlx: int4, int8")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: all cores)")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-tokens", type=int, default=64)
    parser.add_argument("--turns", type=int, default=20)
    parser.add_argument("--reply-tokens", type=int, default=24, help="max tokens per reply in the conversation runs")
    parser.add_argument("--raw-prefill-max", type=int, default=None, help="skip raw prefill runs of longer prompts")
    parser.add_argument("--skip-warmed", action="store_true", help="only the cache-only conversation (slow engines)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.engine == "mlx":
        preload_openblas()

    load_start = os.getloadavg()
    results: dict[str, Any] = {
        "engine": args.engine,
        "machine": f"{platform.machine()} {os.cpu_count()} cores, {platform.platform()}",
        "loadavg_start": load_start,
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
    }
    if args.engine == "llamacpp":
        args.gguf = resolve_llamacpp_model(args)
        results["model"] = str(args.gguf)
    threads = args.threads or os.cpu_count() or 1
    results["read_bandwidth_gbs"] = read_bandwidth_gbs(threads)

    rss0 = rss_mb()
    model = build_engine(args)
    model.load()
    results["weights_mb"] = model.memory_footprint / 2**20
    p128, p1024 = prompt_tokens(model, 128), prompt_tokens(model, 1024)
    vp_prefill(model, p1024)  # warm-up, and the peak for RSS below
    results["rss_mb_voicepipe"] = rss_mb() - rss0
    results["peak_rss_mb_voicepipe"] = peak_rss_mb()
    results["ceiling_tok_s"] = results["read_bandwidth_gbs"] * 1e9 / model.memory_footprint

    raw = raw_baseline(args, model)
    rows: dict[str, dict[str, float]] = {}
    for name, n in (("prefill_128_ms", p128), ("prefill_1024_ms", p1024)):
        vp, rw = [], []
        for _ in range(args.repeats):  # interleaved, so load changes hit both alike
            vp.append(vp_prefill(model, n) * 1000)
            if raw and (args.raw_prefill_max is None or len(n) <= args.raw_prefill_max):
                rw.append(raw.prefill(n) * 1000)
        rows[name] = {"voicepipe": statistics.median(vp), "raw": statistics.median(rw) if rw else float("nan")}
    vp, rw = [], []
    for _ in range(args.repeats):
        vp.append(vp_decode(model, p128, args.decode_tokens))
        if raw:
            rw.append(raw.decode(p128, args.decode_tokens))
    rows["decode_tok_s"] = {"voicepipe": statistics.median(vp), "raw": statistics.median(rw) if rw else float("nan")}
    for row in rows.values():
        row["ratio"] = row["voicepipe"] / row["raw"] if raw else float("nan")
    results["rows"] = rows
    results["peak_rss_mb_total"] = peak_rss_mb()
    del raw

    results["conversation_cache_only"] = conversation_ttft(
        model, args.turns, warm=False, reply_tokens=args.reply_tokens
    )
    if not args.skip_warmed:
        results["conversation_warmed"] = conversation_ttft(model, args.turns, warm=True, reply_tokens=args.reply_tokens)
    results["loadavg_end"] = os.getloadavg()
    model.close()

    print(f"# {args.engine}: {results.get('model', args.model)}")
    print(f"machine: {results['machine']}; load avg start {load_start}, end {results['loadavg_end']}")
    print(f"weights {results['weights_mb']:.0f} MB; read bandwidth {results['read_bandwidth_gbs']:.1f} GB/s")
    print(f"bandwidth ceiling {results['ceiling_tok_s']:.1f} tok/s; peak RSS {results['peak_rss_mb_voicepipe']:.0f} MB")
    print("| metric | voicepipe | raw | voicepipe/raw |\n|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['voicepipe']:.1f} | {row['raw']:.1f} | {row['ratio']:.3f} |")
    for key in ("conversation_cache_only", "conversation_warmed"):
        if key not in results:
            continue
        conv = results[key]
        print(
            f"{key}: turn 1 TTFT {conv[0]['ttft_s'] * 1000:.0f} ms ({conv[0]['prefilled']} tokens prefilled); "
            f"turn {args.turns} {conv[-2]['ttft_s'] * 1000:.0f} ms ({conv[-2]['prefilled']} of {conv[-2]['prompt']}); "
            f"turn {args.turns} cold {conv[-1]['ttft_s'] * 1000:.0f} ms ({conv[-1]['prompt']} tokens)"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
