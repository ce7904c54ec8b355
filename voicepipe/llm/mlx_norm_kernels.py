"""Two CUDA kernels for the norms of a Qwen3.5 decode step: the residual add folded into the RMS norm after it, and
an attention layer's q/k RMS norms with RoPE.

At one decode token a step is bound by launching kernels, not by the GPU (BENCHMARKS.md), and mlx-lm's layers spend
several launches on each of these: ``h = x + r`` then ``rms_norm(h)`` (two kernels, 48 times a token in
Qwen3.5-0.8B), and in each full-attention layer a copy and an RMS norm for the queries (a strided slice), an RMS
norm for the keys, then a copy and a RoPE kernel for each (MLX copies first when RoPE covers part of the head). MLX
has no fused add + norm and compiles neither its norm nor its RoPE into fused elementwise kernels, hence these two
kernels (``mx.fast.cuda_kernel``), one launch each. They copy MLX's own CUDA kernels where rounding is decided
(``rms_norm_small``: each thread's order of squares, the warp then block reduction, ``w * T(x * rsqrt(...))``;
``rope_single``: ``exp2(-d * log2(base))`` frequencies, fp32 rotation, one rounding), so their results equal MLX's
ops (tests/llm/test_mlx_norm_kernels.py runs both on a GPU).

Off CUDA, or with shapes or layers the kernels do not cover, :func:`add_rms_norm` and :func:`qk_norm_rope` run
MLX's ops, the ones mlx-lm's layers run. Like the decode-step kernel they are on only with
``VOICEPIPE_MLX_DECODE_KERNEL=1`` on a CUDA GPU (:func:`voicepipe.llm.mlx_decode_kernel.decode_kernel_available`).
"""

from __future__ import annotations

import functools
import math
import struct
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from voicepipe.llm.mlx_decode_kernel import decode_kernel_available

__all__ = ["add_rms_norm", "qk_norm_rope"]

# Shared by both kernels: MLX's BlockBroadcastReduce (cooperative_groups reduce over each warp, a butterfly from lane
# offset 16 down; then the warps' partial sums reduced again by every warp) for a sum of squares, and the per-thread
# load order of rms_norm_small (chunk i, thread t reads elements [(Block * i + t) * Reads, ... + Reads)).
_HEADER = r"""
template <int Block>
__device__ __forceinline__ float voicepipe_block_sum(float v, float* temp) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    if constexpr (Block > 32) {
        const int lane = threadIdx.x & 31;
        if (lane == 0) temp[threadIdx.x >> 5] = v;
        __syncthreads();
        v = lane < Block / 32 ? temp[lane] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    }
    return v;
}
"""

# One block per row: h = x + r (written out), then rms_norm(h) * w, rounded as MLX's rms_norm rounds.
_ADD_NORM_SOURCE = r"""
    __shared__ float temp[Block / 32 > 0 ? Block / 32 : 1];
    const float eps = __int_as_float(EpsBits);
    const int tid = threadIdx.x;
    const size_t row = blockIdx.x;
    const InT* xr = x + row * Axis;
    const InT* rr = r + row * Axis;
    InT* hr = h + row * Axis;
    InT* yr = y + row * Axis;
    InT hv[Chunks][Reads];
    float ss = 0.0f;
    for (int i = 0; i < Chunks; ++i) {
        for (int j = 0; j < Reads; ++j) {
            const int k = (Block * i + tid) * Reads + j;
            InT v = static_cast<InT>(0.0f);
            if (k < Axis) {
                v = xr[k] + rr[k];
                hr[k] = v;
            }
            hv[i][j] = v;
            const float t = static_cast<float>(v);
            ss += t * t;
        }
    }
    ss = voicepipe_block_sum<Block>(ss, temp);
    const float inv = rsqrtf(ss / Axis + eps);
    for (int i = 0; i < Chunks; ++i) {
        for (int j = 0; j < Reads; ++j) {
            const int k = (Block * i + tid) * Reads + j;
            if (k < Axis) yr[k] = w[k] * static_cast<InT>(static_cast<float>(hv[i][j]) * inv);
        }
    }
"""

