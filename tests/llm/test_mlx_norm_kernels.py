"""The decode step's norm and attention kernels (voicepipe.llm.mlx_norm_kernels, mlx_attention_kernel) and the
residual-pending layer order of the segmented decode step (voicepipe.llm.mlx_gated_delta) that uses them.

On the CPU the functions run MLX's ops (custom kernels are CUDA-only), so the CPU tests check the step's new layer
order against mlx-lm's model; on a CUDA GPU the kernels run against those ops, which they are written to equal.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_map_with_path  # noqa: E402
from mlx_lm.models import qwen3_5  # noqa: E402

from tests.llm.test_mlx_fused import CONFIG, build, rel_err, run  # noqa: E402
from voicepipe.llm.mlx_attention_kernel import MAX_POSITIONS, decode_attention  # noqa: E402
from voicepipe.llm.mlx_fused import FusedAttention, fuse_projections  # noqa: E402
from voicepipe.llm.mlx_gated_delta import compiled_decode_step  # noqa: E402
from voicepipe.llm.mlx_norm_kernels import add_rms_norm, qk_norm_rope  # noqa: E402

on_cuda = mx.default_device() == mx.gpu and mx.cuda.is_available()
needs_cuda = pytest.mark.skipif(not on_cuda, reason="custom kernels are CUDA-only")


@pytest.mark.parametrize("quantized", [False, True])
def test_residual_pending_step_matches_model(quantized: bool) -> None:
    """The segmented step with every residual add moved next to its norm gives mlx-lm's tokens and logits."""
    plain, fused = build(quantized), build(quantized)
    fuse_projections(fused)
    prompt = np.random.default_rng(2).integers(0, CONFIG["vocab_size"], 50).tolist()
    tokens_ref, logits_ref = run(plain, prompt, steps=12)
    for kernels in (True, False):
        step = compiled_decode_step(fused, norm_kernels=kernels, attention_kernel=kernels)
        tokens, logits = run(fused, prompt, steps=12, step=step)
        assert tokens == tokens_ref
        assert rel_err(logits, logits_ref) <= 1e-4


def test_ops_path_off_cuda() -> None:
    """Without the kernels ``add_rms_norm`` is mlx-lm's add then norm, bit for bit, and ``qk_norm_rope`` declines."""
    if on_cuda:
        pytest.skip("the CPU path")
    mx.random.seed(1)
    norm = nn.RMSNorm(96, eps=1e-6)
    norm.weight = mx.random.normal((96,))
    x, r = mx.random.normal((2, 1, 96)), mx.random.normal((2, 1, 96))
    h, y = add_rms_norm(x, r, norm)
    assert np.array_equal(np.array(h), np.array(x + r))
    assert np.array_equal(np.array(y), np.array(norm(x + r)))
    h, y = add_rms_norm(x, None, norm)
    assert h is x and np.array_equal(np.array(y), np.array(norm(x)))
    attn = _attention(64, 2, 1, mx.float32)
    assert qk_norm_rope(attn, attn.qkv_proj(mx.random.normal((1, 1, 256))), mx.array(3)) is None


# -- the kernels (CUDA only) ---------------------------------------------------------------------------------------


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1")


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(1, 1, 1024), (3, 1, 1024), (1, 1, 256), (2, 1, 896), (1, 1, 2048), (1, 1, 40)])
def test_add_rms_norm_kernel_equals_mlx(dtype: str, shape: tuple, kernels_on) -> None:
    mx.random.seed(4)
    dt = getattr(mx, dtype)
    norm = nn.RMSNorm(shape[-1], eps=1e-6)
    norm.weight = (1.0 + 0.3 * mx.random.normal((shape[-1],))).astype(dt)
    x, r = (4.0 * mx.random.normal(shape)).astype(dt), mx.random.normal(shape).astype(dt)
    h, y = add_rms_norm(x, r, norm)
    want_h = x + r
    want_y = norm(want_h)
    assert h.dtype == dt and y.dtype == dt and y.shape == shape
    assert np.array_equal(np.array(h.astype(mx.float32)), np.array(want_h.astype(mx.float32)))
    assert np.array_equal(np.array(y.astype(mx.float32)), np.array(want_y.astype(mx.float32)))


