"""One CUDA kernel for a Gated-DeltaNet decode step of Qwen3.5: conv update, q/k normalisation, gating, the
recurrent state update and the gated output norm of one token in one launch.

mlx-lm runs this step as ~30 small MLX ops per layer (conv concat and slice, conv1d, silu, split, two rms_norms, the
gate and beta formulas, the state decay, two reductions, the write, the gated norm): at one token each is a tiny kernel,
and on an H200 a decode token is bound by launching them, not by the GPU (BENCHMARKS.md). Neither MLX nor mlx-lm has
this step as one CUDA kernel, hence this file (``mx.fast.cuda_kernel``; mlx-lm's Metal gated-delta kernel is the
model for the recurrence part). On Apple GPUs mlx-lm already runs the recurrence as one Metal kernel and this module
is not used; on the CPU there are no custom kernels: :func:`decode_kernel_available` says when it applies.

Shapes follow mlx-lm's ``GatedDeltaNet`` with the fused input projection of ``voicepipe.llm.mlx_fused``, whose
output row is ``[qkv (conv_dim) | z (value_dim) | b (Hv) | a (Hv)]``; the kernel reads qkv, b and a from it in place.
"""

from __future__ import annotations

import functools
import os
import struct
from typing import Any

import mlx.core as mx

__all__ = ["decode_kernel_available", "gated_delta_decode_step"]

#: Warps per thread block; one block per (batch, value head), each warp runs ``Dv / _WARPS`` rows of the state.
_WARPS = 16