# One block per (batch, head) of the queries then the keys, read in place from the fused q/k/v projection row
# ``[H x (query D | gate D) | Hkv x key D | Hkv x value D]``: RMS norm as above, then RoPE on the first RopeDims of
# the head (pairs i, i + RopeDims / 2, mlx's non-traditional layout) at position ``offset``.
_QK_SOURCE = r"""
    __shared__ float temp[Block / 32 > 0 ? Block / 32 : 1];
    __shared__ float normed[D];
    const float eps = __int_as_float(EpsBits);
    const float log2_base = __int_as_float(LogBaseBits);
    const float scale = __int_as_float(ScaleBits);
    const int tid = threadIdx.x;
    const int n = blockIdx.z;
    const int b = n / (H + Hkv);
    const int head = n % (H + Hkv);
    const bool is_q = head < H;
    const InT* src = proj + static_cast<size_t>(b) * ProjDim + (is_q ? head * 2 * D : H * 2 * D + (head - H) * D);
    const InT* w = is_q ? q_w : k_w;
    InT* dst = is_q ? queries + (static_cast<size_t>(b) * H + head) * D
                    : keys + (static_cast<size_t>(b) * Hkv + head - H) * D;
    InT hv[Chunks][Reads];
    float ss = 0.0f;
    for (int i = 0; i < Chunks; ++i) {
        for (int j = 0; j < Reads; ++j) {
            const int k = (Block * i + tid) * Reads + j;
            const InT v = k < D ? src[k] : static_cast<InT>(0.0f);
            hv[i][j] = v;
            const float t = static_cast<float>(v);
            ss += t * t;
        }
    }
    ss = voicepipe_block_sum<Block>(ss, temp);
    const float inv = rsqrtf(ss / D + eps);
    for (int i = 0; i < Chunks; ++i) {
        for (int j = 0; j < Reads; ++j) {
            const int k = (Block * i + tid) * Reads + j;
            if (k < D) normed[k] = static_cast<float>(w[k] * static_cast<InT>(static_cast<float>(hv[i][j]) * inv));
        }
    }
    __syncthreads();
    constexpr int Half = RopeDims / 2;
    const float position = scale * static_cast<float>(offset[0]);
    for (int k = tid; k < D; k += Block) {
        if (k < RopeDims) {
            const int p = k < Half ? k : k - Half;
            const float d = static_cast<float>(p) / static_cast<float>(Half);
            const float theta = position * exp2f(-d * log2_base);
            const float c = cosf(theta);
            const float s = sinf(theta);
            const float x1 = normed[p];
            const float x2 = normed[p + Half];
            dst[k] = static_cast<InT>(k < Half ? x1 * c - x2 * s : x1 * s + x2 * c);
        } else {
            dst[k] = static_cast<InT>(normed[k]);
        }
    }
"""

_DTYPES = (mx.float32, mx.float16, mx.bfloat16)


@functools.cache
def _add_norm_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="voicepipe_add_rms_norm",
        input_names=["x", "r", "w"],
        output_names=["h", "y"],
        source=_ADD_NORM_SOURCE,
        header=_HEADER,
    )


@functools.cache
def _qk_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="voicepipe_qk_norm_rope",
        input_names=["proj", "q_w", "k_w", "offset"],
        output_names=["queries", "keys"],
        source=_QK_SOURCE,
        header=_HEADER,
    )


def _float_bits(value: float) -> int:
    return struct.unpack("<i", struct.pack("<f", value))[0]


