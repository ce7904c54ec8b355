"""Two CUDA kernels that fold a decode step's norms and MLP activation into the INT4 matvec after them.

At one decode token a Qwen3.5 step is bound by the number of operations, not by the GPU (BENCHMARKS.md): each one
is a node MLX builds again on every call and a kernel it launches. Twice a layer the residual add and RMS norm
(``voicepipe.llm.mlx_norm_kernels``) feed exactly one projection (the input norm the layer's fused q/k/v/z/b/a or
q/k/v projection, the post-attention norm the MLP's gate + up projection), and the MLP's activation feeds exactly one
down projection. MLX has no quantized matmul with a prologue, so these kernels (``mx.fast.cuda_kernel``) do both in
one launch: each block computes the normalised row (or the activation) into shared memory, then each warp takes
rows of the weight. 72 launches fewer a token for Qwen3.5-0.8B.

The matvec reads MLX's affine quantization as ``nn.QuantizedLinear`` stores it (4-bit values packed eight to a
uint32, lowest bits first; a scale and a bias per group of ``group_size`` inputs: ``w = scale * q + bias``) and sums
in fp32, like MLX's ``quantized_matmul`` but in another order, so results equal MLX's ops within the activation
dtype's rounding, not bit for bit (tests/llm/test_mlx_matvec_kernels.py). The prologues round where MLX's ops round
(``w * T(x * rsqrt(mean(x^2) + eps))`` for the norm; ``T(T(g * T(sigmoid(g))) * u)`` for mlx-lm's ``swiglu``).

Off CUDA, or for layers and shapes the kernels do not cover (not 4-bit affine, a bias, an input length that is not
a multiple of 256, more than one row), :func:`norm_matmul` and :func:`swiglu_matmul` run MLX's ops, exactly what
mlx-lm's layers compute. On only with ``VOICEPIPE_MLX_DECODE_KERNEL=1`` on a CUDA GPU, as the other decode kernels.
"""

from __future__ import annotations

import functools
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.activations import swiglu

from voicepipe.llm.mlx_decode_kernel import decode_kernel_available
from voicepipe.llm.mlx_norm_kernels import _HEADER as _REDUCE_HEADER
from voicepipe.llm.mlx_norm_kernels import _float_bits, _is_rms_norm, add_rms_norm

__all__ = ["MAX_INPUTS", "matvec_kernel_applies", "norm_matmul", "swiglu_matmul"]

#: Longest input row the kernels take: it sits in shared memory as fp32 (32 KiB).
MAX_INPUTS = 8192
_THREADS = 256  # eight warps a block
_GROUP_SIZES = (32, 64, 128)

# Each warp multiplies RPW rows of the weight by the fp32 row ``xs`` in shared memory. A lane reads words lane,
# lane + 32, ... of a row (coalesced) and sums scale * dot(x, q) + bias * sum(x) per word in fp32, keeping the eight
# inputs of each word in registers for all its rows; the warp then adds its lanes' sums. The weights, scales and
# biases are loaded (``voicepipe_qmv_load``) before the block computes ``xs``, so their latency overlaps it.
_MATVEC_HEADER = (
    _REDUCE_HEADER
    + r"""
template <typename T, int K, int G, int RPW>
struct VoicepipeQmvTile {
    static constexpr int Words = K / 8;
    static constexpr int PerLane = Words / 32;
    static constexpr int Groups = K / G;
    int first;
    uint32_t words[RPW][PerLane];
    float scale[RPW][PerLane];
    float bias[RPW][PerLane];
};

template <typename T, int K, int G, int RPW>
__device__ __forceinline__ void voicepipe_qmv_load(
    VoicepipeQmvTile<T, K, G, RPW>& tile, const uint32_t* w, const T* scales, const T* biases, int rows) {
    using Tile = VoicepipeQmvTile<T, K, G, RPW>;
    const int lane = threadIdx.x & 31;
    tile.first = (blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5)) * RPW;
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
        const int row = tile.first + j < rows ? tile.first + j : rows - 1;  // past the end: loaded, never written
#pragma unroll
        for (int i = 0; i < Tile::PerLane; ++i) {
            const int g = ((lane + 32 * i) * 8) / G;
            tile.words[j][i] = w[static_cast<size_t>(row) * Tile::Words + lane + 32 * i];
            tile.scale[j][i] = static_cast<float>(scales[static_cast<size_t>(row) * Tile::Groups + g]);
            tile.bias[j][i] = static_cast<float>(biases[static_cast<size_t>(row) * Tile::Groups + g]);
        }
    }
}

template <typename T, int K, int G, int RPW>
__device__ __forceinline__ void voicepipe_qmv_rows(
    const VoicepipeQmvTile<T, K, G, RPW>& tile, const float* xs, T* y, int rows) {
    using Tile = VoicepipeQmvTile<T, K, G, RPW>;
    const int lane = threadIdx.x & 31;
    float xv[Tile::PerLane][8];
    float xsum[Tile::PerLane];
#pragma unroll
    for (int i = 0; i < Tile::PerLane; ++i) {
        const int base = (lane + 32 * i) * 8;
        float s = 0.0f;
#pragma unroll
        for (int t = 0; t < 8; ++t) {
            xv[i][t] = xs[base + t];
            s += xv[i][t];
        }
        xsum[i] = s;
    }
#pragma unroll
    for (int j = 0; j < RPW; ++j) {
        float acc = 0.0f;
#pragma unroll
        for (int i = 0; i < Tile::PerLane; ++i) {
            float dot = 0.0f;
#pragma unroll
            for (int t = 0; t < 8; ++t) dot += xv[i][t] * static_cast<float>((tile.words[j][i] >> (4 * t)) & 0xFu);
            acc += tile.scale[j][i] * dot + tile.bias[j][i] * xsum[i];
        }
        for (int o = 16; o > 0; o >>= 1) acc += __shfl_xor_sync(0xffffffff, acc, o);
        if (lane == 0 && tile.first + j < rows) y[tile.first + j] = static_cast<T>(acc);
    }
}
"""
)

