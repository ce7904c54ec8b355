"""Benchmark Qwen3.5-0.8B-shaped prefill and decode on MLX: mlx-lm as is vs voicepipe's chunked prefill hook, fused
projections, compiled decode step and CUDA decode kernel, side by side in one process.

Random weights of the real 0.8B text shape (the speed does not depend on the values); INT4 (group 64, mlx-lm's
default) or the float dtype given. Two copies of the same weights: mlx-lm's model as is, and the same model with
voicepipe's fused projections (``prepare_model``'s fusing). Prefill is one forward over the whole prompt from an
empty cache, timed until the last logits and every cache state are evaluated. Decode is greedy after a 128-token
prompt: mlx-lm's ``generate_step``; a one-step-in-flight loop over the compiled step (unfused, fused with mlx-lm's
ops, fused with the CUDA kernels, the whole token as one compiled call, and that call with the norms and the MLP
activation inside the INT4 matvecs); and ``Qwen35MLXChat.generate_tokens``
(the engine's own loop, sampler on the device, next step queued before a token is read). ``split`` says where a
decode token's time goes.

``--profile-steps N`` brackets N synchronous decode steps with ``cudaProfilerStart/Stop`` for Nsight Compute
(``ncu --profile-from-start off --metrics gpu__time_duration.sum --csv --log-file k.csv python ...``), and
``--ncu-summary k.csv --ncu-steps N`` turns that log into GPU kernel time and launches per token.

    # this CPU (fp32 matmuls go through OpenBLAS only when it is preloaded):
    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3 \\
        .venv/bin/python scripts/bench_mlx_prefill.py --quant none --dtype float32
    # an NVIDIA GPU (mlx-cuda):
    python scripts/bench_mlx_prefill.py --quant int4 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_map_with_path
from mlx_lm.generate import generate_step
from mlx_lm.models import qwen3_5
from mlx_lm.models.gated_delta import gated_delta_ops, normalize_qk

from voicepipe.llm.mlx import Qwen35MLXChat, _note_model_thread
from voicepipe.llm.mlx_decode_kernel import decode_kernel_available
from voicepipe.llm.mlx_fused import fuse_projections
from voicepipe.llm.mlx_gated_delta import (
    chunked_gated_delta,
    compiled_decode_step,
    disable_chunked_prefill,
    enable_chunked_prefill,
)
from voicepipe.testing.checkpoints import REAL_SHAPE

# Qwen3.5-0.8B's text config: the real shape (one definition, in voicepipe.testing.checkpoints) plus what mlx-lm needs.
CONFIG_08B: dict[str, Any] = {
    **REAL_SHAPE,
    "model_type": "qwen3_5",
    "full_attention_interval": 4,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "max_position_embeddings": 262144,
    "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
}


def build_model(quant: str, dtype: mx.Dtype) -> nn.Module:
    mx.random.seed(0)
    model = qwen3_5.Model(qwen3_5.ModelArgs.from_dict(dict(CONFIG_08B)))
    # Random init gives every weight the same scale; shrink the embeddings to a trained model's.
    lm = model.language_model.model
    lm.embed_tokens.weight = lm.embed_tokens.weight * 0.02
    # A_log stays float32, as mlx-lm's cast_predicate keeps it.
    model.update(tree_map_with_path(lambda p, x: x if p.endswith("A_log") else x.astype(dtype), model.parameters()))
    if quant == "int4":
        nn.quantize(model, group_size=64, bits=4)
    mx.eval(model.parameters())
    return model


def state_of(cache: list[Any]) -> list[Any]:
    return [c.state for c in cache]


def time_prefill(model: nn.Module, tokens: mx.array) -> float:
    cache = model.make_cache()
    start = time.perf_counter()
    logits = model(tokens, cache=cache)[:, -1]
    mx.eval(logits, state_of(cache))
    return time.perf_counter() - start


def decode_loop(step, model: nn.Module, prompt: mx.array, n: int) -> float:
    """Greedy decode of ``n`` tokens with one step in flight (as mlx-lm's generate_step); returns seconds."""
    cache = model.make_cache()
    logits = model(prompt[None], cache=cache)[:, -1]
    token = mx.argmax(logits, axis=-1)
    mx.eval(token, state_of(cache))

    def advance(tok: mx.array) -> mx.array:
        return mx.argmax(step(tok[:, None], cache)[:, -1], axis=-1)

    start = time.perf_counter()
    nxt = advance(token)
    mx.async_eval(nxt)
    for _ in range(n - 1):
        following = advance(nxt)
        mx.async_eval(following)
        nxt.item()
        nxt = following
    nxt.item()
    return time.perf_counter() - start


def decode_mlx_lm(model: nn.Module, prompt: mx.array, n: int) -> float:
    """mlx-lm's own generate_step; times the n tokens after the first (the first includes the prefill)."""
    start = None
    for i, (_, _) in enumerate(generate_step(prompt, model, max_tokens=n + 1, sampler=lambda x: mx.argmax(x, -1))):
        if i == 0:
            start = time.perf_counter()
    return time.perf_counter() - start


def recurrence_only(length: int, dtype: mx.Dtype, repeats: int, chunk_sizes: list[int]) -> dict[str, float]:
    """One layer's gated delta rule alone at the 0.8B shape (ms): mlx-lm's token loop, MLX's own
    ``mx.fast.gated_delta_update``, and the chunked rule at each chunk size."""
    heads, dim = CONFIG_08B["linear_num_value_heads"], CONFIG_08B["linear_key_head_dim"]
    q, k = normalize_qk(
        mx.random.normal((1, length, heads, dim)).astype(dtype),
        mx.random.normal((1, length, heads, dim)).astype(dtype),
        inv_scale=dim**-0.5,
        eps=1e-6,
    )
    v = mx.random.normal((1, length, heads, dim)).astype(dtype)
    log_decay = -mx.random.uniform(0.01, 2.0, (1, length, heads))
    beta = mx.sigmoid(mx.random.normal((1, length, heads))).astype(dtype)
    mx.eval(q, k, v, log_decay, beta)
    variants = {"mlx_lm_ms": lambda: gated_delta_ops(q, k, v, mx.exp(log_decay), beta)}
    if hasattr(mx.fast, "gated_delta_update"):
        variants["mx_fast_ms"] = lambda: mx.fast.gated_delta_update(q, k, v, mx.exp(log_decay), beta)
    for size in chunk_sizes:
        variants[f"chunked{size}_ms"] = lambda size=size: chunked_gated_delta(q, k, v, log_decay, beta, chunk_size=size)
    out = {}
    for name, fn in variants.items():
        try:
            mx.eval(fn())
        except Exception as exc:  # report and go on: one variant must not lose the whole run
            out[name] = f"failed: {exc}"[:200]
            continue
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            mx.eval(fn())
            times.append(time.perf_counter() - start)
        out[name] = 1e3 * statistics.median(times)
    return out


def prefill_without_recurrence(model: nn.Module, tokens: mx.array) -> float:
    """Prefill time with the recurrence replaced by zeros: what the rest of the model costs (attribution only)."""

    def no_recurrence(q, k, v, a, b, A_log, dt_bias, state=None, mask=None, **kwargs):  # noqa: N803
        batch, _, _, k_dim = q.shape
        return mx.zeros(v.shape, v.dtype), mx.zeros((batch, v.shape[2], v.shape[3], k_dim), mx.float32)

    original = qwen3_5.gated_delta_update
    qwen3_5.gated_delta_update = no_recurrence
    try:
        time_prefill(model, tokens)
        return time_prefill(model, tokens)
    finally:
        qwen3_5.gated_delta_update = original


def kernel_step(
    model: nn.Module,
    use_kernel: bool,
    norm_kernels: bool = True,
    attention_kernel: bool = True,
    one_call: bool = False,
    matvec_kernels: bool = False,
):
    """A compiled decode step traced with the CUDA kernels on or off (the choice is fixed at tracing); with
    ``norm_kernels=False`` without the add + norm and q/k norm + RoPE kernels, with ``attention_kernel=False``
    without the attention kernel (both False: the decode-step kernel alone); ``one_call``: the whole token as one
    compiled call over a fixed-capacity KV cache; ``matvec_kernels``: the norms and the MLP activation inside the
    INT4 matvecs after them."""
    previous = os.environ.get("VOICEPIPE_MLX_DECODE_KERNEL")
    os.environ["VOICEPIPE_MLX_DECODE_KERNEL"] = "1" if use_kernel else "0"
    try:
        step = compiled_decode_step(
            model,
            norm_kernels=norm_kernels,
            attention_kernel=attention_kernel,
            matvec_kernels=matvec_kernels,
            one_call=one_call,
        )
        decode_loop(step, model, mx.random.randint(0, CONFIG_08B["vocab_size"], (128,)), 4)  # trace now
    finally:  # the engine's step, traced later, follows the caller's setting
        if previous is None:
            del os.environ["VOICEPIPE_MLX_DECODE_KERNEL"]
        else:
            os.environ["VOICEPIPE_MLX_DECODE_KERNEL"] = previous
    return step


class _BenchChat(Qwen35MLXChat):
    """The engine on an in-memory random model (no tokenizer: ``generate_tokens`` needs none)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self._model_dir = Path("random-0.8b")  # never read: the model is given
        self._given = model

    def _load_weights(self) -> None:
        _note_model_thread()  # as the engine's own load: exit waits for this thread's MLX state to go
        self._model, self.hf_config = self._given, {}
        self._step = compiled_decode_step(self._model, one_call=decode_kernel_available())  # as the engine
        self._reset_engine()

    def _tokenize(self, text: str) -> list[int]:
        return []


def decode_engine(chat: Qwen35MLXChat, prompt: list[int], n: int) -> float:
    """Seconds for ``n`` tokens after the first through the engine's ``generate_tokens`` (greedy, device sampler)."""
    from voicepipe.llm.base import ChatSamplingConfig

    chat.reset_state()
    chat.generate_tokens(prompt, ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=n + 1))
    stats = chat.last_stats
    return stats.total_s - stats.first_token_s