def _to_float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def _block_plan(axis: int, dtype: mx.Dtype) -> tuple[int, int, int] | None:
    """(threads, chunks per thread, elements per chunk) of MLX's ``rms_norm_small`` for rows of ``axis`` elements,
    or None where MLX runs its other kernel (rows longer than 1024 16-byte vectors)."""
    reads = 16 // dtype.size
    if axis > reads * 128 * 8:
        return None
    vectors = -(-axis // reads)
    if axis <= reads * 64:
        return 64, 1, reads
    if vectors % 128 == 0 and vectors // 128 <= 8:
        return 128, vectors // 128, reads
    if vectors % 64 == 0 and vectors // 64 <= 8:
        return 64, vectors // 64, reads
    return 128, -(-vectors // 128), reads


def _is_rms_norm(norm: nn.Module, dtype: mx.Dtype) -> bool:
    return type(norm) is nn.RMSNorm and norm.weight.dtype == dtype and norm.weight.ndim == 1


def add_rms_norm(x: mx.array, r: mx.array | None, norm: nn.Module, *, kernel: bool = True) -> tuple[mx.array, mx.array]:
    """``(h, norm(h))`` with ``h = x + r`` (``h = x`` when ``r`` is None): a residual add and the norm that reads it.

    One kernel on CUDA (see the module docstring) when ``norm`` is an ``nn.RMSNorm`` of ``x``'s dtype and ``kernel``
    is left on; else MLX's ops, exactly what mlx-lm's decoder layer computes.
    """
    if r is None:
        return x, norm(x)
    dtype, axis = x.dtype, x.shape[-1]
    plan = _block_plan(axis, dtype) if dtype in _DTYPES else None
    if (
        plan is None
        or r.dtype != dtype
        or r.shape != x.shape
        or not _is_rms_norm(norm, dtype)
        or norm.weight.shape[0] != axis
        or not kernel
        or not decode_kernel_available()
    ):
        h = x + r
        return h, norm(h)
    block, chunks, reads = plan
    rows = x.size // axis
    h, y = _add_norm_kernel()(
        inputs=[x, r, norm.weight],
        template=[
            ("InT", dtype),
            ("Axis", axis),
            ("Block", block),
            ("Chunks", chunks),
            ("Reads", reads),
            ("EpsBits", _float_bits(norm.eps)),
        ],
        grid=(block * rows, 1, 1),
        threadgroup=(block, 1, 1),
        output_shapes=[x.shape, x.shape],
        output_dtypes=[dtype, dtype],
    )
    return h, y


def qk_norm_rope(attn: nn.Module, proj: mx.array, offset: mx.array) -> tuple[mx.array, mx.array] | None:
    """``(queries, keys)`` of a fused Qwen3-Next attention layer for its ``qkv_proj`` output ``proj`` ``[B, 1, P]``:
    each head RMS-normed (``q_norm``, ``k_norm``) and rotated by ``attn.rope`` at ``offset`` (an int32 array),
    shaped ``[B, heads, 1, D]`` as mlx-lm's layer hands them to the KV cache. One CUDA kernel; None where it does not
    apply (not CUDA, a RoPE other than mlx's plain ``nn.RoPE``, norms other than ``nn.RMSNorm``, other shapes), and
    the caller runs mlx-lm's ops."""
    batch, length, width = proj.shape
    heads, kv_heads, dim = attn.num_attention_heads, attn.num_key_value_heads, attn.head_dim
    rope = attn.rope
    dtype = proj.dtype
    plan = _block_plan(dim, dtype) if dtype in _DTYPES else None
    if (
        plan is None
        or length != 1
        or width != (2 * heads + 2 * kv_heads) * dim
        or type(rope) is not nn.RoPE
        or rope.traditional
        or rope.dims % 2
        or rope.dims > dim
        or not (_is_rms_norm(attn.q_norm, dtype) and _is_rms_norm(attn.k_norm, dtype))
        or attn.q_norm.eps != attn.k_norm.eps
        or not decode_kernel_available()
    ):
        return None
    block, chunks, reads = plan
    queries, keys = _qk_kernel()(
        inputs=[proj, attn.q_norm.weight, attn.k_norm.weight, offset.astype(mx.int32)],
        template=[
            ("InT", dtype),
            ("H", heads),
            ("Hkv", kv_heads),
            ("D", dim),
            ("ProjDim", width),
            ("RopeDims", rope.dims),
            ("Block", block),
            ("Chunks", chunks),
            ("Reads", reads),
            ("EpsBits", _float_bits(attn.q_norm.eps)),
            # MLX passes std::log2 of its float base, in float.
            ("LogBaseBits", _float_bits(math.log2(_to_float32(rope.base)))),
            ("ScaleBits", _float_bits(rope.scale)),
        ],
        grid=(block, 1, batch * (heads + kv_heads)),
        threadgroup=(block, 1, 1),
        output_shapes=[(batch, heads, 1, dim), (batch, kv_heads, 1, dim)],
        output_dtypes=[dtype, dtype],
    )
    return queries, keys