def _attention(head_dim: int, heads: int, kv_heads: int, dtype: mx.Dtype) -> FusedAttention:
    args = qwen3_5.TextModelArgs.from_dict(
        {
            **CONFIG,
            "hidden_size": 256,
            "head_dim": head_dim,
            "num_attention_heads": heads,
            "num_key_value_heads": kv_heads,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e7, "partial_rotary_factor": 0.25},
        }
    )
    mx.random.seed(5)
    attn = qwen3_5.Attention(args)
    attn.q_norm.weight = 1.0 + 0.3 * mx.random.normal((head_dim,))
    attn.k_norm.weight = 1.0 + 0.3 * mx.random.normal((head_dim,))
    attn.set_dtype(dtype)
    assert fuse_projections(attn) == 1
    return attn


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("heads", [(256, 8, 2), (128, 4, 4), (64, 2, 1)])
@pytest.mark.parametrize("offset", [0, 7, 3000])
def test_qk_norm_rope_kernel_equals_mlx(dtype: str, heads: tuple, offset: int, kernels_on) -> None:
    """Against mlx-lm's q_norm, k_norm and RoPE on the same projection (Qwen3.5-0.8B's shape first)."""
    head_dim, n_heads, kv_heads = heads
    dt = getattr(mx, dtype)
    attn = _attention(head_dim, n_heads, kv_heads, dt)
    x = mx.random.normal((2, 1, 256)).astype(dt)
    proj = attn.qkv_proj(x)
    got = qk_norm_rope(attn, proj, mx.array(offset))
    assert got is not None
    queries, _, keys, _ = attn.split_projection(proj)
    want_q = attn.rope(attn.q_norm(queries).transpose(0, 2, 1, 3), offset=offset)
    want_k = attn.rope(attn.k_norm(keys.reshape(2, 1, kv_heads, -1)).transpose(0, 2, 1, 3), offset=offset)
    for g, w in zip(got, (want_q, want_k), strict=True):
        assert g.shape == w.shape and g.dtype == w.dtype
        assert np.array_equal(np.array(g.astype(mx.float32)), np.array(w.astype(mx.float32)))


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("positions", [1, 37, 300, 5000])
def test_decode_attention_kernel_matches_mlx(dtype: str, positions: int, kernels_on) -> None:
    """Against MLX's attention on views into a larger cache buffer, as the KV cache hands them over (GQA 8:2)."""
    dt = getattr(mx, dtype)
    mx.random.seed(6)
    queries = mx.random.normal((2, 8, 1, 256)).astype(dt)
    buffer_k = (2.0 * mx.random.normal((2, 2, positions + 20, 256))).astype(dt)
    buffer_v = mx.random.normal((2, 2, positions + 20, 256)).astype(dt)
    keys, values = buffer_k[..., :positions, :], buffer_v[..., :positions, :]
    got = decode_attention(queries, keys, values, scale=256**-0.5)
    want = mx.fast.scaled_dot_product_attention(queries, keys, values, scale=256**-0.5)
    assert got.shape == want.shape and got.dtype == dt
    assert rel_err(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))) <= (
        1e-5 if dtype == "float32" else 1e-2
    )


def test_decode_attention_falls_back_to_mlx(monkeypatch) -> None:
    """Where the kernel does not apply (off CUDA, turned off, a mask, a long cache) it is MLX's attention."""
    monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1")
    mx.random.seed(8)
    queries, keys = mx.random.normal((1, 4, 1, 64)), mx.random.normal((1, 2, 9, 64))
    want = mx.fast.scaled_dot_product_attention(queries, keys, keys, scale=0.125)
    for got in (
        decode_attention(queries, keys, keys, scale=0.125, kernel=False),
        *([] if on_cuda else [decode_attention(queries, keys, keys, scale=0.125)]),
    ):
        assert np.array_equal(np.array(got), np.array(want))
    long = mx.random.normal((1, 2, MAX_POSITIONS + 1, 64))
    want = mx.fast.scaled_dot_product_attention(queries, long, long, scale=0.125)
    assert np.array_equal(np.array(decode_attention(queries, long, long, scale=0.125)), np.array(want))


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_with_kernels_equals_step_without(dtype: str, kernels_on) -> None:
    """The whole compiled step (tiny model, INT4): the norm kernels change nothing; with the attention kernel the
    logits move by the dtype's rounding (fp32: the same tokens)."""
    model = build(False)
    # As a converted checkpoint: floats in the dtype (A_log stays float32, as mlx-lm keeps it), then INT4.
    model.update(
        tree_map_with_path(lambda p, x: x if p.endswith("A_log") else x.astype(getattr(mx, dtype)), model.parameters())
    )
    nn.quantize(model, group_size=64, bits=4)
    fuse_projections(model)
    prompt = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], 40).tolist()

    def steps(norms: bool, attention: bool):
        return run(
            model, prompt, steps=12, step=compiled_decode_step(model, norm_kernels=norms, attention_kernel=attention)
        )

    want, norms, both = steps(False, False), steps(True, False), steps(True, True)
    assert norms[0] == want[0]
    differ = np.flatnonzero((norms[1] != want[1]).any(axis=-1))
    assert differ.size == 0, f"rows {differ.tolist()} differ, by up to {np.abs(norms[1] - want[1]).max()}"
    assert_steps_agree(both, want, dtype)