def greedy_parity(model: nn.Module, step, fused: nn.Module, fused_step, prompt: mx.array, n: int) -> dict[str, Any]:
    """The fused model (with the kernel where used) against mlx-lm's model on the same weights: how many of ``n``
    greedy tokens agree before the first difference, and the largest relative logit error up to there."""

    def greedy(net: nn.Module, fn) -> tuple[list[int], list[Any]]:
        cache = net.make_cache()
        logits = net(prompt[None], cache=cache)[:, -1]
        tokens, rows = [], []
        for _ in range(n):
            rows.append(logits.astype(mx.float32))
            token = mx.argmax(logits, axis=-1)
            tokens.append(token.item())
            logits = fn(token[:, None], cache)[:, -1]
        return tokens, rows

    want, want_rows = greedy(model, step)
    got, got_rows = greedy(fused, fused_step)
    same = next((i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b), n)
    errors = [
        mx.abs(g - w).max().item() / max(mx.abs(w).max().item(), 1e-30)
        for g, w in zip(got_rows[: same + 1], want_rows[: same + 1], strict=False)
    ]
    return {"tokens": n, "same_prefix": same, "max_rel_logit_err": max(errors)}


def step_split(step, model: nn.Module, prompt: mx.array, n: int) -> dict[str, float]:
    """Where a decode token's time goes (ms): Python building the step's graph (no evaluation), one step built and
    evaluated synchronously (graph build + MLX dispatch + GPU kernels, nothing overlapped), and the pipelined loop."""
    cache = model.make_cache()
    token = mx.argmax(model(prompt[None], cache=cache)[:, -1], axis=-1)
    mx.eval(token, state_of(cache))
    build, sync = [], []
    for _ in range(n):
        start = time.perf_counter()
        logits = step(token[:, None], cache)
        built = time.perf_counter()
        token = mx.argmax(logits[:, -1], axis=-1)
        token.item()
        done = time.perf_counter()
        build.append(built - start)
        sync.append(done - start)
    return {
        "graph_build_ms": 1e3 * statistics.median(build),
        "sync_step_ms": 1e3 * statistics.median(sync),
        "pipelined_ms": 1e3 * decode_loop(step, model, prompt, n) / n,
        "eval_overhead_ms": 1e3 * eval_overhead(),
    }


