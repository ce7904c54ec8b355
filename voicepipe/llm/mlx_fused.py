"""Fused projections for mlx-lm's Qwen3.5 model: fewer, larger matmuls per layer.

mlx-lm's Qwen3.5 layers multiply the same input by several weight matrices one after another: the Gated-DeltaNet's
q/k/v, z, b and a projections (four matmuls, two of them only 16 rows), the MLP's gate and up projections, the
attention's q, k and v. At one decode token each matmul is a separate small kernel, and decode on a GPU is bound by
launching kernels, not by moving the weights (BENCHMARKS.md). :func:`fuse_projections` concatenates each group's
weights along the output axis once, at load time (quantized weights, scales and biases alike: affine groups run along
the input axis, so a row's quantization does not depend on its neighbours), and swaps the layers' classes for ones
that run one matmul and split its output. Each output element is the same dot product as before, so results match
the unfused model (tests/llm/test_mlx_fused.py).

The Gated-DeltaNet decode step (one token, a cached conv state) also runs conv, normalisation, gating, the state
update and the gated output norm as one CUDA kernel when one is available (``voicepipe.llm.mlx_decode_kernel``); otherwise mlx-lm's ops.

Saved checkpoints keep mlx-lm's unfused layout (``convert_checkpoint`` does not fuse), so mlx-lm can read them.
Import this module lazily: it imports ``mlx`` and ``mlx_lm`` at the top.
"""

from __future__ import annotations

import copy
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models import qwen3_5, qwen3_next
from mlx_lm.models.activations import swiglu
from mlx_lm.models.base import scaled_dot_product_attention

# Module-level names the layers below call, so that voicepipe.llm.mlx_gated_delta's prefill hook can wrap
# ``gated_delta_update`` here as it does in mlx-lm's model module.
from mlx_lm.models.gated_delta import gated_delta_update, normalize_qk

from voicepipe.llm.mlx_decode_kernel import decode_kernel_available, gated_delta_decode_step

__all__ = ["FusedAttention", "FusedGatedDeltaNet", "FusedMLP", "concat_linears", "fuse_projections"]


def concat_linears(linears: list[nn.Module]) -> nn.Module | None:
    """One linear layer computing ``concat([m(x) for m in linears], -1)``; None when they cannot be joined (mixed
    classes or quantization settings). Works for ``nn.Linear`` and ``nn.QuantizedLinear`` (and subclasses)."""
    first = linears[0]
    settings = ("group_size", "bits", "mode")
    for other in linears[1:]:
        if type(other) is not type(first) or set(other.keys()) != set(first.keys()):
            return None
        if any(getattr(other, s, None) != getattr(first, s, None) for s in settings):
            return None
    fused = copy.copy(first)
    for key, value in first.items():
        if isinstance(value, mx.array):
            fused[key] = mx.concatenate([m[key] for m in linears], axis=0)
    return fused


class FusedGatedDeltaNet(qwen3_5.GatedDeltaNet):
    """mlx-lm's ``GatedDeltaNet`` with ``in_proj_qkv/z/b/a`` as one ``in_proj`` (output ``[qkv | z | b | a]``)."""

    def __call__(self, inputs: mx.array, mask: mx.array | None = None, cache: Any | None = None) -> mx.array:
        return self.from_projection(self.in_proj(inputs), mask, cache)

    def from_projection(self, proj: mx.array, mask: mx.array | None = None, cache: Any | None = None) -> mx.array:
        """The layer's output for its ``in_proj`` output ``proj`` ``[B, L, P]`` (computed by the caller, e.g. together
        with the norm before it: ``voicepipe.llm.mlx_matvec_kernels.norm_matmul``)."""
        batch, length, _ = proj.shape
        z_start = self.conv_dim
        b_start = z_start + self.value_dim
        a_start = b_start + self.num_v_heads
        z = proj[..., z_start:b_start].reshape(batch, length, self.num_v_heads, self.head_v_dim)
        if self._use_decode_kernel(proj, mask, cache):
            out, cache[0], cache[1] = gated_delta_decode_step(
                proj,
                cache[0],
                self.conv1d.weight,
                self.A_log,
                self.dt_bias,
                cache[1],
                self.norm.weight,
                self.norm.eps,
                key_heads=self.num_k_heads,
                value_heads=self.num_v_heads,
                key_dim=self.head_k_dim,
                value_dim=self.head_v_dim,
            )
            cache.advance(1)
            return self.out_proj(out)

        # mlx-lm's GatedDeltaNet.__call__ from here on, with the projections sliced out of ``proj``.
        qkv = proj[..., :z_start]
        b = proj[..., b_start:a_start]
        a = proj[..., a_start:]
        if cache is not None and cache[0] is not None:
            conv_state = cache[0]
        else:
            conv_state = mx.zeros((batch, self.conv_kernel_size - 1, self.conv_dim), dtype=proj.dtype)
        if mask is not None:
            qkv = mx.where(mask[..., None], qkv, 0)
        conv_input = mx.concatenate([conv_state, qkv], axis=1)
        if cache is not None:
            n_keep = self.conv_kernel_size - 1
            if cache.lengths is not None:
                ends = mx.clip(cache.lengths, 0, length)
                positions = (ends[:, None] + mx.arange(n_keep))[..., None]
                cache[0] = mx.take_along_axis(conv_input, positions, axis=1)
            else:
                cache[0] = mx.contiguous(conv_input[:, -n_keep:, :])
        conv_out = nn.silu(self.conv1d(conv_input))
        q, k, v = (
            t.reshape(batch, length, h, d)
            for t, h, d in zip(
                mx.split(conv_out, [self.key_dim, 2 * self.key_dim], -1),
                [self.num_k_heads, self.num_k_heads, self.num_v_heads],
                [self.head_k_dim, self.head_k_dim, self.head_v_dim],
                strict=True,
            )
        )
        state = cache[1] if cache else None
        q, k = normalize_qk(q, k, inv_scale=self.head_k_dim**-0.5, eps=1e-6)
        out, state = gated_delta_update(
            q, k, v, a, b, self.A_log, self.dt_bias, state, mask, use_kernel=not self.training
        )
        if cache is not None:
            cache[1] = state
            cache.advance(length)
        out = self.norm(out, z)
        return self.out_proj(out.reshape(batch, length, -1))

    def _use_decode_kernel(self, proj: mx.array, mask: mx.array | None, cache: Any | None) -> bool:
        return (
            proj.shape[1] == 1
            and mask is None
            and cache is not None
            and cache[0] is not None
            and cache[1] is not None
            and cache.lengths is None
            and cache[0].dtype == proj.dtype
            and cache[1].dtype == mx.float32
            and self.head_k_dim % 32 == 0
            and self.head_v_dim % 16 == 0
            and type(self.norm) is qwen3_next.Qwen3NextRMSNormGated
            and decode_kernel_available()
        )