# One block per (batch, value head). Phase 1: conv + silu of the head's q, k (its key head's) and v channels into
# shared memory, with the conv-state shift (q/k channels by the first value head of each key head only). Phase 2:
# L2 norms of q and k, the gates. Phase 3: each warp runs the delta rule for its value rows, Dk / 32 state elements
# per lane, as mlx-lm's Metal kernel does with a SIMD group. Phase 4: the gated RMS norm of the head's output
# (mlx-lm's Qwen3NextRMSNormGated: rms_norm(y) * w, times silu(z), rounded where MLX rounds).
_SOURCE = r"""
    constexpr int ConvDim = 2 * Hk * Dk + Hv * Dv;
    constexpr int RowsPerWarp = Dv / Warps;
    constexpr int PerLane = Dk / 32;
    constexpr int ZOffset = ConvDim;
    constexpr int BOffset = ConvDim + Hv * Dv;
    constexpr int AOffset = BOffset + Hv;
    const float eps = __int_as_float(EpsBits);
    const int tid = threadIdx.x;
    const int lane = tid & 31;
    const int warp = tid >> 5;
    const int n = blockIdx.z;              // b * Hv + hv
    const int b_idx = n / Hv;
    const int hv = n % Hv;
    const int hk = hv / (Hv / Hk);

    const InT* row = proj + b_idx * ProjDim;             // [qkv | z | b | a | padding]
    const InT* cs = conv_state + b_idx * (K - 1) * ConvDim;
    InT* cs_out = conv_state_out + b_idx * (K - 1) * ConvDim;

    __shared__ float sq[Dk];
    __shared__ float sk[Dk];
    __shared__ float sv[Dv];
    __shared__ float sy[Dv];
    __shared__ float partial[2][Warps];

    const bool writes_qk_state = (hv % (Hv / Hk)) == 0;
    float ssq = 0.0f, ssk = 0.0f;
    for (int i = tid; i < 2 * Dk + Dv; i += Warps * 32) {
        int c;
        if (i < Dk) c = hk * Dk + i;
        else if (i < 2 * Dk) c = Hk * Dk + hk * Dk + (i - Dk);
        else c = 2 * Hk * Dk + hv * Dv + (i - 2 * Dk);
        float acc = 0.0f;
        for (int j = 0; j < K - 1; ++j) {
            acc += static_cast<float>(conv_w[c * K + j]) * static_cast<float>(cs[j * ConvDim + c]);
        }
        acc += static_cast<float>(conv_w[c * K + K - 1]) * static_cast<float>(row[c]);
        acc = static_cast<float>(static_cast<InT>(acc));  // MLX rounds the conv output to the activation dtype
        const float x = static_cast<float>(static_cast<InT>(acc / (1.0f + expf(-acc))));
        if (i < Dk) { sq[i] = x; ssq += x * x; }
        else if (i < 2 * Dk) { sk[i - Dk] = x; ssk += x * x; }
        else sv[i - 2 * Dk] = x;
        if (i >= 2 * Dk || writes_qk_state) {  // the new conv state: drop the oldest input, append this token's
            for (int j = 0; j < K - 2; ++j) cs_out[j * ConvDim + c] = cs[(j + 1) * ConvDim + c];
            cs_out[(K - 2) * ConvDim + c] = row[c];
        }
    }
    for (int o = 16; o > 0; o >>= 1) {
        ssq += __shfl_xor_sync(0xffffffff, ssq, o);
        ssk += __shfl_xor_sync(0xffffffff, ssk, o);
    }
    if (lane == 0) { partial[0][warp] = ssq; partial[1][warp] = ssk; }
    __syncthreads();
    ssq = 0.0f; ssk = 0.0f;
    for (int w = 0; w < Warps; ++w) { ssq += partial[0][w]; ssk += partial[1][w]; }
    // mlx-lm's normalize_qk: rms_norm(x) (eps 1e-6 / Dk on the mean square), times Dk^-1 for q and Dk^-0.5 for k,
    // each result rounded to the activation dtype as MLX rounds it; so are the gate inputs below.
    const float inv_dk = 1.0f / static_cast<float>(Dk);
    const float q_rms = rsqrtf(ssq * inv_dk + 1e-6f * inv_dk);
    const float k_rms = rsqrtf(ssk * inv_dk + 1e-6f * inv_dk);
    auto rnd = [](float x) { return static_cast<float>(static_cast<InT>(x)); };

    const float a = rnd(static_cast<float>(row[AOffset + hv]) + static_cast<float>(dt_bias[hv]));
    const float softplus = rnd(a > 20.0f ? a : log1pf(expf(a)));
    const float g = expf(-expf(static_cast<float>(A_log[hv])) * softplus);
    const float beta = rnd(1.0f / (1.0f + expf(-static_cast<float>(row[BOffset + hv]))));

    float kl[PerLane], ql[PerLane];
    for (int i = 0; i < PerLane; ++i) {
        kl[i] = rnd(rnd(sk[lane + 32 * i] * k_rms) * rsqrtf(static_cast<float>(Dk)));
        ql[i] = rnd(rnd(sq[lane + 32 * i] * q_rms) * inv_dk);
    }
    const int row0 = warp * RowsPerWarp;
    float s[RowsPerWarp][PerLane];
    for (int r = 0; r < RowsPerWarp; ++r) {  // every load first: one memory latency, not one per row
        const float* s_in = state + (static_cast<size_t>(n) * Dv + row0 + r) * Dk;
        for (int i = 0; i < PerLane; ++i) s[r][i] = s_in[lane + 32 * i];
    }
    for (int r = 0; r < RowsPerWarp; ++r) {
        const int dv = row0 + r;
        float kv = 0.0f;
        for (int i = 0; i < PerLane; ++i) {
            s[r][i] *= g;
            kv += s[r][i] * kl[i];
        }
        for (int o = 16; o > 0; o >>= 1) kv += __shfl_xor_sync(0xffffffff, kv, o);
        const float delta = (sv[dv] - kv) * beta;
        float out = 0.0f;
        float* s_out = state_out + (static_cast<size_t>(n) * Dv + dv) * Dk;
        for (int i = 0; i < PerLane; ++i) {
            s[r][i] += kl[i] * delta;
            out += s[r][i] * ql[i];
            s_out[lane + 32 * i] = s[r][i];
        }
        for (int o = 16; o > 0; o >>= 1) out += __shfl_xor_sync(0xffffffff, out, o);
        if (lane == 0) sy[dv] = static_cast<float>(static_cast<InT>(out));
    }
    __syncthreads();
    if (warp == 0) {
        float ss = 0.0f;
        for (int i = lane; i < Dv; i += 32) ss += sy[i] * sy[i];
        for (int o = 16; o > 0; o >>= 1) ss += __shfl_xor_sync(0xffffffff, ss, o);
        if (lane == 0) partial[0][0] = ss;
    }
    __syncthreads();
    const float inv_rms = rsqrtf(partial[0][0] / static_cast<float>(Dv) + eps);
    for (int i = tid; i < Dv; i += Warps * 32) {
        const float normed = static_cast<float>(static_cast<InT>(sy[i] * inv_rms * static_cast<float>(norm_w[i])));
        const float z = static_cast<float>(row[ZOffset + hv * Dv + i]);
        y[n * Dv + i] = static_cast<InT>(z / (1.0f + expf(-z)) * normed);
    }
"""