def assert_steps_agree(got: tuple, want: tuple, dtype: str) -> None:
    """Two decode steps' (tokens, logits) whose sums run in another order: fp32 gives the same tokens, logits within
    1e-4; in bf16 the widened random model amplifies the roundings step by step, so the first token and the first
    four rows of logits (within 10%)."""
    if dtype == "float32":
        assert got[0] == want[0]
        assert rel_err(got[1], want[1]) <= 1e-4
    else:
        assert got[0][0] == want[0][0]
        assert rel_err(got[1][:4], want[1][:4]) <= 0.1


# -- the one-call step: the whole token compiled once, over a fixed-capacity KV cache --------------------------------


@pytest.mark.parametrize("quantized", [False, True])
def test_one_call_step_matches_segmented_step(quantized: bool) -> None:
    """The one-call step gives the segmented step's greedy tokens and logits (MLX's ops: the CPU path), across KV
    buffer growth (mlx-lm's prefill leaves 256 positions; a capacity step of 96 regrows them to 96, then 192)."""
    model = build(quantized)
    fuse_projections(model)
    prompt = np.random.default_rng(4).integers(0, CONFIG["vocab_size"], 50).tolist()
    segmented = compiled_decode_step(model, norm_kernels=False, attention_kernel=False)
    tokens_ref, logits_ref = run(model, prompt, steps=60, step=segmented)
    assert len(set(tokens_ref)) > 10  # a wandering model: a wrong position or a stale cache slot changes tokens
    one_call = compiled_decode_step(model, norm_kernels=False, attention_kernel=False, one_call=True, capacity_step=96)
    seen: list[tuple[int, int]] = []

    def step(token, cache):
        logits = one_call(token, cache)
        seen.append((cache[3].offset, cache[3].keys.shape[2]))
        return logits

    tokens, logits = run(model, prompt, steps=60, step=step)
    assert tokens == tokens_ref
    assert rel_err(logits, logits_ref) <= 1e-4
    assert seen[0] == (51, 96) and seen[-1] == (110, 192)
    assert all(capacity % 96 == 0 and offset <= capacity for offset, capacity in seen)


