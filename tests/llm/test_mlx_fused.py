"""Fused projections (voicepipe.llm.mlx_fused) against the unfused mlx-lm model, and the CUDA decode-step kernel
(voicepipe.llm.mlx_decode_kernel) against mlx-lm's ops where a CUDA GPU exists.

The models are random mlx-lm Qwen3.5 models of TINY_SHAPE (CPU MLX is slow); transformers parity of the fused model
is covered by tests/llm/test_mlx_convert.py and test_mlx.py, which load through ``load_mlx_model`` (fused).
Relative error is ``max|got - want| / max|want|``.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.models import qwen3_5  # noqa: E402
from mlx_lm.models.cache import ArraysCache  # noqa: E402

from voicepipe.llm.mlx_decode_kernel import decode_kernel_available, gated_delta_decode_step  # noqa: E402
from voicepipe.llm.mlx_fused import (  # noqa: E402
    FusedAttention,
    FusedGatedDeltaNet,
    FusedMLP,
    concat_linears,
    fuse_projections,
)
from voicepipe.llm.mlx_gated_delta import compiled_decode_step, enable_chunked_prefill  # noqa: E402
from voicepipe.testing.checkpoints import TINY_SHAPE  # noqa: E402

CONFIG = {
    **TINY_SHAPE,
    "linear_num_value_heads": 8,  # GQA in the DeltaNet layers (8 value heads read 4 key heads)
    "vocab_size": 512,
    "model_type": "qwen3_5",
    "full_attention_interval": 4,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
}


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def build(quantized: bool) -> nn.Module:
    """The same random model every call (seeded), weights drawn wide enough that greedy decoding wanders."""
    mx.random.seed(7)
    model = qwen3_5.Model(qwen3_5.ModelArgs.from_dict(dict(CONFIG)))
    model.update(_widened(model))
    if quantized:
        nn.quantize(model, group_size=64, bits=4)
    mx.eval(model.parameters())
    return model


def _widened(model: nn.Module) -> dict:
    from mlx.utils import tree_map_with_path

    return tree_map_with_path(lambda p, x: x * 4.0 if p.endswith("weight") and x.ndim == 2 else x, model.parameters())


def run(model: nn.Module, prompt: list[int], steps: int, step=None) -> tuple[list[int], np.ndarray]:
    """Prefill ``prompt``, then decode ``steps`` greedy tokens (through ``step`` when given); tokens and logits
    (as float32: numpy has no bfloat16)."""
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache=cache)[:, -1]
    tokens, rows = [], [logits]
    for _ in range(steps):
        token = mx.argmax(logits, axis=-1)
        tokens.append(token.item())
        logits = step(token[:, None], cache)[:, -1] if step else model(token[:, None], cache=cache)[:, -1]
        rows.append(logits)
    return tokens, np.array(mx.concatenate(rows).astype(mx.float32))


@pytest.mark.parametrize("quantized", [False, True])
def test_fused_model_matches_unfused(quantized: bool) -> None:
    plain, fused = build(quantized), build(quantized)
    assert fuse_projections(fused) == 3 + 1 + 4  # 3 DeltaNet layers, 1 attention layer, 4 MLPs
    layers = fused.language_model.model.layers
    assert all(type(layer.linear_attn) is FusedGatedDeltaNet for layer in layers[:3])
    assert type(layers[3].self_attn) is FusedAttention
    assert all(type(layer.mlp) is FusedMLP for layer in layers)
    assert "in_proj_qkv" not in layers[0].linear_attn and "q_proj" not in layers[3].self_attn
    # Same parameters, regrouped: the byte count does not change.
    assert sum(v.nbytes for _, v in tree_flatten(fused.parameters())) == sum(
        v.nbytes for _, v in tree_flatten(plain.parameters())
    )

    prompt = np.random.default_rng(1).integers(0, CONFIG["vocab_size"], 90).tolist()
    tokens_ref, logits_ref = run(plain, prompt, steps=16)
    assert len(set(tokens_ref)) > 6  # a wandering model, so a broken state would change the tokens
    tokens, logits = run(fused, prompt, steps=16)
    assert rel_err(logits, logits_ref) <= 1e-5
    assert tokens == tokens_ref

    # The chunked prefill hook and the compiled decode step both work on the fused layers.
    assert enable_chunked_prefill(fused, threshold=16) == 3
    tokens, logits = run(fused, prompt, steps=16, step=compiled_decode_step(fused))
    assert rel_err(logits, logits_ref) <= 1e-4
    assert tokens == tokens_ref


def test_concat_linears_refuses_mixed_layers() -> None:
    mx.random.seed(0)
    a, b = nn.Linear(64, 8, bias=False), nn.Linear(64, 4, bias=False)
    joined = concat_linears([a, b])
    x = mx.random.normal((3, 64))
    assert np.allclose(np.array(joined(x)), np.array(mx.concatenate([a(x), b(x)], axis=-1)), atol=1e-6)
    assert concat_linears([a, nn.QuantizedLinear.from_linear(b, group_size=64, bits=4)]) is None
    q4 = nn.QuantizedLinear.from_linear(a, group_size=64, bits=4)
    assert concat_linears([q4, nn.QuantizedLinear.from_linear(b, group_size=64, bits=8)]) is None
    assert concat_linears([a, nn.Linear(64, 4, bias=True)]) is None


def test_fusing_skips_sharded_and_foreign_layers() -> None:
    model = build(quantized=False)
    layers = model.language_model.model.layers
    layers[0].linear_attn.sharding_group = object()  # a tensor-parallel layer keeps mlx-lm's code

    class Custom(type(layers[1].mlp)):
        pass

    layers[1].mlp.__class__ = Custom
    assert fuse_projections(model) == 3 + 1 + 4 - 2
    assert type(layers[0].linear_attn) is qwen3_5.GatedDeltaNet
    assert type(layers[1].mlp) is Custom


# -- the CUDA decode kernel (GPU only: MLX has no custom kernels on the CPU) --------------------------------------

needs_cuda = pytest.mark.skipif(
    not (mx.default_device() == mx.gpu and mx.cuda.is_available()), reason="the decode kernel is CUDA-only"
)


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("shape", [(2, 4, 32, 16), (16, 16, 128, 128), (8, 16, 128, 128)])
def test_decode_kernel_matches_mlx_lm_layer(dtype: str, shape: tuple, monkeypatch) -> None:
    """The fused layer's decode step through the kernel against mlx-lm's ops path, state and conv state included.

    Shapes (key heads, value heads, Dk, Dv): a small GQA one, Qwen3.5-0.8B's, and GQA at the real head size.
    """
    key_heads, value_heads, key_dim, value_dim = shape
    config = {
        **CONFIG,
        "hidden_size": 256,
        "linear_num_key_heads": key_heads,
        "linear_num_value_heads": value_heads,
        "linear_key_head_dim": key_dim,
        "linear_value_head_dim": value_dim,
    }
    args = qwen3_5.TextModelArgs.from_dict(config)
    mx.random.seed(3)
    layer = qwen3_5.GatedDeltaNet(args)
    layer.A_log = mx.random.uniform(-2.0, 2.5, (value_heads,))
    layer.dt_bias = mx.random.normal((value_heads,))
    layer.set_dtype(getattr(mx, dtype), predicate=lambda k: k != "A_log")
    assert fuse_projections(layer) == 1
    x = mx.random.normal((2, 1, 256)).astype(getattr(mx, dtype))
    conv = mx.random.normal((2, 3, layer.conv_dim)).astype(getattr(mx, dtype))
    state = 0.5 * mx.random.normal((2, value_heads, value_dim, key_dim))

    def step(use_kernel: bool):
        cache = ArraysCache(size=2)
        cache[0], cache[1] = conv, state
        monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1" if use_kernel else "0")
        out = layer(x, None, cache)
        return np.array(out.astype(mx.float32)), np.array(cache[0].astype(mx.float32)), np.array(cache[1])

    want, got = step(False), step(True)
    tol = 1e-4 if dtype == "float32" else 3e-2
    assert np.array_equal(got[1], want[1])  # the conv state is a shift: exact
    assert rel_err(got[2], want[2]) <= tol
    assert rel_err(got[0], want[0]) <= tol


@needs_cuda
def test_decode_kernel_rejects_odd_head_sizes() -> None:
    with pytest.raises(ValueError, match="Dk % 32"):
        gated_delta_decode_step(
            mx.zeros((1, 1, 8)), mx.zeros((1, 3, 8)), mx.zeros((8, 4, 1)), mx.zeros(1), mx.zeros(1),
            mx.zeros((1, 1, 16, 24)), mx.ones(16), 1e-6, key_heads=1, value_heads=1, key_dim=24, value_dim=16,
        )  # fmt: skip


def test_decode_kernel_is_off_on_the_cpu() -> None:
    if mx.default_device() == mx.cpu:
        assert not decode_kernel_available()
