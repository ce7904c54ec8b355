"""One CUDA kernel for the attention of one decode token over the KV cache (Qwen3.5's full-attention layers).

For a single query MLX's CUDA ``scaled_dot_product_attention`` runs its fallback for Qwen3.5's head size (256): the
query scaled, a batched matvec against the keys, a softmax, a cuBLAS matvec against the values, a copy of the
output, each its own kernel, built as graph nodes outside the compiled step because the cache grows every token.
At one decode token the step is bound by launching kernels (BENCHMARKS.md), so :func:`decode_attention` does the
same arithmetic in one kernel (``mx.fast.cuda_kernel``), reading the cache's keys and values in place.

It rounds where MLX's fallback rounds (the scaled query, the scores and the probabilities to the activation dtype,
sums in fp32), but its sums run in another order, so results match MLX's to within that dtype's rounding, not bit for
bit (tests/llm/test_mlx_norm_kernels.py). One block per (batch, query head): eight warps score the positions into
shared memory, then each warp sums its share of the weighted values and the block adds the eight partial rows.
Contexts longer than :data:`MAX_POSITIONS` run MLX's attention, as does every device without the kernels (on only
with ``VOICEPIPE_MLX_DECODE_KERNEL=1`` on a CUDA GPU, as the decode-step kernel).
"""

from __future__ import annotations

import functools
import struct
from typing import Any

import mlx.core as mx

from voicepipe.llm.mlx_decode_kernel import decode_kernel_available

__all__ = ["MAX_POSITIONS", "decode_attention"]

#: Longest cache the kernel takes: its scores sit in 32 KiB of shared memory (MLX configures no more without asking).
MAX_POSITIONS = 8192
_WARPS = 8

_SOURCE = r"""
    extern __shared__ float scores[];
    __shared__ float partial[Warps][D];
    __shared__ float red[Warps];
    constexpr int PerLane = D / 32;
    constexpr int Group = H / Hkv;
    const float scale = __int_as_float(ScaleBits);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int n = blockIdx.z;
    const int b = n / H;
    const int h = n % H;
    const int kvh = h / Group;
    const int T = keys_shape[2];
    const InT* qp = queries + b * queries_strides[0] + h * queries_strides[1];
    const InT* kp = keys + b * keys_strides[0] + kvh * keys_strides[1];
    const InT* vp = values + b * values_strides[0] + kvh * values_strides[1];
    const int64_t ks = keys_strides[2];
    const int64_t vs = values_strides[2];

    // MLX scales the query in its dtype first.
    float q[PerLane];
    for (int i = 0; i < PerLane; ++i) {
        q[i] = static_cast<float>(static_cast<InT>(qp[lane * PerLane + i] * static_cast<InT>(scale)));
    }
    float m = -__int_as_float(0x7f800000);  // -infinity
    for (int t = warp; t < T; t += Warps) {
        const InT* k = kp + t * ks + lane * PerLane;
        float s = 0.0f;
        for (int i = 0; i < PerLane; ++i) s += q[i] * static_cast<float>(k[i]);
        for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
        s = static_cast<float>(static_cast<InT>(s));
        if (lane == 0) scores[t] = s;
        m = fmaxf(m, s);
    }
    if (lane == 0) red[warp] = m;
    __syncthreads();
    m = red[0];
    for (int w = 1; w < Warps; ++w) m = fmaxf(m, red[w]);
    float sum = 0.0f;
    for (int t = tid; t < T; t += Warps * 32) sum += expf(scores[t] - m);
    for (int o = 16; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffff, sum, o);
    __syncthreads();  // every thread has read red[] for the max
    if (lane == 0) red[warp] = sum;
    __syncthreads();
    sum = 0.0f;
    for (int w = 0; w < Warps; ++w) sum += red[w];
    const float inv = 1.0f / sum;

    float acc[PerLane];
    for (int i = 0; i < PerLane; ++i) acc[i] = 0.0f;
    for (int t = warp; t < T; t += Warps) {
        const float p = static_cast<float>(static_cast<InT>(expf(scores[t] - m) * inv));
        const InT* v = vp + t * vs + lane * PerLane;
        for (int i = 0; i < PerLane; ++i) acc[i] += p * static_cast<float>(v[i]);
    }
    for (int i = 0; i < PerLane; ++i) partial[warp][lane * PerLane + i] = acc[i];
    __syncthreads();
    InT* op = out + static_cast<size_t>(n) * D;
    for (int d = tid; d < D; d += Warps * 32) {
        float o = 0.0f;
        for (int w = 0; w < Warps; ++w) o += partial[w][d];
        op[d] = static_cast<InT>(o);
    }
"""


@functools.cache
def _kernel(shared_bytes: int) -> Any:
    return mx.fast.cuda_kernel(
        name="voicepipe_decode_attention",
        input_names=["queries", "keys", "values"],
        output_names=["out"],
        source=_SOURCE,
        ensure_row_contiguous=False,
        shared_memory=shared_bytes,
    )


def _applies(queries: mx.array, keys: mx.array, values: mx.array, mask: Any) -> bool:
    batch, heads, length, dim = queries.shape
    return (
        mask is None
        and length == 1
        and keys.ndim == 4
        and keys.shape == values.shape
        and keys.shape[0] == batch
        and heads % keys.shape[1] == 0
        and keys.shape[3] == dim
        and dim % 32 == 0
        and dim <= 256
        and 0 < keys.shape[2] <= MAX_POSITIONS
        and queries.dtype == keys.dtype == values.dtype
        and queries.dtype in (mx.float32, mx.float16, mx.bfloat16)
        and decode_kernel_available()
    )


def decode_attention(
    queries: mx.array, keys: mx.array, values: mx.array, *, scale: float, mask: Any = None, kernel: bool = True
) -> mx.array:
    """``mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)`` for one query token
    ``[B, H, 1, D]`` against ``[B, Hkv, T, D]`` keys and values (views into a KV cache are read in place), as one CUDA
    kernel where it applies (see the module docstring; ``kernel=False`` never); MLX's attention otherwise."""
    if not (kernel and _applies(queries, keys, values, mask)):
        return mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
    batch, heads, _, dim = queries.shape
    shared = max(4096, 1 << (4 * keys.shape[2] - 1).bit_length())  # the scores, in power-of-two steps
    (out,) = _kernel(shared)(
        inputs=[queries, keys, values],
        template=[
            ("InT", queries.dtype),
            ("H", heads),
            ("Hkv", keys.shape[1]),
            ("D", dim),
            ("Warps", _WARPS),
            ("ScaleBits", struct.unpack("<i", struct.pack("<f", scale))[0]),
        ],
        grid=(32 * _WARPS, 1, batch * heads),
        threadgroup=(32 * _WARPS, 1, 1),
        output_shapes=[queries.shape],
        output_dtypes=[queries.dtype],
    )
    return out