@functools.cache
def _kernel() -> Any:
    return mx.fast.cuda_kernel(
        name="voicepipe_gated_delta_decode",
        input_names=["proj", "conv_state", "conv_w", "A_log", "dt_bias", "state", "norm_w"],
        output_names=["y", "conv_state_out", "state_out"],
        source=_SOURCE,
    )


def decode_kernel_available() -> bool:
    """True when ``VOICEPIPE_MLX_DECODE_KERNEL=1`` asks for the kernel and the default device is a CUDA GPU. The same
    switch turns on the decode step's other CUDA kernels (``voicepipe.llm.mlx_norm_kernels``, ``mlx_attention_kernel``,
    ``mlx_matvec_kernels``).

    Opt-in for now: in fp32 the kernel matches mlx-lm (greedy tokens identical, logits within 1e-5), but in bf16 the
    random-weight checkpoint's greedy tokens part from mlx-lm's after the first step; until that is checked with real
    weights, the default path is mlx-lm's ops (with the fused projections, which are bit-identical).
    """
    if os.environ.get("VOICEPIPE_MLX_DECODE_KERNEL", "0") != "1":
        return False
    return mx.default_device() == mx.gpu and mx.cuda.is_available()


def gated_delta_decode_step(
    proj: mx.array,
    conv_state: mx.array,
    conv_weight: mx.array,
    A_log: mx.array,  # noqa: N803 - mlx-lm's parameter name
    dt_bias: mx.array,
    state: mx.array,
    norm_weight: mx.array,
    norm_eps: float,
    *,
    key_heads: int,
    value_heads: int,
    key_dim: int,
    value_dim: int,
) -> tuple[mx.array, mx.array, mx.array]:
    """One decode token of a Gated-DeltaNet layer, up to (not including) its output projection.

    Args:
        proj: ``[B, 1, P]``, the fused input projection ``[qkv (conv_dim) | z | b | a]`` (P may be padded).
        conv_state: ``[B, K - 1, conv_dim]``, the last K-1 conv inputs (mlx-lm's ``cache[0]``), in ``proj``'s dtype.
        conv_weight: mlx-lm's depthwise ``conv1d.weight``, ``[conv_dim, K, 1]``.
        A_log, dt_bias: ``[Hv]``; state: ``[B, Hv, Dv, Dk]`` float32 (mlx-lm's ``cache[1]``).
        norm_weight, norm_eps: the layer's gated RMS norm (``[Dv]``).
        key_dim, value_dim: per-head sizes Dk (a multiple of 32) and Dv (a multiple of 16).

    Returns:
        ``(out [B, 1, Hv * Dv], new conv_state, new state)``: ``out`` is what mlx-lm's layer feeds ``out_proj``.
    """
    batch = proj.shape[0]
    kernel_size = conv_weight.shape[1]
    if key_dim % 32 or value_dim % _WARPS:
        raise ValueError(f"decode kernel needs Dk % 32 == 0 and Dv % {_WARPS} == 0, got Dk={key_dim}, Dv={value_dim}")
    eps_bits = struct.unpack("<i", struct.pack("<f", norm_eps))[0]
    out, conv_out, state_out = _kernel()(
        inputs=[proj, conv_state, conv_weight, A_log, dt_bias, state, norm_weight],
        template=[
            ("InT", proj.dtype),
            ("Hk", key_heads),
            ("Hv", value_heads),
            ("Dk", key_dim),
            ("Dv", value_dim),
            ("K", kernel_size),
            ("ProjDim", proj.shape[-1]),
            ("Warps", _WARPS),
            ("EpsBits", eps_bits),
        ],
        grid=(32 * _WARPS, 1, batch * value_heads),
        threadgroup=(32 * _WARPS, 1, 1),
        output_shapes=[(batch, 1, value_heads * value_dim), conv_state.shape, state.shape],
        output_dtypes=[proj.dtype, conv_state.dtype, state.dtype],
    )
    return out, conv_out, state_out
