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
    const int T = VOICEPIPE_LENGTH;
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
        VOICEPIPE_STORE;
    }
"""

# The output times sigmoid(gate), as mlx-lm's ``output * mx.sigmoid(gate)`` runs on CUDA: MLX's Sigmoid functor
# (cuda/device/unary_ops.cuh) in the dtype's own arithmetic (bf16/fp16: hexp, __habs and rounding operators, as its
# fp16_math.cuh), then the product rounded to the dtype.
_GATE_HEADER = r"""
__device__ __forceinline__ float voicepipe_exp_abs(float x) { return expf(fabsf(x)); }
__device__ __forceinline__ __half voicepipe_exp_abs(__half x) { return hexp(__habs(x)); }
__device__ __forceinline__ __nv_bfloat16 voicepipe_exp_abs(__nv_bfloat16 x) { return hexp(__habs(x)); }
template <typename T>
__device__ __forceinline__ T voicepipe_sigmoid(T x) {
    const T one = static_cast<T>(1.0f);
    const T y = one / (one + voicepipe_exp_abs(x));
    return (static_cast<float>(x) < 0.0f) ? y : static_cast<T>(one - y);
}
"""
_GATED_STORE = (
    "op[d] = static_cast<InT>(static_cast<InT>(o) * "
    "voicepipe_sigmoid(gate[b * gate_strides[0] + h * gate_strides[2] + d * gate_strides[3]]))"
)


@functools.cache
def _kernel(shared_bytes: int, masked: bool, gated: bool) -> Any:
    # Masked: the first ``length[0]`` positions of the cache are read (a fixed-capacity cache); else all of them.
    # Gated: the output is multiplied by sigmoid(gate) (the attention layer's output gate).
    inputs = ["queries", "keys", "values", *(["length"] if masked else []), *(["gate"] if gated else [])]
    source = _SOURCE.replace("VOICEPIPE_LENGTH", "length[0]" if masked else "keys_shape[2]")
    source = source.replace("VOICEPIPE_STORE", _GATED_STORE if gated else "op[d] = static_cast<InT>(o)")
    return mx.fast.cuda_kernel(
        name="voicepipe_decode_attention" + ("_masked" if masked else "") + ("_gated" if gated else ""),
        input_names=inputs,
        output_names=["out"],
        source=source,
        header=_GATE_HEADER if gated else "",
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
    queries: mx.array,
    keys: mx.array,
    values: mx.array,
    *,
    scale: float,
    mask: Any = None,
    length: mx.array | None = None,
    gate: mx.array | None = None,
    kernel: bool = True,
) -> mx.array:
    """``mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)`` for one query token
    ``[B, H, 1, D]`` against ``[B, Hkv, T, D]`` keys and values (views into a KV cache are read in place), as one CUDA
    kernel where it applies (see the module docstring; ``kernel=False`` never); MLX's attention otherwise.

    ``length`` (an int32 array of one element, not with ``mask``): only the first ``length`` of the T positions are
    attended to, the rest of a fixed-capacity cache is ignored, so the shapes stay the same from token to token and
    a compiled step is traced once. MLX's attention then runs with the equivalent boolean mask.

    ``gate`` (``[B, 1, H, D]``, a strided view is read in place): the attention layer's output gate, applied as
    mlx-lm's Qwen3-Next attention applies it; the result is then ``[B, 1, H * D]``, the output projection's input."""
    if length is not None and mask is not None:
        raise ValueError("decode_attention takes a mask or a length, not both")
    batch, heads, _, dim = queries.shape
    if not (kernel and _applies(queries, keys, values, mask) and (gate is None or gate.dtype == queries.dtype)):
        if length is not None:
            mask = mx.arange(keys.shape[2]) < length.reshape(-1)[0]
        out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=scale, mask=mask)
        if gate is None:
            return out
        return out.transpose(0, 2, 1, 3).reshape(batch, 1, -1) * mx.sigmoid(gate.reshape(batch, 1, -1))
    shared = max(4096, 1 << (4 * keys.shape[2] - 1).bit_length())  # the scores, in power-of-two steps
    masked, gated = length is not None, gate is not None
    extra = [length.reshape(1).astype(mx.int32)] if masked else []
    extra += [gate.reshape(batch, 1, heads, dim)] if gated else []
    (out,) = _kernel(shared, masked, gated)(
        inputs=[queries, keys, values, *extra],
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
        output_shapes=[(batch, 1, heads * dim) if gated else queries.shape],
        output_dtypes=[queries.dtype],
    )
    return out