@pytest.mark.parametrize("select", [True, False])
def test_one_call_step_after_undo_and_new_prompt(select: bool, monkeypatch) -> None:
    """As the engine uses it: a step undone by resetting the KV offsets (the written slot is masked, then
    overwritten), and a prompt fed through mlx-lm's cache after one-call steps (mlx-lm grows the 48-position buffer
    to 289, the step regrows it to 96). KV writes by a select over the buffer, or (``select`` False, as for buffers
    over ``KV_SELECT_MAX``) by ``mx.slice_update``."""
    from mlx_lm.models.cache import KVCache

    from voicepipe.llm import mlx_gated_delta

    if not select:
        monkeypatch.setattr(mlx_gated_delta, "KV_SELECT_MAX", 0)

    model = build(False)
    fuse_projections(model)
    step = compiled_decode_step(model, norm_kernels=False, attention_kernel=False, one_call=True, capacity_step=48)
    rng = np.random.default_rng(5)
    prompt, more = rng.integers(0, CONFIG["vocab_size"], 30).tolist(), rng.integers(0, CONFIG["vocab_size"], 40)

    def feed(cache, one: list[int], undo: bool) -> mx.array:
        model(mx.array([prompt]), cache=cache)
        for token in one:
            if undo:  # a step for another token first, then undone (as Qwen35MLXChat._take_ahead)
                offsets = [c.offset if type(c) is KVCache else list(c.cache) for c in cache]
                mx.eval(step(mx.array([[token + 1]]), cache))
                for c, record in zip(cache, offsets, strict=True):
                    if type(c) is KVCache:
                        c.offset = record
                    else:
                        c.cache = record
            step(mx.array([[token]]), cache)
        logits = model(mx.array([more.tolist()]), cache=cache)[:, -1]
        assert cache[3].keys.shape[2] == 289
        logits = mx.concatenate([logits, step(mx.array([[7]]), cache)[:, -1]])
        assert cache[3].keys.shape[2] == 96
        return logits

    want = feed(model.make_cache(), [3, 9, 27], undo=False)
    got = feed(model.make_cache(), [3, 9, 27], undo=True)
    plain = model.make_cache()
    model(mx.array([prompt + [3, 9, 27] + more.tolist()]), cache=plain)
    reference = model(mx.array([[7]]), cache=plain)[:, -1]
    assert rel_err(np.array(got), np.array(want)) <= 1e-5
    assert rel_err(np.array(got[1:]), np.array(reference)) <= 1e-4


def test_decode_attention_length_masks_the_rest_of_the_buffer(monkeypatch) -> None:
    """With ``length`` only the filled positions count, whatever the rest of the buffer holds (CPU: MLX's masked
    attention; CUDA: the masked kernel, bit-identical to the kernel over the filled part)."""
    if on_cuda:
        monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1")
    mx.random.seed(6)
    queries, keys, values = (mx.random.normal(s) for s in ((1, 4, 1, 64), (1, 2, 40, 64), (1, 2, 40, 64)))
    for filled in (1, 17, 40):
        length = mx.array([filled], dtype=mx.int32)
        got = decode_attention(queries, keys, values, scale=0.125, length=length)
        want = decode_attention(queries, keys[..., :filled, :], values[..., :filled, :], scale=0.125)
        if on_cuda:
            assert np.array_equal(np.array(got), np.array(want))
        else:
            assert rel_err(got, want) <= 1e-5
    with pytest.raises(ValueError, match="mask or a length"):
        decode_attention(queries, keys, values, scale=0.125, mask="causal", length=length)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_decode_attention_gate_equals_mlx_lm_gating(dtype: str, monkeypatch) -> None:
    """``gate`` multiplies the output by sigmoid(gate) as mlx-lm's attention does after it (``output *
    mx.sigmoid(gate)`` on the [B, 1, H * D] rows); the gate read in place from a strided view. On CUDA the kernel's
    gating (MLX's sigmoid in the dtype's arithmetic) equals MLX's ops on the kernel's own attention output."""
    if on_cuda:
        monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1")
    mx.random.seed(8)
    f = getattr(mx, dtype)
    queries, keys = mx.random.normal((2, 4, 1, 64)).astype(f), mx.random.normal((2, 2, 24, 64)).astype(f)
    projection = (4 * mx.random.normal((2, 1, 4, 128))).astype(f)  # per head [query | gate], as Qwen3.5's
    gate = projection[..., 64:]
    length = mx.array([20], dtype=mx.int32)
    plain = decode_attention(queries, keys, keys, scale=0.125, length=length)
    want = plain.transpose(0, 2, 1, 3).reshape(2, 1, -1) * mx.sigmoid(gate.reshape(2, 1, -1))
    got = decode_attention(queries, keys, keys, scale=0.125, length=length, gate=gate)
    assert got.shape == (2, 1, 256) and got.dtype == f
    assert np.array_equal(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32)))


@needs_cuda
def test_one_call_step_with_kernels(kernels_on) -> None:
    """On a GPU, the one-call step with every kernel against the segmented step with every kernel (fp32: the same
    tokens, the logits within the attention kernel's rounding)."""
    model = build(True)
    fuse_projections(model)
    prompt = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], 40).tolist()
    want = run(model, prompt, steps=24, step=compiled_decode_step(model))
    got = run(model, prompt, steps=24, step=compiled_decode_step(model, one_call=True, capacity_step=32))
    assert got[0] == want[0]
    assert rel_err(got[1], want[1]) <= 1e-4
