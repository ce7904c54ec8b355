"""Qwen3.5 text model re-expressed in plain torch for tracing to CoreML.

transformers' implementation cannot be traced into a stateful CoreML program as is: its caches are Python objects,
the chunked gated delta rule calls ``torch.linalg.solve_triangular`` (no CoreML op) and RoPE angles are computed on
the fly (too imprecise in fp16 at long positions). This module computes the same function with:

- every piece of recurrent context in registered buffers, which ``coremltools`` turns into CoreML states:
  ``key_cache`` / ``value_cache`` ``[n_full_layers, kv_heads, max_context, head_dim]`` for the full-attention layers,
  ``conv_state`` ``[n_linear_layers, conv_dim, kernel - 1]`` and ``recurrent_state``
  ``[n_linear_layers, v_heads, k_dim, v_dim]`` for the Gated-DeltaNet layers;
- one ``forward(input_ids, attention_mask, position)`` for both functions: a prefill chunk of ``seq_len`` tokens
  (right-padded, ``attention_mask`` 0 on padding) or a decode step of one token. ``position`` is the number of
  tokens already in the cache. Logits are returned for the last real token only: ``[1, 1, vocab]``;
- the chunked gated delta rule for a chunk of ``seq_len`` tokens (a power of two) with the UT system inverted by
  matrix products in 8-blocks joined pairwise (CoreML has no triangular solve), the recurrent form for one token;
- RoPE cos/sin gathered from precomputed fp32 tables.

The sequence length is a Python constant of the trace (``coremltools`` mis-converts shape arithmetic on torch 2.13),
set with ``with model.tracing(seq_len):`` before ``torch.jit.trace``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Qwen35Shape", "Qwen35ForCoreML", "load_checkpoint", "read_shape"]

STATE_NAMES = ("key_cache", "value_cache", "conv_state", "recurrent_state")
_MASK_VALUE = -1e4  # additive attention mask; representable in fp16, exp() underflows to exactly 0


@dataclass(frozen=True)
class Qwen35Shape:
    """The text-model hyper-parameters the re-expression needs (read from an HF ``config.json``)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int
    rms_norm_eps: float
    rope_theta: float
    partial_rotary_factor: float
    tie_word_embeddings: bool
    extra: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "full_attention"]

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == "linear_attention"]

    @property
    def conv_dim(self) -> int:
        return 2 * self.linear_num_key_heads * self.linear_key_head_dim + self.linear_num_value_heads * (
            self.linear_value_head_dim
        )

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.partial_rotary_factor)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Qwen35Shape:
        """Build from a ``config.json`` dict: a text config (``qwen3_5_text``) or a full one with ``text_config``."""
        text = config.get("text_config", config)
        rope = dict(text.get("rope_parameters") or {})
        n_layers = int(text["num_hidden_layers"])
        layer_types = text.get("layer_types") or [
            "full_attention" if (i + 1) % int(text.get("full_attention_interval", 4)) == 0 else "linear_attention"
            for i in range(n_layers)
        ]
        tie = text.get("tie_word_embeddings", config.get("tie_word_embeddings", False))
        return cls(
            vocab_size=int(text["vocab_size"]),
            hidden_size=int(text["hidden_size"]),
            intermediate_size=int(text["intermediate_size"]),
            layer_types=tuple(layer_types[:n_layers]),
            num_attention_heads=int(text["num_attention_heads"]),
            num_key_value_heads=int(text["num_key_value_heads"]),
            head_dim=int(text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]),
            linear_num_key_heads=int(text["linear_num_key_heads"]),
            linear_num_value_heads=int(text["linear_num_value_heads"]),
            linear_key_head_dim=int(text["linear_key_head_dim"]),
            linear_value_head_dim=int(text["linear_value_head_dim"]),
            linear_conv_kernel_dim=int(text["linear_conv_kernel_dim"]),
            rms_norm_eps=float(text.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope.get("rope_theta", text.get("rope_theta", 10000.0))),
            partial_rotary_factor=float(rope.get("partial_rotary_factor", text.get("partial_rotary_factor", 1.0))),
            tie_word_embeddings=bool(tie),
        )