def profile_steps(step, model: nn.Module, prompt: mx.array, n: int) -> None:
    """``n`` synchronous decode steps between cudaProfilerStart and cudaProfilerStop (for ncu)."""
    import ctypes
    import ctypes.util
    import glob
    import sys

    # The CUDA runtime that mlx-cuda loads: from the nvidia-cuda-runtime wheel (its folder differs between CUDA
    # versions), else the system's.
    found = [f for p in sys.path for f in glob.glob(os.path.join(p, "nvidia", "**", "libcudart.so*"), recursive=True)]
    lib = ctypes.CDLL(sorted(found)[0] if found else ctypes.util.find_library("cudart"))
    cache = model.make_cache()
    token = mx.argmax(model(prompt[None], cache=cache)[:, -1], axis=-1)
    mx.eval(token, state_of(cache))
    lib.cudaProfilerStart()
    for _ in range(n):
        token = mx.argmax(step(token[:, None], cache)[:, -1], axis=-1)
        token.item()
    lib.cudaProfilerStop()


def ncu_summary(path: str, steps: int) -> dict[str, Any]:
    """GPU kernel time and launches per decode token from an ncu CSV log of ``--profile-steps``."""
    import csv

    with open(path) as handle:
        rows = [r for r in csv.reader(line for line in handle if line.startswith('"'))]
    if not rows:
        raise SystemExit(f"{path}: no kernel rows; did ncu run with --profile-from-start off around --profile-steps?")
    header, rows = rows[0], rows[1:]
    col = {name: i for i, name in enumerate(header)}
    total_ns, per_kernel = 0.0, {}
    for row in rows:
        if row[col["Metric Name"]] != "gpu__time_duration.sum":
            continue
        scale = {"nsecond": 1.0, "usecond": 1e3, "msecond": 1e6}.get(row[col["Metric Unit"]], 1.0)
        value = float(row[col["Metric Value"]].replace(",", "")) * scale
        total_ns += value
        name = row[col["Kernel Name"]][:60]
        count, ns = per_kernel.get(name, (0, 0.0))
        per_kernel[name] = (count + 1, ns + value)
    top = sorted(per_kernel.items(), key=lambda kv: -kv[1][1])[:12]
    return {
        "kernel_us_per_token": total_ns / 1e3 / steps,
        "launches_per_token": sum(c for c, _ in per_kernel.values()) / steps,
        "top_kernels_us_per_token": {k: round(ns / 1e3 / steps, 1) for k, (_, ns) in top},
        "launches_by_kernel_per_token": {k: c / steps for k, (c, _) in top},
    }


