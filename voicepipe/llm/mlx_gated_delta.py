"""Chunked gated delta rule for fast Qwen3.5 prefill on MLX, and the hook that plugs it into mlx-lm.

mlx-lm runs the gated delta rule (the recurrence of Qwen3.5's linear-attention layers) token by token unless it has
Apple's Metal kernels, so on Linux CPU and CUDA a 1024-token prompt costs 1024 small sequential steps per layer.
This module computes the same recurrence in chunks, the WY / UT-transform formulation of flash-linear-attention
(Yang et al., "Gated Delta Networks", 2024): inside a chunk of ``C`` tokens every delta-rule update is folded into
one lower-triangular system solved with matrix products, and only the chunk boundaries run in sequence, as matrix
products against the state. Neither mlx-lm nor MLX has this off Metal (``mx.fast.gated_delta_update`` measured no
faster than mlx-lm's loop on CUDA and CPU: BENCHMARKS.md), hence this file.

mlx-lm stays the model code: :func:`enable_chunked_prefill` swaps only the recurrence its ``GatedDeltaNet`` layers
call, for inputs of at least ``threshold`` tokens; decode (one token) keeps mlx-lm's recurrent step, and the state
written back has exactly the layout that step reads (``[B, Hv, Dv, Dk]``, float32).

Import this module lazily (only the MLX engine needs it): it imports ``mlx`` at the top.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from voicepipe.llm.mlx_attention_kernel import decode_attention
from voicepipe.llm.mlx_fused import FusedAttention, FusedGatedDeltaNet, FusedMLP, attention_projections
from voicepipe.llm.mlx_matvec_kernels import norm_matmul, swiglu_matmul
from voicepipe.llm.mlx_norm_kernels import add_rms_norm, qk_norm_rope

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_THRESHOLD",
    "GPU_CHUNK_SIZE",
    "GPU_LONG_CHUNK_SIZE",
    "GPU_LONG_PROMPT",
    "KV_CAPACITY_STEP",
    "KV_SELECT_MAX",
    "chunked_gated_delta",
    "chunked_gated_delta_update",
    "compiled_decode_step",
    "default_chunk_size",
    "disable_chunked_prefill",
    "enable_chunked_prefill",
]

# Measured with scripts/bench_mlx_prefill.py (BENCHMARKS.md): on an H200, 128-token chunks halve the sequential
# chunk steps, which are launch-bound there, and from 512 tokens on 256-token chunks halve them again (1024 tokens:
# 40-56 ms against 46-67 ms in the same four processes; at 128 tokens 256 was slower); on a 2-core CPU the extra
# flops of larger chunks cost more than the steps save, and 32 was fastest at 128, 1024 and 4096 tokens.
DEFAULT_CHUNK_SIZE = 32
GPU_CHUNK_SIZE = 128
GPU_LONG_CHUNK_SIZE = 256
GPU_LONG_PROMPT = 512
DEFAULT_THRESHOLD = 64
#: KV-cache capacity steps of the one-call decode step: each capacity it meets is one more trace of the whole step.
KV_CAPACITY_STEP = 1024
#: Largest KV buffer (positions) the one-call step writes by a select over the whole buffer (:func:`_write_kv`).
KV_SELECT_MAX = 4096

# (threshold, chunk size) of the GatedDeltaNet layer being called right now (None outside a hooked layer). A context variable, not
# a global, so models with and without the hook can run side by side, also from different threads.
_ACTIVE_THRESHOLD: ContextVar[tuple[int, int | None] | None] = ContextVar("voicepipe_chunked_gdn", default=None)
_ORIGINAL_UPDATE = "_voicepipe_original_gated_delta_update"


_BASE_BLOCK = 8


def default_chunk_size(length: int = 0) -> int:
    """Chunk length for ``length`` tokens on the current default device: on a GPU :data:`GPU_CHUNK_SIZE`, or
    :data:`GPU_LONG_CHUNK_SIZE` from :data:`GPU_LONG_PROMPT` tokens on; else :data:`DEFAULT_CHUNK_SIZE`."""
    if mx.default_device() != mx.gpu:
        return DEFAULT_CHUNK_SIZE
    return GPU_LONG_CHUNK_SIZE if length >= GPU_LONG_PROMPT else GPU_CHUNK_SIZE


def _diagonal_blocks(matrix: mx.array, size: int) -> mx.array:
    """The diagonal ``size``-blocks of ``[..., C, C]`` as ``[..., C // size, size, size]``."""
    n = matrix.shape[-1] // size
    blocks = matrix.reshape(*matrix.shape[:-2], n, size, n, size)
    return mx.diagonal(blocks, axis1=-4, axis2=-2).transpose(*range(matrix.ndim - 2), -1, -3, -2)


@mx.compile
def _unit_lower_inverse(strict_lower: mx.array) -> mx.array:
    """``(I + L)^-1`` for strictly lower-triangular ``L`` of shape ``[..., C, C]`` (C a power of two), with matrix
    products only (``mx.linalg.tri_inv`` runs on the CPU stream only; forward substitution is C dependent steps).

    Diagonal 8-blocks: ``L`` is nilpotent, so ``(I + L)^-1 = (I - L)(I + L^2)(I + L^4)``; over 8 rows the powers
    stay small (binomials up to 20 for keys that all point the same way), but over a whole chunk they reach 1e17
    and cancel catastrophically, so larger blocks are joined two by two, as flash-linear-attention's ``solve_tril``
    does: ``[[A, 0], [C, D]]^-1 = [[A^-1, 0], [-D^-1 C A^-1, D^-1]]``, which only multiplies bounded inverses.
    """
    chunk = strict_lower.shape[-1]
    size = min(_BASE_BLOCK, chunk)
    power = -_diagonal_blocks(strict_lower, size)
    inverse = mx.eye(size, dtype=strict_lower.dtype) + power
    span = 2
    while span < size:
        power = power @ power
        inverse = inverse + inverse @ power
        span *= 2
    while size < chunk:
        upper_left, lower_right = inverse[..., 0::2, :, :], inverse[..., 1::2, :, :]
        off = _diagonal_blocks(strict_lower, 2 * size)[..., size:, :size]
        lower_left = -(lower_right @ off @ upper_left)
        top = mx.concatenate([upper_left, mx.zeros_like(upper_left)], axis=-1)
        bottom = mx.concatenate([lower_left, lower_right], axis=-1)
        inverse = mx.concatenate([top, bottom], axis=-2)
        size *= 2
    return inverse[..., 0, :, :]


@mx.compile
def _chunk_step(
    state: mx.array,
    u: mx.array,
    w: mx.array,
    q_decayed: mx.array,
    k_decayed: mx.array,
    attn: mx.array,
    chunk_decay: mx.array,
) -> tuple[mx.array, mx.array]:
    """One chunk boundary: read the incoming state, add the intra-chunk part, pass the state on.

    Shapes: state [B, H, Dk, Dv]; u [B, H, C, Dv]; w, q_decayed, k_decayed [B, H, C, Dk]; attn [B, H, C, C];
    chunk_decay [B, H].
    """
    v_new = u - w @ state
    out = q_decayed @ state + attn @ v_new
    state = state * chunk_decay[..., None, None] + k_decayed.swapaxes(-1, -2) @ v_new
    return out, state


def chunked_gated_delta(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    log_decay: mx.array,
    beta: mx.array,
    state: mx.array | None = None,
    mask: mx.array | None = None,
    *,
    chunk_size: int | None = None,
) -> tuple[mx.array, mx.array]:
    """Gated delta rule over a whole sequence, chunk by chunk; same result as mlx-lm's ``gated_delta_ops``.

    Per token t and value head h: ``S = exp(log_decay) * S``; ``S += beta * (v - S k) k^T``; ``y = S q``.

    Args:
        q, k: ``[B, T, Hk, Dk]``, already L2-normalised, with the readout scale folded into ``q`` (mlx-lm's
            ``normalize_qk`` contract: no scale is applied here).
        v: ``[B, T, Hv, Dv]``; ``Hv`` a multiple of ``Hk`` (value head h reads key head ``h // (Hv // Hk)``).
        log_decay: ``[B, T, Hv]``, the log of the per-token decay (<= 0).
        beta: ``[B, T, Hv]``, the write strength.
        state: ``[B, Hv, Dv, Dk]`` initial state (zeros when None), mlx-lm's layout.
        mask: ``[B, T]`` bool; a False token leaves the state untouched and outputs zeros (as mlx-lm's kernels).
        chunk_size: tokens per chunk, a power of two; None: :func:`default_chunk_size`.

    On CUDA, MLX runs fp32 matmuls in TF32 by default, which limits agreement with the (matmul-free) token loop to
    about 2e-3 for fp32 inputs; ``MLX_ENABLE_TF32=0`` restores 1e-6. bf16 inputs are unaffected.

    Returns:
        ``(y, state)``: y ``[B, T, Hv, Dv]`` in ``q``'s dtype; the final state ``[B, Hv, Dv, Dk]`` in float32
        (or the initial state's dtype), ready for mlx-lm's recurrent decode step.
    """
    batch, length, k_heads, k_dim = k.shape
    chunk_size = chunk_size or default_chunk_size(length)
    if chunk_size < 1 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    v_heads, v_dim = v.shape[-2:]
    if v_heads % k_heads:
        raise ValueError(f"value heads ({v_heads}) must be a multiple of key heads ({k_heads})")
    out_dtype = q.dtype
    state_dtype = mx.float32 if state is None else state.dtype
    f32 = mx.float32

    q, k, v, log_decay, beta = (x.astype(f32) for x in (q, k, v, log_decay, beta))
    if (repeat := v_heads // k_heads) > 1:
        q = mx.repeat(q, repeat, axis=2)
        k = mx.repeat(k, repeat, axis=2)
    if mask is not None:
        # A masked token must not touch the state: decay 1 (log 0) and no write (beta 0).
        log_decay = mx.where(mask[..., None], log_decay, 0.0)
        beta = mx.where(mask[..., None], beta, 0.0)

    # Pad to whole chunks; padded tokens have k = 0, beta = 0 and decay 1, so they leave the state as it is.
    pad = (-length) % chunk_size
    if pad:
        q, k, v = (mx.pad(x, [(0, 0), (0, pad), (0, 0), (0, 0)]) for x in (q, k, v))
        log_decay, beta = (mx.pad(x, [(0, 0), (0, pad), (0, 0)]) for x in (log_decay, beta))
    n_chunks = (length + pad) // chunk_size

    def chunks(x: mx.array) -> mx.array:  # [B, T, H, D] -> [B, H, N, C, D]
        return x.transpose(0, 2, 1, 3).reshape(batch, v_heads, n_chunks, chunk_size, x.shape[-1])

    q, k, v = chunks(q), chunks(k), chunks(v)
    log_decay = log_decay.transpose(0, 2, 1).reshape(batch, v_heads, n_chunks, chunk_size)
    beta = beta.transpose(0, 2, 1).reshape(batch, v_heads, n_chunks, chunk_size)

    # Phase 1, all chunks at once: cumulative decay, the UT system and its solution (u: the values to write,
    # w: the decayed keys that read the incoming state), and the causal intra-chunk attention.
    cum = mx.cumsum(log_decay, axis=-1)
    causal = mx.tril(mx.ones((chunk_size, chunk_size), dtype=mx.bool_))
    pair_decay = mx.exp(mx.where(causal, cum[..., :, None] - cum[..., None, :], -mx.inf))
    k_beta = k * beta[..., None]
    strictly_lower = mx.tril(mx.ones((chunk_size, chunk_size), dtype=mx.bool_), k=-1)
    system = mx.where(strictly_lower, (k_beta @ k.swapaxes(-1, -2)) * pair_decay, 0.0)
    inverse = _unit_lower_inverse(system)
    u = inverse @ (v * beta[..., None])
    w = inverse @ (k_beta * mx.exp(cum)[..., None])
    attn = (q @ k.swapaxes(-1, -2)) * pair_decay
    q_decayed = q * mx.exp(cum)[..., None]
    k_decayed = k * mx.exp(cum[..., -1:] - cum)[..., None]
    chunk_decay = mx.exp(cum[..., -1])

    # Phase 2, in sequence over chunks: the state in [B, H, Dk, Dv] so reads are plain products.
    s = mx.zeros((batch, v_heads, k_dim, v_dim), dtype=f32) if state is None else state.astype(f32).swapaxes(-1, -2)
    outs = []
    for i in range(n_chunks):
        out, s = _chunk_step(
            s, u[:, :, i], w[:, :, i], q_decayed[:, :, i], k_decayed[:, :, i], attn[:, :, i], chunk_decay[:, :, i]
        )
        outs.append(out)
    y = mx.stack(outs, axis=2) if n_chunks > 1 else outs[0][:, :, None]
    y = y.reshape(batch, v_heads, n_chunks * chunk_size, v_dim)[:, :, :length].transpose(0, 2, 1, 3)
    if mask is not None:
        y = mx.where(mask[..., None, None], y, 0.0)
    return y.astype(out_dtype), s.swapaxes(-1, -2).astype(state_dtype)


def chunked_gated_delta_update(
    q: mx.array,
    k: mx.array,
    v: mx.array,
    a: mx.array,
    b: mx.array,
    A_log: mx.array,  # noqa: N803 - mlx-lm's parameter name
    dt_bias: mx.array,
    state: mx.array | None = None,
    mask: mx.array | None = None,
    *,
    use_kernel: bool = True,
    lower_bound: float | None = None,
    allow_neg_eigval: bool = False,
    chunk_size: int | None = None,
) -> tuple[mx.array, mx.array]:
    """Drop-in for ``mlx_lm.models.gated_delta.gated_delta_update`` that runs :func:`chunked_gated_delta`.

    Takes the raw gate inputs ``a``/``b`` like mlx-lm and forms the log decay directly (rather than the log of
    mlx-lm's ``exp``), so no precision is lost for strongly decaying heads. ``use_kernel`` is accepted and ignored.
    """
    del use_kernel
    beta = mx.sigmoid(b)
    if allow_neg_eigval:
        beta = beta * 2.0
    if lower_bound is None:
        log_decay = -mx.exp(A_log.astype(mx.float32)) * nn.softplus(a + dt_bias)
    else:
        log_decay = lower_bound * mx.sigmoid(mx.exp(A_log.astype(mx.float32)) * (a.astype(mx.float32) + dt_bias))
    return chunked_gated_delta(q, k, v, log_decay, beta, state, mask, chunk_size=chunk_size)


def _dispatching_update(original):
    """Wrap an architecture module's ``gated_delta_update``: chunked inside a hooked layer for long inputs."""

    def gated_delta_update(q, k, v, a, b, A_log, dt_bias, state=None, mask=None, **kwargs):  # noqa: N803
        active = _ACTIVE_THRESHOLD.get()
        if active is None or q.shape[1] < active[0]:
            return original(q, k, v, a, b, A_log, dt_bias, state, mask, **kwargs)
        return chunked_gated_delta_update(q, k, v, a, b, A_log, dt_bias, state, mask, chunk_size=active[1], **kwargs)

    setattr(gated_delta_update, _ORIGINAL_UPDATE, original)
    return gated_delta_update


_HOOKED_CLASSES: dict[type, type] = {}


def _hooked_class(cls: type) -> type:
    """A subclass of an mlx-lm ``GatedDeltaNet`` class whose call marks the chunked path as allowed."""
    if cls in _HOOKED_CLASSES:
        return _HOOKED_CLASSES[cls]
    module = sys.modules[cls.__module__]
    if not hasattr(module.gated_delta_update, _ORIGINAL_UPDATE):
        module.gated_delta_update = _dispatching_update(module.gated_delta_update)

    def __call__(self, *args: Any, **kwargs: Any) -> mx.array:  # noqa: N807
        token = _ACTIVE_THRESHOLD.set((self._voicepipe_chunk_threshold, self._voicepipe_chunk_size))
        try:
            return cls.__call__(self, *args, **kwargs)
        finally:
            _ACTIVE_THRESHOLD.reset(token)

    hooked = type(f"Chunked{cls.__name__}", (cls,), {"__call__": __call__, "__module__": cls.__module__})
    _HOOKED_CLASSES[cls] = hooked
    return hooked


def _gated_delta_layers(model: nn.Module) -> list[nn.Module]:
    layers = []
    for _, module in model.named_modules():
        cls = type(module)
        base = next((c for c in cls.__mro__ if c.__name__ == "GatedDeltaNet"), None)
        if base is not None and hasattr(sys.modules[base.__module__], "gated_delta_update"):
            layers.append(module)
    return layers


def enable_chunked_prefill(
    model: nn.Module, threshold: int = DEFAULT_THRESHOLD, *, chunk_size: int | None = None
) -> int:
    """Make an mlx-lm Qwen3.5 / Qwen3-Next model run the chunked rule for inputs of ``threshold`` tokens or more.

    The hook: each ``GatedDeltaNet`` layer of ``model`` becomes an instance of a subclass whose ``__call__`` runs
    mlx-lm's own ``__call__`` with a context flag set, and the ``gated_delta_update`` name that mlx-lm's model
    module calls is wrapped once so that, with the flag set and at least ``threshold`` tokens, it runs
    :func:`chunked_gated_delta_update`. Other models, and decode steps, keep mlx-lm's path untouched. Calling it
    again updates the threshold. ``chunk_size`` None picks :func:`default_chunk_size` at each call. Returns the
    number of layers hooked (0: not a gated-delta model).
    """
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1 token, got {threshold}")
    if chunk_size is not None and (chunk_size < 1 or chunk_size & (chunk_size - 1)):
        raise ValueError(f"chunk_size must be a power of two, got {chunk_size}")
    layers = _gated_delta_layers(model)
    for layer in layers:
        cls = type(layer)
        if cls not in _HOOKED_CLASSES.values():
            layer.__class__ = _hooked_class(cls)
        layer._voicepipe_chunk_threshold = threshold
        layer._voicepipe_chunk_size = chunk_size
    return len(layers)


def disable_chunked_prefill(model: nn.Module) -> int:
    """Undo :func:`enable_chunked_prefill` on ``model``'s layers; returns how many were restored."""
    restored = 0
    originals = {hooked: base for base, hooked in _HOOKED_CLASSES.items()}
    for _, module in model.named_modules():
        if type(module) in originals:
            module.__class__ = originals[type(module)]
            restored += 1
    return restored


def compiled_decode_step(
    model: nn.Module,
    *,
    segments: bool = True,
    norm_kernels: bool = True,
    attention_kernel: bool = True,
    matvec_kernels: bool = True,
    one_call: bool = False,
    capacity_step: int = KV_CAPACITY_STEP,
) -> Callable[[mx.array, list[Any]], mx.array]:
    """A one-token forward for an mlx-lm Qwen3.5 model with its static-shape parts under ``mx.compile``.

    In a decode step the embedding, every linear-attention layer (its conv and recurrent states have fixed shapes),
    the projections, norms, RoPE and MLP around each full-attention layer, and the output head see the same shapes
    every token, so each is compiled once and MLX replays a fused graph instead of Python building ~40 small ops per
    layer. Only the KV-cache append and the attention itself, whose length grows, run eagerly, as mlx-lm runs them
    (the attention pieces restate mlx-lm's ``Qwen3NextAttention.__call__`` split at the cache; other attention or
    cache types run mlx-lm's layer whole). Use it as ``logits = step(tokens[:, None], cache)`` once the prompt has
    been prefilled through the model (other inputs fall back to ``model``). Weights are captured when a piece is
    first traced: build a new step after reloading or re-quantizing the model.

    ``segments=True`` (when every attention layer is mlx-lm's Qwen3-Next attention) compiles each run of layers
    between two KV-cache appends as one function (7 compiled calls a token for Qwen3.5 instead of 32); False compiles
    layer by layer. The segments carry each residual add to the norm that follows it and run the two as one CUDA
    kernel, an attention layer's q/k norms and RoPE as another (``voicepipe.llm.mlx_norm_kernels``) and its attention
    over the cache as a third (``voicepipe.llm.mlx_attention_kernel``), and each norm and the MLP's activation
    together with the INT4 projection after it (``voicepipe.llm.mlx_matvec_kernels``), where those kernels are on;
    ``norm_kernels=False``, ``attention_kernel=False`` and ``matvec_kernels=False`` keep MLX's ops, as every device
    without them does.

    ``one_call=True`` (with ``segments``) compiles the whole token as one function instead, KV-cache writes included
    (:func:`_one_call_decode_step`); the KV caches then keep a capacity in multiples of ``capacity_step`` positions.
    """
    if capacity_step < 1:
        raise ValueError(f"capacity_step must be at least 1 position, got {capacity_step}")
    from mlx_lm.models.cache import ArraysCache, KVCache
    from mlx_lm.models.qwen3_next import Qwen3NextAttention

    def is_qwen3_next_attention(attn: nn.Module) -> bool:  # mlx-lm's class or voicepipe's fused one
        return isinstance(attn, Qwen3NextAttention) and type(attn).__call__ in (
            Qwen3NextAttention.__call__,
            FusedAttention.__call__,
        )

    language = model.language_model if hasattr(model, "language_model") else model
    inner = language.model
    layers = list(inner.layers)

    def linear_block(layer: nn.Module) -> Callable[..., tuple[mx.array, mx.array, mx.array]]:
        def run(h: mx.array, conv_state: mx.array, state: mx.array) -> tuple[mx.array, mx.array, mx.array]:
            cache = ArraysCache(size=2)
            cache[0], cache[1] = conv_state, state
            out = layer(h, None, cache)
            return out, cache[0], cache[1]

        return mx.compile(run)

    def attention_blocks(layer: nn.Module) -> tuple[Callable[..., Any], Callable[..., mx.array]]:
        before, after = _attention_parts(layer)
        return mx.compile(before), mx.compile(after)

    def mlp_block(layer: nn.Module) -> Callable[[mx.array], mx.array]:
        return mx.compile(lambda h: h + layer.mlp(layer.post_attention_layernorm(h)))

    def block(layer: nn.Module) -> Any:
        if layer.is_linear:
            return linear_block(layer)
        if is_qwen3_next_attention(layer.self_attn):
            return attention_blocks(layer)
        return mlp_block(layer)

    embed = mx.compile(inner.embed_tokens)
    tied = getattr(language.args, "tie_word_embeddings", False)
    output = inner.embed_tokens.as_linear if tied else language.lm_head
    head = mx.compile(lambda h: output(inner.norm(h)))
    if segments and all(layer.is_linear or is_qwen3_next_attention(layer.self_attn) for layer in layers):
        if one_call:
            return _one_call_decode_step(
                model,
                layers,
                embed,
                (inner.norm, output),
                norm_kernels,
                attention_kernel,
                capacity_step,
                matvec_kernels,
            )
        return _segmented_decode_step(
            model, layers, embed, (inner.norm, output), norm_kernels, attention_kernel, matvec_kernels
        )
    blocks = [block(layer) for layer in layers]

    def step(tokens: mx.array, cache: list[Any]) -> mx.array:
        if tokens.shape[1] != 1 or any(
            layer.is_linear and c[0] is None for layer, c in zip(layers, cache, strict=True)
        ):
            return model(tokens, cache=cache)
        h = embed(tokens)
        for layer, c, fn in zip(layers, cache, blocks, strict=True):
            if layer.is_linear:
                h, c[0], c[1] = fn(h, c[0], c[1])
                c.advance(1)
            elif isinstance(fn, tuple) and type(c) is KVCache:
                before, after = fn
                queries, keys, values, gate = before(h, mx.array(c.offset))
                keys, values = c.update_and_fetch(keys, values)
                out = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=layer.self_attn.scale)
                h = after(h, out, gate)
            else:
                h = h + layer.self_attn(layer.input_layernorm(h), None, c)
                h = fn(h) if callable(fn) else h + layer.mlp(layer.post_attention_layernorm(h))
        return head(h)

    return step


def _attention_parts(layer: nn.Module) -> tuple[Callable[..., Any], Callable[..., mx.array]]:
    """mlx-lm's ``Qwen3NextAttention.__call__`` for one decode token, split at the KV cache: ``before`` (norm,
    projections, q/k norms, RoPE at an array offset) and ``after`` (gated output projection, residual, MLP block)."""
    pending_before, pending_after = _pending_attention_parts(layer, kernels=False)

    def before(h: mx.array, offset: mx.array) -> tuple[mx.array, ...]:
        return pending_before(h, None, offset)[:4]

    def after(h: mx.array, out: mx.array, gate: mx.array) -> mx.array:
        h, r = pending_after(h, out, gate)
        return h + r

    return before, after


def _linear_layer(
    layer: nn.Module, h: mx.array, r: mx.array | None, cache: Any, kernels: bool, matvec: bool = False
) -> tuple[Any, Any]:
    """mlx-lm's ``DecoderLayer.__call__`` for a linear-attention layer on a residual stream ``h`` whose last add
    ``r`` is still pending: returns ``(h, r)`` with this layer's MLP output pending in turn, so that every residual
    add runs together with the norm that reads its result (:func:`add_rms_norm`), and with ``matvec`` together with
    the projection after the norm too (:func:`norm_matmul`)."""
    attn = layer.linear_attn
    if isinstance(attn, FusedGatedDeltaNet):
        h, proj = norm_matmul(h, r, layer.input_layernorm, attn.in_proj, norm_kernel=kernels, matvec_kernel=matvec)
        out = attn.from_projection(proj, None, cache)
    else:
        h, x = add_rms_norm(h, r, layer.input_layernorm, kernel=kernels)
        out = attn(x, None, cache)
    return _mlp_block(layer, h, out, kernels, matvec)


def _mlp_block(layer: nn.Module, h: mx.array, r: mx.array, kernels: bool, matvec: bool) -> tuple[mx.array, mx.array]:
    """The residual add ``h + r``, the post-attention norm and the MLP of a decoder layer: ``(h, MLP output)``."""
    mlp = layer.mlp
    if isinstance(mlp, FusedMLP):
        norm = layer.post_attention_layernorm
        h, gate_up = norm_matmul(h, r, norm, mlp.gate_up_proj, norm_kernel=kernels, matvec_kernel=matvec)
        return h, swiglu_matmul(gate_up, mlp.down_proj, matvec_kernel=matvec)
    h, x = add_rms_norm(h, r, layer.post_attention_layernorm, kernel=kernels)
    return h, mlp(x)


def _pending_attention_parts(
    layer: nn.Module, kernels: bool, matvec: bool = False
) -> tuple[Callable[..., Any], Callable[..., Any]]:
    """:func:`_attention_parts` on a residual stream with a pending add (as :func:`_linear_layer`): ``before(h, r,
    offset)`` returns the queries, keys, values, gate (``[B, L, H, D]``, a view into the projection where the layer is
    fused) and the summed ``h``; ``after(h, out, gate)`` returns ``(h, r)``, with ``gate`` None when ``out`` is already
    gated (:func:`decode_attention`'s ``gate``). With ``kernels`` the q/k norms and RoPE of a fused layer run as one
    kernel where it applies (:func:`qk_norm_rope`), and with ``matvec`` each norm together with the projection after
    it (:func:`norm_matmul`)."""
    attn = layer.self_attn

    def before(h: mx.array, r: mx.array | None, offset: mx.array) -> tuple[mx.array, ...]:
        batch, length, _ = h.shape
        roped = None
        if isinstance(attn, FusedAttention):
            h, proj = norm_matmul(h, r, layer.input_layernorm, attn.qkv_proj, norm_kernel=kernels, matvec_kernel=matvec)
            roped = qk_norm_rope(attn, proj, offset) if kernels else None
            queries, _, keys, values = attn.split_projection(proj)
            # The gate as a view into the projection (each head's [query | gate] halves), not reshaped to one row.
            heads, dim = attn.num_attention_heads, attn.head_dim
            gate = proj[..., : 2 * heads * dim].reshape(batch, length, heads, 2 * dim)[..., dim:]
        else:
            h, x = add_rms_norm(h, r, layer.input_layernorm, kernel=kernels)
            queries, gate, keys, values = attention_projections(attn, x)
            gate = gate.reshape(batch, length, attn.num_attention_heads, -1)
        values = values.reshape(batch, length, attn.num_key_value_heads, -1).transpose(0, 2, 1, 3)
        if roped is None:
            keys = attn.k_norm(keys.reshape(batch, length, attn.num_key_value_heads, -1))
            queries = attn.rope(attn.q_norm(queries).transpose(0, 2, 1, 3), offset=offset)
            keys = attn.rope(keys.transpose(0, 2, 1, 3), offset=offset)
        else:
            queries, keys = roped
        return queries, keys, values, gate, h

    def after(h: mx.array, out: mx.array, gate: mx.array | None) -> tuple[mx.array, mx.array]:
        if gate is None:
            r = attn.o_proj(out)
        else:
            batch, _, length, _ = out.shape
            gated = out.transpose(0, 2, 1, 3).reshape(batch, length, -1) * mx.sigmoid(gate.reshape(batch, length, -1))
            r = attn.o_proj(gated)
        return _mlp_block(layer, h, r, kernels, matvec)

    return before, after


def _linear_layer_from(
    layer: nn.Module,
    h: mx.array,
    r: mx.array | None,
    inputs: Iterator[mx.array],
    states: list[mx.array],
    kernels: bool,
    matvec: bool = False,
) -> tuple[mx.array, mx.array]:
    """One linear layer inside a compiled decode step: its conv and recurrent state are the next two ``inputs``, and
    its new ones are appended to ``states`` (the step's outputs, in the same order)."""
    from mlx_lm.models.cache import ArraysCache

    cache = ArraysCache(size=2)
    cache[0], cache[1] = next(inputs), next(inputs)
    h, r = _linear_layer(layer, h, r, cache, kernels, matvec)
    states += [cache[0], cache[1]]
    return h, r


def _segmented_decode_step(
    model: nn.Module,
    layers: list[nn.Module],
    embed: Callable[..., mx.array],
    head: tuple[nn.Module, Callable[..., mx.array]],
    kernels: bool,
    attention_kernel: bool,
    matvec: bool = False,
) -> Callable[[mx.array, list[Any]], mx.array]:
    """:func:`compiled_decode_step` with one compiled function per run of layers between KV-cache appends.

    ``head`` is the final norm and the output layer. Inside a segment the residual stream is ``(h, r)``, the last
    add pending until the norm after it (:func:`_linear_layer`); between segments it is the summed ``h``."""
    from mlx_lm.models.cache import KVCache

    attention = [i for i, layer in enumerate(layers) if not layer.is_linear]
    parts = {i: _pending_attention_parts(layers[i], kernels, matvec) for i in attention}
    final_norm, output = head

    def segment(
        finish: int | None, linears: list[int], begin: int | None
    ) -> Callable[[list[mx.array]], list[mx.array]]:
        # Inputs: [tokens] or [h, attention out, gate] of the attention layer `finish`; the RoPE offset; the conv and
        # recurrent state of each linear layer. Outputs: the next attention layer's q, k, v, gate and the residual
        # h (or the logits after the last layer), then the new states.
        def run(arrays: list[mx.array]) -> list[mx.array]:
            it = iter(arrays)
            if finish is None:
                h, r = embed(next(it)), None
            else:
                h, r = parts[finish][1](next(it), next(it), next(it))
            offset = next(it)
            states: list[mx.array] = []
            for i in linears:
                h, r = _linear_layer_from(layers[i], h, r, it, states, kernels, matvec)
            if begin is None:
                return [output(add_rms_norm(h, r, final_norm, kernel=kernels)[1]), *states]
            return [*parts[begin][0](h, r, offset), *states]

        return mx.compile(run)

    plan = []
    for k, start in enumerate([-1, *attention]):
        end = attention[k] if k < len(attention) else len(layers)
        linears = list(range(start + 1, end))
        plan.append((start if start >= 0 else None, linears, end if end < len(layers) else None))
    compiled = [segment(*p) for p in plan]

    def step(tokens: mx.array, cache: list[Any]) -> mx.array:
        if (
            tokens.shape[1] != 1
            or any(layer.is_linear and c[0] is None for layer, c in zip(layers, cache, strict=True))
            or any(type(cache[i]) is not KVCache for i in attention)
        ):
            return model(tokens, cache=cache)
        offset = mx.array(cache[attention[0]].offset if attention else 0)
        carry = [tokens]
        logits = None
        for (_, linears, begin), fn in zip(plan, compiled, strict=True):
            outs = fn([*carry, offset, *[s for i in linears for s in (cache[i][0], cache[i][1])]])
            fixed = 1 if begin is None else 5
            for j, i in enumerate(linears):
                cache[i][0], cache[i][1] = outs[fixed + 2 * j], outs[fixed + 2 * j + 1]
                cache[i].advance(1)
            if begin is None:
                logits = outs[0]
            else:
                queries, keys, values, gate, h = outs[:5]
                keys, values = cache[begin].update_and_fetch(keys, values)
                scale = layers[begin].self_attn.scale
                carry = [h, decode_attention(queries, keys, values, scale=scale, kernel=attention_kernel), gate]
        return logits

    return step


def _reserve(cache: Any, positions: int, step: int) -> None:
    """Grow a KV cache's buffers to a multiple of ``step`` positions holding at least ``positions`` (the filled part
    is kept; mlx-lm's ``KVCache`` grows the same buffers in its own steps when it is written through
    ``update_and_fetch``, and reads only up to its ``offset``)."""
    capacity = cache.keys.shape[2]
    if capacity >= positions and capacity % step == 0:
        return
    size = -(-positions // step) * step
    filled = min(cache.offset, capacity)

    def grown(buffer: mx.array) -> mx.array:
        batch, heads, _, dim = buffer.shape
        spare = mx.zeros((batch, heads, size - filled, dim), dtype=buffer.dtype)
        return mx.concatenate([buffer[..., :filled, :], spare], axis=2)

    cache.keys, cache.values = grown(cache.keys), grown(cache.values)


def _write_kv(
    key_buffer: mx.array, value_buffer: mx.array, keys: mx.array, values: mx.array, position: mx.array
) -> tuple[mx.array, mx.array]:
    """The buffers with one token's keys and values written at ``position`` (int32, shape [1]) along axis 2.

    Up to :data:`KV_SELECT_MAX` positions as a select over the whole buffers (elementwise, so ``mx.compile`` fuses
    it): on CUDA each ``mx.slice_update`` at an array offset ran as three launches (the offset, a copy, the write;
    Nsight Compute, BENCHMARKS.md), and at one token a step is bound by launches, while the select's extra traffic
    is small at that size. Longer buffers are written with ``mx.slice_update``, which touches only the slot."""
    if key_buffer.shape[2] > KV_SELECT_MAX:
        return (
            mx.slice_update(key_buffer, keys, position, axes=(2,)),
            mx.slice_update(value_buffer, values, position, axes=(2,)),
        )
    slot = (mx.arange(key_buffer.shape[2], dtype=mx.int32) == position)[:, None]
    return mx.where(slot, keys, key_buffer), mx.where(slot, values, value_buffer)


def _one_call_decode_step(
    model: nn.Module,
    layers: list[nn.Module],
    embed: Callable[..., mx.array],
    head: tuple[nn.Module, Callable[..., mx.array]],
    kernels: bool,
    attention_kernel: bool,
    capacity_step: int,
    matvec: bool = False,
) -> Callable[[mx.array, list[Any]], mx.array]:
    """:func:`compiled_decode_step` as one compiled function a token, the KV-cache writes inside it.

    The segmented step leaves the graph between its segments to Python (an append to each KV cache, whose length
    grows, and the attention over it), and at one token a step is bound by that host work (BENCHMARKS.md). Here every
    shape is fixed: each attention layer's keys and values are written into the cache's whole buffer at the position
    given as an array (:func:`_write_kv`), the attention reads the buffer and masks the positions past the current
    length (:func:`decode_attention`'s ``length``), and the RoPE offset is the same array, so ``mx.compile`` traces
    the token once per buffer capacity (kept a multiple of ``capacity_step`` by :func:`_reserve`) and replays it.

    The caches stay mlx-lm's ``KVCache`` objects (their buffers replaced by the step's outputs, ``offset`` advanced),
    so prefill, snapshots and undoing a step by its offset work on them as before. With the CUDA kernels the results
    equal the segmented step's (the masked attention kernel reads the same positions in the same order; bf16 on an
    H200: 32 of 32 greedy tokens, logits identical). MLX's attention over a masked buffer (other devices) sums the
    same terms in another order: results match the segmented step within rounding (tests/llm/test_mlx_norm_kernels.py).
    """
    from mlx_lm.models.cache import KVCache

    attention = [i for i, layer in enumerate(layers) if not layer.is_linear]
    parts = {i: _pending_attention_parts(layers[i], kernels, matvec) for i in attention}
    final_norm, output = head

    def run(arrays: list[mx.array]) -> list[mx.array]:
        # Inputs: the token, the position (int32, shape [1]), then per layer its conv and recurrent state or its
        # keys and values buffers. Outputs: the logits, then the layers' new states and buffers in the same order.
        it = iter(arrays)
        h, r = embed(next(it)), None
        position = next(it)
        length = position + 1  # once: the attention of every layer reads it
        states = []
        for i, layer in enumerate(layers):
            if layer.is_linear:
                h, r = _linear_layer_from(layer, h, r, it, states, kernels, matvec)
                continue
            before, after = parts[i]
            queries, keys, values, gate, h = before(h, r, position[0])
            keys, values = _write_kv(next(it), next(it), keys, values, position)
            scale = layer.self_attn.scale
            out = decode_attention(
                queries, keys, values, scale=scale, length=length, gate=gate, kernel=attention_kernel
            )
            h, r = after(h, out, None)
            states += [keys, values]
        return [output(add_rms_norm(h, r, final_norm, kernel=kernels)[1]), *states]

    compiled = mx.compile(run)

    def step(tokens: mx.array, cache: list[Any]) -> mx.array:
        if (
            tokens.shape[1] != 1
            or any(layer.is_linear and c[0] is None for layer, c in zip(layers, cache, strict=True))
            or any(type(cache[i]) is not KVCache or cache[i].keys is None for i in attention)
        ):
            return model(tokens, cache=cache)
        offset = cache[attention[0]].offset if attention else 0
        states = []
        for layer, c in zip(layers, cache, strict=True):
            if layer.is_linear:
                states += [c[0], c[1]]
            else:
                _reserve(c, c.offset + 1, capacity_step)
                states += [c.keys, c.values]
        outs = compiled([tokens, mx.array([offset], dtype=mx.int32), *states])
        del states  # the old buffers: let the writes reuse them in place when nothing else holds them
        for j, (layer, c) in enumerate(zip(layers, cache, strict=True)):
            first, second = outs[1 + 2 * j], outs[2 + 2 * j]
            if layer.is_linear:
                c[0], c[1] = first, second
                c.advance(1)
            else:
                c.keys, c.values = first, second
                c.offset += 1
        return outs[0]

    return step