def read_shape(checkpoint: str | Path) -> Qwen35Shape:
    """Read ``config.json`` of an HF checkpoint directory."""
    return Qwen35Shape.from_config(json.loads((Path(checkpoint) / "config.json").read_text()))


class _RMSNorm(nn.Module):
    """RMSNorm with the checkpoint's zero-centred weight: ``scale`` holds ``1 + w`` (added once, in fp32, at load)."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.scale


class _MLP(nn.Module):
    def __init__(self, hidden: int, inter: int) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class _FullAttention(nn.Module):
    """Gated-output GQA attention with q/k norms and partial rotary; K/V live in the shared cache buffers."""

    def __init__(self, s: Qwen35Shape) -> None:
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = s.num_attention_heads, s.num_key_value_heads, s.head_dim
        self.rot = s.rotary_dim
        self.q_proj = nn.Linear(s.hidden_size, self.n_heads * self.head_dim * 2, bias=False)
        self.k_proj = nn.Linear(s.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(s.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, s.hidden_size, bias=False)
        self.q_norm = _RMSNorm(self.head_dim, s.rms_norm_eps)
        self.k_norm = _RMSNorm(self.head_dim, s.rms_norm_eps)

    def forward(self, h, cos, sin, mask, key_cache, value_cache, index: int, position, seq_len: int):
        hd, n_kv, groups = self.head_dim, self.n_kv, self.n_heads // self.n_kv
        qg = self.q_proj(h).view(seq_len, self.n_heads, 2 * hd)
        q, gate = qg[..., :hd], qg[..., hd:].reshape(seq_len, self.n_heads * hd)
        q = self.q_norm(q).transpose(0, 1)  # [heads, S, hd]
        k = self.k_norm(self.k_proj(h).view(seq_len, n_kv, hd)).transpose(0, 1)
        v = self.v_proj(h).view(seq_len, n_kv, hd).transpose(0, 1)
        q, k = _rope(q, cos, sin, self.rot), _rope(k, cos, sin, self.rot)
        # Write this chunk's keys/values at [position, position + seq_len), then attend over the whole cache; the
        # causal mask hides future slots (including stale ones left by the padding of an earlier chunk).
        key_cache[index, :, position : position + seq_len, :] = k
        value_cache[index, :, position : position + seq_len, :] = v
        keys, values = key_cache[index], value_cache[index]  # [kv, ctx, hd]
        q = q.reshape(n_kv, groups * seq_len, hd)  # query heads grouped under their kv head
        scores = torch.matmul(q, keys.transpose(1, 2)) * (hd**-0.5) + mask.repeat(groups, 1)
        out = torch.matmul(torch.softmax(scores, dim=-1), values)  # [kv, groups * S, hd]
        out = out.reshape(self.n_heads, seq_len, hd).transpose(0, 1).reshape(seq_len, self.n_heads * hd)
        return self.o_proj(out * torch.sigmoid(gate))


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, rot: int) -> torch.Tensor:
    # rot is a Python int: shape arithmetic in the trace would be mis-converted by coremltools
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    half = rot // 2
    rotated = torch.cat((-x_rot[..., half:], x_rot[..., :half]), dim=-1)
    return torch.cat((x_rot * cos + rotated * sin, x_pass), dim=-1)


def _l2norm(x: torch.Tensor) -> torch.Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


class _GatedDeltaNet(nn.Module):
    """Gated-DeltaNet token mixer with its causal-conv and recurrent state in the shared buffers."""

    def __init__(self, s: Qwen35Shape) -> None:
        super().__init__()
        self.nk, self.nv = s.linear_num_key_heads, s.linear_num_value_heads
        self.dk, self.dv = s.linear_key_head_dim, s.linear_value_head_dim
        self.kernel = s.linear_conv_kernel_dim
        self.conv_dim = conv_dim = s.conv_dim
        self.in_proj_qkv = nn.Linear(s.hidden_size, conv_dim, bias=False)
        self.in_proj_z = nn.Linear(s.hidden_size, self.nv * self.dv, bias=False)
        self.in_proj_b = nn.Linear(s.hidden_size, self.nv, bias=False)
        self.in_proj_a = nn.Linear(s.hidden_size, self.nv, bias=False)
        self.conv_weight = nn.Parameter(torch.zeros(conv_dim, 1, self.kernel), requires_grad=False)
        self.neg_a = nn.Parameter(torch.zeros(self.nv), requires_grad=False)  # -exp(A_log), computed at load
        self.dt_bias = nn.Parameter(torch.zeros(self.nv), requires_grad=False)
        self.norm_weight = nn.Parameter(torch.ones(self.dv), requires_grad=False)  # gated norm: plain w, no +1
        self.eps = s.rms_norm_eps
        self.out_proj = nn.Linear(self.nv * self.dv, s.hidden_size, bias=False)

    def forward(self, h, valid, n_real, conv_state, recurrent_state, index: int, seq_len: int):
        nk, nv, dk, dv, km1 = self.nk, self.nv, self.dk, self.dv, self.kernel - 1
        x = self.in_proj_qkv(h).transpose(0, 1).unsqueeze(0)  # [1, conv_dim, S]
        full = torch.cat((conv_state[index : index + 1], x), dim=-1)  # [1, conv_dim, km1 + S]
        if seq_len == 1:
            new_conv = full[:, :, 1:]
        else:
            # The new conv state is the km1 inputs before the first padding token: a one-hot selection, since the
            # number of real tokens is data-dependent.
            rows = torch.arange(km1 + seq_len, dtype=torch.int32).unsqueeze(1)
            cols = torch.arange(km1, dtype=torch.int32).unsqueeze(0) + n_real
            new_conv = torch.matmul(full, (rows == cols).to(full.dtype))
        conv_state[index] = new_conv[0]
        mixed = F.silu(F.conv1d(full, self.conv_weight, groups=self.conv_dim))[0].transpose(0, 1)  # [S, conv_dim]
        q = mixed[:, : nk * dk].reshape(seq_len, nk, dk)
        k = mixed[:, nk * dk : 2 * nk * dk].reshape(seq_len, nk, dk)
        v = mixed[:, 2 * nk * dk :].reshape(seq_len, nv, dv).transpose(0, 1)  # [nv, S, dv]
        if nv != nk:
            q, k = q.repeat_interleave(nv // nk, dim=1), k.repeat_interleave(nv // nk, dim=1)
        q = (_l2norm(q) * dk**-0.5).transpose(0, 1)  # [nv, S, dk]
        k = _l2norm(k).transpose(0, 1)
        # Padding tokens get beta = 0 (no write) and g = 0 (no decay): the state passes through them unchanged.
        beta = (torch.sigmoid(self.in_proj_b(h)) * valid).transpose(0, 1)  # [nv, S]
        g = (self.neg_a * F.softplus(self.in_proj_a(h) + self.dt_bias) * valid).transpose(0, 1)
        state = recurrent_state[index]  # [nv, dk, dv]
        if seq_len == 1:
            out, state = _delta_step(q, k, v, g, beta, state)
        else:
            out, state = _delta_chunk(q, k, v, g, beta, state)
        recurrent_state[index] = state
        z = self.in_proj_z(h).reshape(seq_len, nv, dv)
        out = out.transpose(0, 1)  # [S, nv, dv]
        out = out * torch.rsqrt(out.pow(2).mean(-1, keepdim=True) + self.eps) * self.norm_weight * F.silu(z)
        return self.out_proj(out.reshape(seq_len, nv * dv))


def _delta_step(q, k, v, g, beta, state):
    """Recurrent gated delta rule for one token. q, k: [H, 1, dk]; v: [H, 1, dv]; g, beta: [H, 1]; state [H, dk, dv]."""
    state = state * torch.exp(g).unsqueeze(-1)
    kv_mem = torch.matmul(k, state)  # [H, 1, dv]
    delta = (v - kv_mem) * beta.unsqueeze(-1)
    state = state + torch.matmul(k.transpose(1, 2), delta)
    return torch.matmul(q, state), state


_BASE_BLOCK = 8


def _unit_lower_inverse(strict: torch.Tensor) -> torch.Tensor:
    """``(I + S)^-1`` for strictly lower-triangular ``S`` ``[H, C, C]`` (C a power of two), with matrix products only
    (CoreML has no triangular solve).

    Diagonal 8-blocks use the nilpotent series ``(I - S)(I + S^2)(I + S^4)``, whose terms stay small over 8 rows. Over
    a whole chunk the powers of S grow like binomials when keys are aligned (1e17 at C = 64) and cancel
    catastrophically (fp16 would overflow outright), so larger blocks are joined two by two, as
    flash-linear-attention's ``solve_tril`` does: ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``, which
    only multiplies bounded inverses. Blocks are Python-level slices, so the trace has static shapes.
    """
    c = strict.shape[-1]  # a trace constant
    size = min(_BASE_BLOCK, c)
    eye = torch.eye(size, dtype=strict.dtype)
    inverses = []
    for i in range(0, c, size):
        power = -strict[:, i : i + size, i : i + size]
        inverse = eye + power
        span = 2
        while span < size:
            power = torch.matmul(power, power)
            inverse = inverse + torch.matmul(inverse, power)
            span *= 2
        inverses.append(inverse)
    while size < c:
        merged = []
        for j in range(0, len(inverses), 2):
            upper, lower = inverses[j], inverses[j + 1]
            row = j * size
            off = strict[:, row + size : row + 2 * size, row : row + size]
            corner = -torch.matmul(torch.matmul(lower, off), upper)
            top = torch.cat((upper, torch.zeros_like(upper)), dim=-1)
            merged.append(torch.cat((top, torch.cat((corner, lower), dim=-1)), dim=-2))
        inverses, size = merged, size * 2
    return inverses[0]


def _delta_chunk(q, k, v, g, beta, state):
    """Chunked gated delta rule over one chunk of C tokens (same maths as transformers' torch_chunk_gated_delta_rule;
    the UT system is inverted by ``_unit_lower_inverse``)."""
    c = q.shape[1]  # only used as a trace constant (mask sizes)
    lower = torch.tril(torch.ones(c, c, dtype=q.dtype))
    strict = lower - torch.eye(c, dtype=q.dtype)
    cum = torch.cumsum(g, dim=-1)  # [H, C], non-increasing
    diff = cum.unsqueeze(-1) - cum.unsqueeze(-2)  # [H, C, C]: cum_i - cum_j
    decay = torch.exp(torch.clamp(diff, max=0.0)) * lower  # clamp: the (masked) upper triangle must not overflow
    k_beta, v_beta = k * beta.unsqueeze(-1), v * beta.unsqueeze(-1)
    inv = _unit_lower_inverse(torch.matmul(k_beta, k.transpose(1, 2)) * decay * strict)
    new_values = torch.matmul(inv, v_beta)
    k_cumdecay = torch.matmul(inv, k_beta * torch.exp(cum).unsqueeze(-1))
    intra = torch.matmul(q, k.transpose(1, 2)) * decay
    v_new = new_values - torch.matmul(k_cumdecay, state)
    out = torch.matmul(q * torch.exp(cum).unsqueeze(-1), state) + torch.matmul(intra, v_new)
    last = cum[:, -1:]  # [H, 1]
    k_decayed = k * torch.exp(last - cum).unsqueeze(-1)
    state = state * torch.exp(last).unsqueeze(-1) + torch.matmul(k_decayed.transpose(1, 2), v_new)
    return out, state


class _Layer(nn.Module):
    def __init__(self, s: Qwen35Shape, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.input_layernorm = _RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.post_attention_layernorm = _RMSNorm(s.hidden_size, s.rms_norm_eps)
        self.mixer = _FullAttention(s) if kind == "full_attention" else _GatedDeltaNet(s)
        self.mlp = _MLP(s.hidden_size, s.intermediate_size)


class Qwen35ForCoreML(nn.Module):
    """The Qwen3.5 text model with explicit state buffers, traceable to a stateful CoreML program."""

    def __init__(self, shape: Qwen35Shape, *, max_context: int) -> None:
        super().__init__()
        self.shape, self.max_context = shape, max_context
        self.seq_len = 1
        self.embed_tokens = nn.Embedding(shape.vocab_size, shape.hidden_size)
        self.layers = nn.ModuleList(_Layer(shape, t) for t in shape.layer_types)
        self.norm = _RMSNorm(shape.hidden_size, shape.rms_norm_eps)
        self.lm_head = nn.Linear(shape.hidden_size, shape.vocab_size, bias=False)
        if shape.tie_word_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        inv_freq = 1.0 / (
            shape.rope_theta ** (torch.arange(0, shape.rotary_dim, 2, dtype=torch.float64) / shape.rotary_dim)
        )
        angles = torch.arange(max_context, dtype=torch.float64).unsqueeze(1) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos().float(), persistent=False)
        self.register_buffer("rope_sin", angles.sin().float(), persistent=False)
        n_full, n_lin = len(shape.full_layers), len(shape.linear_layers)
        kv = (n_full, shape.num_key_value_heads, max_context, shape.head_dim)
        self.register_buffer("key_cache", torch.zeros(kv))
        self.register_buffer("value_cache", torch.zeros(kv))
        self.register_buffer("conv_state", torch.zeros(n_lin, shape.conv_dim, shape.linear_conv_kernel_dim - 1))
        self.register_buffer(
            "recurrent_state",
            torch.zeros(n_lin, shape.linear_num_value_heads, shape.linear_key_head_dim, shape.linear_value_head_dim),
        )
        slots: list[int] = []
        counts = {"full_attention": 0, "linear_attention": 0}
        for t in shape.layer_types:
            slots.append(counts[t])
            counts[t] += 1
        self._slots = slots

    def state_shapes(self) -> dict[str, tuple[int, ...]]:
        """Name -> shape of each state buffer (the CoreML states)."""
        return {name: tuple(getattr(self, name).shape) for name in STATE_NAMES}

    @contextlib.contextmanager
    def tracing(self, seq_len: int) -> Iterator[Qwen35ForCoreML]:
        """Fix the number of tokens per call (a trace constant) for the duration of the block."""
        previous, self.seq_len = self.seq_len, seq_len
        try:
            yield self
        finally:
            self.seq_len = previous

    @torch.no_grad()
    def reset_state(self) -> None:
        for name in STATE_NAMES:
            getattr(self, name).zero_()

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        """``input_ids``/``attention_mask`` [1, seq_len] int32 (mask 1 = real token, real tokens first),
        ``position`` [1] int32 = tokens already cached. Returns logits [1, 1, vocab] of the last real token."""
        seq_len = self.seq_len
        start = position[0]
        valid = attention_mask[0].to(self.rope_cos.dtype).unsqueeze(1)  # [S, 1]
        n_real = attention_mask.sum().to(torch.int32)
        h = self.embed_tokens(input_ids[0].to(torch.int64))  # [S, hidden]
        # Callers keep position + seq_len <= max_context (the KV write needs the room; no clamp here: CoreML clamps
        # in fp16, which cannot represent positions above 2048 exactly).
        positions = start + torch.arange(seq_len, dtype=torch.int32)
        cos = self.rope_cos[positions.to(torch.int64)]
        sin = self.rope_sin[positions.to(torch.int64)]
        slots = torch.arange(self.max_context, dtype=torch.int32).unsqueeze(0)
        mask = torch.where(slots <= positions.unsqueeze(1), 0.0, _MASK_VALUE).to(cos.dtype)  # [S, ctx]
        for layer, slot in zip(self.layers, self._slots, strict=True):
            x = layer.input_layernorm(h)
            if layer.kind == "full_attention":
                x = layer.mixer(x, cos, sin, mask, self.key_cache, self.value_cache, slot, start, seq_len)
            else:
                x = layer.mixer(x, valid, n_real, self.conv_state, self.recurrent_state, slot, seq_len)
            h = h + x
            h = h + layer.mlp(layer.post_attention_layernorm(h))
        if seq_len > 1:  # keep the last real token only
            pick = (torch.arange(seq_len, dtype=torch.int32) == n_real - 1).to(h.dtype).unsqueeze(0)
            h = torch.matmul(pick, h)
        return self.lm_head(self.norm(h)).unsqueeze(0)


def _weight_map(shape: Qwen35Shape) -> dict[str, tuple[str, str]]:
    """Our parameter name -> (checkpoint name without the model prefix, transform)."""
    m: dict[str, tuple[str, str]] = {
        "embed_tokens.weight": ("embed_tokens.weight", "id"),
        "norm.scale": ("norm.weight", "plus1"),
    }
    for i, kind in enumerate(shape.layer_types):
        p, q = f"layers.{i}.", f"layers.{i}."
        m[p + "input_layernorm.scale"] = (q + "input_layernorm.weight", "plus1")
        m[p + "post_attention_layernorm.scale"] = (q + "post_attention_layernorm.weight", "plus1")
        for proj in ("gate_proj", "up_proj", "down_proj"):
            m[p + f"mlp.{proj}.weight"] = (q + f"mlp.{proj}.weight", "id")
        if kind == "full_attention":
            for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
                m[p + f"mixer.{proj}.weight"] = (q + f"self_attn.{proj}.weight", "id")
            m[p + "mixer.q_norm.scale"] = (q + "self_attn.q_norm.weight", "plus1")
            m[p + "mixer.k_norm.scale"] = (q + "self_attn.k_norm.weight", "plus1")
        else:
            a = q + "linear_attn."
            for proj in ("in_proj_qkv", "in_proj_z", "in_proj_b", "in_proj_a", "out_proj"):
                m[p + f"mixer.{proj}.weight"] = (a + f"{proj}.weight", "id")
            m[p + "mixer.conv_weight"] = (a + "conv1d.weight", "id")
            m[p + "mixer.neg_a"] = (a + "A_log", "neg_exp")
            m[p + "mixer.dt_bias"] = (a + "dt_bias", "id")
            m[p + "mixer.norm_weight"] = (a + "norm.weight", "id")
    return m


def _checkpoint_tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(checkpoint.glob("*.safetensors"))
    if not files:
        from voicepipe.errors import ModelLoadError

        raise ModelLoadError(f"{checkpoint}: no *.safetensors files; pass an HF checkpoint directory")
    tensors: dict[str, torch.Tensor] = {}
    for f in files:
        tensors.update(load_file(str(f)))
    return tensors


def load_checkpoint(checkpoint: str | Path, *, max_context: int) -> Qwen35ForCoreML:
    """Build the re-expression from an HF Qwen3.5 checkpoint directory (text-only or the full vision-language one),
    in fp32."""
    from voicepipe.errors import ModelLoadError

    checkpoint = Path(checkpoint)
    shape = read_shape(checkpoint)
    tensors = _checkpoint_tensors(checkpoint)
    prefix = next(
        (p for p in ("model.language_model.", "model.", "") if f"{p}embed_tokens.weight" in tensors),
        None,
    )
    if prefix is None:
        raise ModelLoadError(f"{checkpoint}: no embed_tokens.weight; is this a Qwen3.5 checkpoint?")
    model = Qwen35ForCoreML(shape, max_context=max_context)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for ours, (theirs, how) in _weight_map(shape).items():
            key = prefix + theirs
            if key not in tensors:
                raise ModelLoadError(f"{checkpoint}: tensor {key} is missing; is this a Qwen3.5 checkpoint?")
            t = tensors.pop(key).to(torch.float32)  # pop: the full model need not be held twice
            if how == "plus1":
                t = t + 1.0
            elif how == "neg_exp":
                t = -torch.exp(t)
            params[ours].copy_(t.reshape(params[ours].shape))
        if not shape.tie_word_embeddings:
            head = tensors.get("lm_head.weight")
            if head is None:
                raise ModelLoadError(f"{checkpoint}: lm_head.weight is missing and embeddings are not tied")
            model.lm_head.weight.copy_(head.to(torch.float32))
    return model.eval()