# (h = x + r, written by block 0) then rms_norm(h) * nw into shared memory, then the matvec. K is a multiple of Block
# (256), so every loop has a fixed trip count and unrolls: its loads are all issued before the first is waited for.
_NORM_SOURCE = r"""
    __shared__ float xs[K];
    __shared__ float temp[32];
    VoicepipeQmvTile<InT, K, G, RPW> tile;
    voicepipe_qmv_load<InT, K, G, RPW>(tile, w, scales, biases, N);
    const float eps = __int_as_float(EpsBits);
    float ss = 0.0f;
#pragma unroll
    for (int i = 0; i < K / Block; ++i) {
        const int k = i * Block + threadIdx.x;
        InT v = x[k];
        VOICEPIPE_RESIDUAL
        const float f = static_cast<float>(v);
        xs[k] = f;
        ss += f * f;
    }
    ss = voicepipe_block_sum<Block>(ss, temp);
    const float inv = rsqrtf(ss / K + eps);
#pragma unroll
    for (int i = 0; i < K / Block; ++i) {
        const int k = i * Block + threadIdx.x;
        xs[k] = static_cast<float>(nw[k] * static_cast<InT>(xs[k] * inv));
    }
    __syncthreads();
    voicepipe_qmv_rows<InT, K, G, RPW>(tile, xs, y, N);
"""

_RESIDUAL = "v = v + r[k];\n        if (blockIdx.x == 0) h[k] = v;"

# mlx-lm's swiglu(gate, up) = silu(gate) * up over the gate + up projection's output, then the matvec.
_SWIGLU_SOURCE = r"""
    __shared__ float xs[K];
    VoicepipeQmvTile<InT, K, G, RPW> tile;
    voicepipe_qmv_load<InT, K, G, RPW>(tile, w, scales, biases, N);
#pragma unroll
    for (int i = 0; i < K / Block; ++i) {
        const int k = i * Block + threadIdx.x;
        const InT g = gu[k];
        const InT u = gu[K + k];
        const InT s = static_cast<InT>(1.0f / (1.0f + expf(-static_cast<float>(g))));
        xs[k] = static_cast<float>(static_cast<InT>(g * s) * u);
    }
    __syncthreads();
    voicepipe_qmv_rows<InT, K, G, RPW>(tile, xs, y, N);
"""


@functools.cache
def _norm_kernel(residual: bool) -> Any:
    inputs = ["x", "r", "nw", "w", "scales", "biases"] if residual else ["x", "nw", "w", "scales", "biases"]
    return mx.fast.cuda_kernel(
        name="voicepipe_add_norm_qmv" if residual else "voicepipe_norm_qmv",
        input_names=inputs,
        output_names=["h", "y"] if residual else ["y"],
        source=_NORM_SOURCE.replace("VOICEPIPE_RESIDUAL", _RESIDUAL if residual else ""),
        header=_MATVEC_HEADER,
    )


@functools.cache
def _swiglu_kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="voicepipe_swiglu_qmv",
        input_names=["gu", "w", "scales", "biases"],
        output_names=["y"],
        source=_SWIGLU_SOURCE,
        header=_MATVEC_HEADER,
    )