def bench_decode(model: nn.Module, fused: nn.Module, n: int, profile: int = 0) -> dict[str, Any]:
    """Greedy decode of ``n`` tokens after a 128-token prompt, every variant on the same weights."""
    disable_chunked_prefill(model)
    disable_chunked_prefill(fused)
    prompt = mx.random.randint(0, CONFIG_08B["vocab_size"], (128,))
    step = kernel_step(model, use_kernel=False)
    fused_ops = kernel_step(fused, use_kernel=False)
    kernel = decode_kernel_available()
    fused_kernel = kernel_step(fused, use_kernel=True) if kernel else None
    decode_kernel_only = (
        kernel_step(fused, use_kernel=True, norm_kernels=False, attention_kernel=False) if kernel else None
    )
    norm_step = kernel_step(fused, use_kernel=True, attention_kernel=False) if kernel else None
    one_call = kernel_step(fused, use_kernel=True, one_call=True) if kernel else None
    matvec = kernel_step(fused, use_kernel=True, one_call=True, matvec_kernels=True) if kernel else None
    best = matvec or fused_ops
    chat = _BenchChat(fused)  # builds its own compiled step on its thread (CUDA kernel on where available)
    chat.load()
    decode_mlx_lm(model, prompt, 4)
    decode_engine(chat, prompt.tolist(), 4)
    decode: dict[str, Any] = {"tokens": n, "cuda_decode_kernel": kernel}
    decode["mlx_lm_generate_step_tok_s"] = n / decode_mlx_lm(model, prompt, n)
    decode["compiled_step_tok_s"] = n / decode_loop(step, model, prompt, n)
    decode["fused_compiled_tok_s"] = n / decode_loop(fused_ops, fused, prompt, n)
    if fused_kernel is not None:
        decode["fused_decode_kernel_tok_s"] = n / decode_loop(decode_kernel_only, fused, prompt, n)
        decode["fused_norm_kernels_tok_s"] = n / decode_loop(norm_step, fused, prompt, n)
        decode["fused_kernel_tok_s"] = n / decode_loop(fused_kernel, fused, prompt, n)
        decode["one_call_tok_s"] = n / decode_loop(one_call, fused, prompt, n)
        decode["one_call_matvec_tok_s"] = n / decode_loop(matvec, fused, prompt, n)
    decode["engine_tok_s"] = n / decode_engine(chat, prompt.tolist(), n)
    decode["engine_vs_mlx_lm"] = decode["engine_tok_s"] / decode["mlx_lm_generate_step_tok_s"]
    decode["parity_fused_ops"] = greedy_parity(model, step, fused, fused_ops, prompt, 32)
    decode["parity"] = greedy_parity(model, step, fused, best, prompt, 32)
    if fused_kernel is not None:  # the step's kernels against MLX's ops, all with the decode-step kernel
        decode["parity_norm_kernels"] = greedy_parity(fused, decode_kernel_only, fused, norm_step, prompt, 32)
        decode["parity_attention_kernel"] = greedy_parity(fused, norm_step, fused, fused_kernel, prompt, 32)
        decode["parity_one_call"] = greedy_parity(fused, fused_kernel, fused, one_call, prompt, 32)
        decode["parity_matvec_kernels"] = greedy_parity(fused, one_call, fused, matvec, prompt, 32)
    decode["split_unfused"] = step_split(step, model, prompt, min(n, 64))
    if fused_kernel is not None:
        decode["split_segmented"] = step_split(fused_kernel, fused, prompt, min(n, 64))
        decode["split_one_call"] = step_split(one_call, fused, prompt, min(n, 64))
    decode["split_best"] = step_split(best, fused, prompt, min(n, 64))
    decode["weights_mb"] = sum(v.nbytes for _, v in tree_flatten(model.parameters())) / 1e6
    print(json.dumps(decode), flush=True)  # before profiling, which needs Nsight Compute around the process
    if profile:
        profile_steps(best, fused, prompt, profile)
    return decode