class FusedAttention(qwen3_next.Qwen3NextAttention):
    """mlx-lm's ``Qwen3NextAttention`` with ``q_proj``, ``k_proj`` and ``v_proj`` as one ``qkv_proj``."""

    def project(self, x: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """(queries [B, L, H, D], gate [B, L, H * D], keys [B, L, Hkv * D], values [B, L, Hkv * D]), unnormalised."""
        return self.split_projection(self.qkv_proj(x))

    def split_projection(self, out: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
        """:meth:`project`'s four parts of a ``qkv_proj`` output (views, no copies)."""
        batch, length, _ = out.shape
        q_size = 2 * self.num_attention_heads * self.head_dim
        kv_size = self.num_key_value_heads * self.head_dim
        queries, gate = mx.split(out[..., :q_size].reshape(batch, length, self.num_attention_heads, -1), 2, axis=-1)
        return (
            queries,
            gate.reshape(batch, length, -1),
            out[..., q_size : q_size + kv_size],
            out[..., q_size + kv_size :],
        )

    def __call__(self, x: mx.array, mask: mx.array | None = None, cache: Any | None = None) -> mx.array:
        batch, length, _ = x.shape
        queries, gate, keys, values = self.project(x)
        queries = self.q_norm(queries).transpose(0, 2, 1, 3)
        keys = self.k_norm(keys.reshape(batch, length, self.num_key_value_heads, -1)).transpose(0, 2, 1, 3)
        values = values.reshape(batch, length, self.num_key_value_heads, -1).transpose(0, 2, 1, 3)
        if cache is not None:
            queries = self.rope(queries, offset=cache.offset)
            keys = self.rope(keys, offset=cache.offset)
            keys, values = cache.update_and_fetch(keys, values)
        else:
            queries = self.rope(queries)
            keys = self.rope(keys)
        output = scaled_dot_product_attention(queries, keys, values, cache=cache, scale=self.scale, mask=mask)
        output = output.transpose(0, 2, 1, 3).reshape(batch, length, -1)
        return self.o_proj(output * mx.sigmoid(gate))


def attention_projections(attn: nn.Module, x: mx.array) -> tuple[mx.array, mx.array, mx.array, mx.array]:
    """:meth:`FusedAttention.project` for a fused or an unfused mlx-lm ``Qwen3NextAttention``."""
    if isinstance(attn, FusedAttention):
        return attn.project(x)
    batch, length, _ = x.shape
    queries, gate = mx.split(attn.q_proj(x).reshape(batch, length, attn.num_attention_heads, -1), 2, axis=-1)
    return queries, gate.reshape(batch, length, -1), attn.k_proj(x), attn.v_proj(x)


class FusedMLP(qwen3_next.Qwen3NextMLP):
    """mlx-lm's ``Qwen3NextMLP`` with ``gate_proj`` and ``up_proj`` as one ``gate_up_proj``."""

    def __call__(self, x: mx.array) -> mx.array:
        gate, up = mx.split(self.gate_up_proj(x), 2, axis=-1)
        return self.down_proj(swiglu(gate, up))


_GROUPS: dict[type, tuple[type, str, tuple[str, ...]]] = {
    qwen3_5.GatedDeltaNet: (FusedGatedDeltaNet, "in_proj", ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a")),
    qwen3_next.Qwen3NextAttention: (FusedAttention, "qkv_proj", ("q_proj", "k_proj", "v_proj")),
    qwen3_next.Qwen3NextMLP: (FusedMLP, "gate_up_proj", ("gate_proj", "up_proj")),
}


def fuse_projections(model: nn.Module) -> int:
    """Fuse the projections of every mlx-lm Qwen3.5 layer of ``model`` in place; returns how many modules changed.

    Only modules whose class is exactly mlx-lm's (not a subclass someone else made, not a sharded layer) are fused;
    the rest keep mlx-lm's code. Weights captured by an ``mx.compile``-d step before fusing stay valid but unfused:
    build compiled steps after this.
    """
    fused = 0
    for _, module in list(model.named_modules()):
        group = _GROUPS.get(type(module))
        if group is None or getattr(module, "sharding_group", None) is not None:
            continue
        cls, name, parts = group
        joined = concat_linears([module[p] for p in parts])
        if joined is None:
            continue
        for part in parts:
            delattr(module, part)
        setattr(module, name, joined)
        module.__class__ = cls
        fused += 1
    mx.eval(model.parameters())
    return fused