def matvec_kernel_applies(linear: nn.Module, x: mx.array, inputs: int) -> bool:
    """Whether the kernels can multiply one row of ``inputs`` values (dtype of ``x``) by ``linear``: a 4-bit affine
    ``nn.QuantizedLinear`` without a bias, scales in ``x``'s dtype, an input length that is a multiple of 256 up to
    :data:`MAX_INPUTS`, one row, on a GPU with the decode kernels on."""
    return (
        isinstance(linear, nn.QuantizedLinear)
        and "bias" not in linear
        and "biases" in linear
        and linear.bits == 4
        and getattr(linear, "mode", "affine") == "affine"
        and linear.group_size in _GROUP_SIZES
        and linear.scales.dtype == x.dtype
        and linear.weight.shape[-1] * 8 == inputs
        and inputs % 256 == 0
        and inputs <= MAX_INPUTS
        and x.size == x.shape[-1]
        and x.dtype in (mx.float32, mx.float16, mx.bfloat16)
        and decode_kernel_available()
    )


def _rows_per_warp(rows: int) -> int:
    # Enough blocks to cover the GPU's SMs twice for the 1024-row projections, fewer norms recomputed for the wide ones.
    return max(1, min(4, rows // 2048))


def _launch(
    kernel: Any,
    inputs: list[mx.array],
    linear: nn.Module,
    x: mx.array,
    k: int,
    extra: list[tuple[str, int]],
    outputs: int,
) -> list[mx.array]:
    """Run ``kernel`` on ``inputs`` and ``linear``'s weights: ``outputs`` arrays (``[h,] y``), ``y`` of ``linear``'s
    rows; ``k`` inputs a row, ``extra`` more template values."""
    rows = linear.weight.shape[0]
    rpw = _rows_per_warp(rows)
    blocks = -(-rows // (_THREADS // 32 * rpw))
    out_shape = (*x.shape[:-1], rows)
    return kernel(
        inputs=[*inputs, linear.weight, linear.scales, linear.biases],
        template=[
            ("InT", x.dtype),
            ("K", k),
            ("G", linear.group_size),
            ("N", rows),
            ("RPW", rpw),
            ("Block", _THREADS),
            *extra,
        ],
        grid=(blocks * _THREADS, 1, 1),
        threadgroup=(_THREADS, 1, 1),
        output_shapes=[x.shape, out_shape] if outputs == 2 else [out_shape],
        output_dtypes=[x.dtype] * outputs,
    )


def norm_matmul(
    x: mx.array,
    r: mx.array | None,
    norm: nn.Module,
    linear: nn.Module,
    *,
    norm_kernel: bool = True,
    matvec_kernel: bool = True,
) -> tuple[mx.array, mx.array]:
    """``(h, linear(norm(h)))`` with ``h = x + r`` (``h = x`` when ``r`` is None): a residual add, the RMS norm that
    reads it and the projection after it, as one CUDA kernel where it applies (see the module docstring); else
    :func:`voicepipe.llm.mlx_norm_kernels.add_rms_norm` (its kernel on with ``norm_kernel``) and ``linear``."""
    k = x.shape[-1]
    if (
        not matvec_kernel
        or not _is_rms_norm(norm, x.dtype)
        or norm.weight.shape[0] != k
        or (r is not None and (r.shape != x.shape or r.dtype != x.dtype))
        or not matvec_kernel_applies(linear, x, k)
    ):
        h, normed = add_rms_norm(x, r, norm, kernel=norm_kernel)
        return h, linear(normed)
    eps = [("EpsBits", _float_bits(norm.eps))]
    if r is None:
        (y,) = _launch(_norm_kernel(False), [x, norm.weight], linear, x, k, eps, 1)
        return x, y
    h, y = _launch(_norm_kernel(True), [x, r, norm.weight], linear, x, k, eps, 2)
    return h, y


def swiglu_matmul(gate_up: mx.array, linear: nn.Module, *, matvec_kernel: bool = True) -> mx.array:
    """``linear(swiglu(gate, up))`` for the gate + up projection's output ``[..., 2 * I]`` (gate first, as
    ``voicepipe.llm.mlx_fused.FusedMLP`` splits it): one CUDA kernel where it applies, else mlx-lm's ops."""
    k = gate_up.shape[-1] // 2
    if not matvec_kernel or gate_up.shape[-1] % 2 or not matvec_kernel_applies(linear, gate_up, k):
        gate, up = mx.split(gate_up, 2, axis=-1)
        return linear(swiglu(gate, up))
    (y,) = _launch(_swiglu_kernel(), [gate_up], linear, gate_up, k, [], 1)
    return y