def _hook_mode(size: int) -> str:
    return f"voicepipe_c{size}_ms" if size else "voicepipe_default_ms"


def eval_overhead(n: int = 200) -> float:
    """Seconds one ``mx.eval`` of a trivial compiled graph costs: the floor under any per-token loop."""
    fn = mx.compile(lambda x: x * 2 + 1)
    x = mx.zeros((1, 16))
    mx.eval(fn(x))
    start = time.perf_counter()
    for _ in range(n):
        x = fn(x)
        mx.eval(x)
    return (time.perf_counter() - start) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quant", choices=["int4", "none"], default="int4")
    parser.add_argument("--dtype", choices=["bfloat16", "float16", "float32"], default="bfloat16")
    parser.add_argument("--lengths", type=int, nargs="*", default=[128, 1024, 4096], help="none: decode only")
    parser.add_argument("--repeats", type=int, default=3, help="timed prefills per length and mode (median kept)")
    parser.add_argument("--baseline-max", type=int, default=1 << 30, help="skip mlx-lm prefill above this length")
    parser.add_argument("--decode-tokens", type=int, default=64, help="0: no decode")
    parser.add_argument("--threshold", type=int, default=64, help="chunked prefill from this many tokens on")
    parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[64], help="for the recurrence-only timing")
    parser.add_argument(
        "--hook-chunk-sizes", type=int, nargs="+", default=[0], help="chunk sizes for the hook (0: the engine's choice)"
    )
    parser.add_argument("--recurrence-only", action="store_true", help="time only one layer's recurrence per length")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--profile-steps", type=int, default=0, help="N decode steps between cudaProfilerStart/Stop")
    parser.add_argument("--ncu-summary", help="only summarise this ncu CSV log of --profile-steps, then exit")
    parser.add_argument("--ncu-steps", type=int, default=1, help="the --profile-steps of that log")
    args = parser.parse_args()
    if args.ncu_summary:
        print(json.dumps(ncu_summary(args.ncu_summary, args.ncu_steps), indent=1))
        return
    dtype = getattr(mx, args.dtype)
    # The CUDA kernels are opt-in in the engine; the benchmark measures them (=0 measures the engine without).
    os.environ.setdefault("VOICEPIPE_MLX_DECODE_KERNEL", "1")

    results: dict[str, Any] = {
        "env": {k: v for k, v in os.environ.items() if k.startswith("MLX_")},
        "device": str(mx.default_device()),
        "machine": platform.machine(),
        "mlx": mx.__version__,
        "quant": args.quant,
        "dtype": args.dtype,
        "prefill": [],
    }
    if args.recurrence_only:
        for length in args.lengths:
            row = {
                "tokens": length,
                "recurrence_one_layer": recurrence_only(length, dtype, args.repeats, args.chunk_sizes),
            }
            results["prefill"].append(row)
            print(json.dumps(row), flush=True)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2)
        return
    start = time.perf_counter()
    model = build_model(args.quant, dtype)
    fused = build_model(args.quant, dtype)  # the same seed: the same weights
    fuse_projections(fused)
    print(f"models built in {time.perf_counter() - start:.1f} s on {results['device']}", flush=True)

    warm = mx.random.randint(0, CONFIG_08B["vocab_size"], (1, 128))
    time_prefill(model, warm)  # compile / trace once per path before timing
    enable_chunked_prefill(fused, args.threshold)
    time_prefill(fused, warm)

    for length in args.lengths:
        tokens = mx.random.randint(0, CONFIG_08B["vocab_size"], (1, length))
        row: dict[str, Any] = {"tokens": length}
        modes = [(_hook_mode(size), size) for size in args.hook_chunk_sizes]
        if length <= args.baseline_max:
            modes.append(("mlx_lm_ms", None))

        def use(size: int | None) -> nn.Module:
            """mlx-lm as is (None), or voicepipe's fused model with the chunked hook at this chunk size."""
            if size is None:
                return model
            enable_chunked_prefill(fused, args.threshold, chunk_size=size or None)
            return fused

        for _, size in modes:  # new shapes: trace and warm outside the timing
            time_prefill(use(size), tokens[:, : min(length, 256)])
            if size is not None:
                time_prefill(use(size), tokens)
        times: dict[str, list[float]] = {name: [] for name, _ in modes}
        for repeat in range(args.repeats):  # interleaved, so load changes hit every mode alike
            for name, size in modes:
                if size is None and repeat > 0 and length > 1024:
                    continue  # mlx-lm's token loop at 4096 is too slow to repeat
                times[name].append(time_prefill(use(size), tokens))
        row.update({name: 1e3 * statistics.median(values) for name, values in times.items()})
        # The engine's own choice where it ran, else the best of the sizes given.
        hooked = [_hook_mode(size) for size in args.hook_chunk_sizes]
        row["voicepipe_ms"] = row.get(_hook_mode(0)) or min(row[name] for name in hooked)
        if "mlx_lm_ms" in row:
            row["speedup"] = row["mlx_lm_ms"] / row["voicepipe_ms"]
        row["without_recurrence_ms"] = 1e3 * prefill_without_recurrence(model, tokens)
        row["recurrence_one_layer"] = recurrence_only(
            length, dtype, repeats=1 if length > 1024 else 3, chunk_sizes=args.chunk_sizes
        )
        results["prefill"].append(row)
        print(json.dumps(row), flush=True)

    if args.decode_tokens > 0:
        results["decode"] = bench_decode(model, fused, args.decode_tokens, args.profile_steps)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
