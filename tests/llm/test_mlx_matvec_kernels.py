"""The norm + INT4 matvec and activation + INT4 matvec kernels of the decode step (voicepipe.llm.mlx_matvec_kernels).

The kernels are CUDA-only. On the CPU: the arithmetic they are written in (which bits of which word hold an input's
4-bit value, which scale and bias it takes, the sum split into scale * dot + bias * sum) reproduces MLX's
``quantized_matmul``, and the functions fall back to exactly MLX's ops. On a CUDA GPU the kernels run against those
ops and the whole compiled step with them against the step without them.
"""

from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")

import mlx.nn as nn  # noqa: E402
from mlx.utils import tree_map_with_path  # noqa: E402
from mlx_lm.models import qwen3_5  # noqa: E402
from mlx_lm.models.activations import swiglu  # noqa: E402

from tests.llm.test_mlx_fused import CONFIG, _widened, rel_err, run  # noqa: E402
from tests.llm.test_mlx_norm_kernels import assert_steps_agree  # noqa: E402
from voicepipe.llm.mlx_fused import fuse_projections  # noqa: E402
from voicepipe.llm.mlx_gated_delta import compiled_decode_step  # noqa: E402
from voicepipe.llm.mlx_matvec_kernels import matvec_kernel_applies, norm_matmul, swiglu_matmul  # noqa: E402
from voicepipe.llm.mlx_norm_kernels import add_rms_norm  # noqa: E402

on_cuda = mx.default_device() == mx.gpu and mx.cuda.is_available()
needs_cuda = pytest.mark.skipif(not on_cuda, reason="custom kernels are CUDA-only")


def _quantized(rows: int, inputs: int, group_size: int = 64, dtype=mx.float32, seed: int = 0) -> nn.QuantizedLinear:
    mx.random.seed(seed)
    linear = nn.Linear(inputs, rows, bias=False)
    linear.weight = (0.05 * mx.random.normal((rows, inputs))).astype(dtype)
    return nn.QuantizedLinear.from_linear(linear, group_size=group_size, bits=4)


def _kernel_arithmetic(x: np.ndarray, linear: nn.QuantizedLinear) -> np.ndarray:
    """``voicepipe_qmv_rows`` in numpy: word ``j`` of a row holds inputs ``8j .. 8j + 7``, input ``8j + t`` in bits
    ``4t .. 4t + 3``, scaled and shifted by its group's scale and bias, summed as ``scale * dot + bias * sum``."""
    words = np.array(linear.weight).astype(np.uint64)  # [N, K / 8]
    scales = np.array(linear.scales.astype(mx.float32)).astype(np.float64)
    biases = np.array(linear.biases.astype(mx.float32)).astype(np.float64)
    rows, n_words = words.shape
    q = np.stack([(words >> (4 * t)) & 0xF for t in range(8)], axis=-1).astype(np.float64)  # [N, K / 8, 8]
    xw = x.astype(np.float64).reshape(n_words, 8)
    group = (np.arange(n_words) * 8) // linear.group_size
    dots = (q * xw).sum(-1)  # [N, K / 8]
    return (scales[:, group] * dots + biases[:, group] * xw.sum(-1)).sum(-1)


@pytest.mark.parametrize("group_size", [32, 64, 128])
def test_kernel_arithmetic_reads_mlx_quantization(group_size: int) -> None:
    """The kernel's reading of the packed weights gives MLX's quantized matmul (CPU, fp32)."""
    linear = _quantized(40, 512, group_size, seed=group_size)
    x = mx.random.normal((512,))
    want = np.array(linear(x[None]))[0]
    got = _kernel_arithmetic(np.array(x), linear)
    assert rel_err(got, want) <= 1e-5


def test_ops_path_off_cuda() -> None:
    """Without the kernels the functions compute exactly MLX's ops: add + norm then the projection, mlx-lm's swiglu
    then the down projection."""
    if on_cuda:
        pytest.skip("the CPU path")
    linear, down = _quantized(96, 256), _quantized(64, 128)
    norm = nn.RMSNorm(256, eps=1e-6)
    norm.weight = 1.0 + 0.3 * mx.random.normal((256,))
    x, r = mx.random.normal((1, 1, 256)), mx.random.normal((1, 1, 256))
    assert not matvec_kernel_applies(linear, x, 256)
    h, y = norm_matmul(x, r, norm, linear)
    want_h, want_x = add_rms_norm(x, r, norm)
    assert np.array_equal(np.array(h), np.array(want_h))
    assert np.array_equal(np.array(y), np.array(linear(want_x)))
    h, y = norm_matmul(x, None, norm, linear)
    assert h is x and np.array_equal(np.array(y), np.array(linear(norm(x))))
    gate_up = mx.random.normal((1, 1, 256))
    want = down(swiglu(gate_up[..., :128], gate_up[..., 128:]))
    assert np.array_equal(np.array(swiglu_matmul(gate_up, down)), np.array(want))


# -- the kernels (CUDA only) ---------------------------------------------------------------------------------------


@pytest.fixture
def kernels_on(monkeypatch):
    monkeypatch.setenv("VOICEPIPE_MLX_DECODE_KERNEL", "1")


# Relative error allowed: fp32 sums in another order; in 16-bit types the normalised input and the output are
# rounded, and a norm that differs in its last bit can move an input by one rounding step.
_TOLERANCE = {"float32": 1e-5, "bfloat16": 2e-2, "float16": 4e-3}


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("rows", [8224, 5120, 7168, 1000])  # Qwen3.5-0.8B's DeltaNet, attention and MLP inputs
@pytest.mark.parametrize("residual", [True, False])
def test_norm_matmul_kernel_matches_mlx(dtype: str, rows: int, residual: bool, kernels_on) -> None:
    dt = getattr(mx, dtype)
    linear = _quantized(rows, 1024, dtype=dt, seed=rows)
    norm = nn.RMSNorm(1024, eps=1e-6)
    norm.weight = (1.0 + 0.3 * mx.random.normal((1024,))).astype(dt)
    x, r = (4.0 * mx.random.normal((1, 1, 1024))).astype(dt), mx.random.normal((1, 1, 1024)).astype(dt)
    assert matvec_kernel_applies(linear, x, 1024)
    h, y = norm_matmul(x, r if residual else None, norm, linear)
    want_h, want_x = add_rms_norm(x, r if residual else None, norm, kernel=False)
    want = linear(want_x)
    assert y.shape == want.shape == (1, 1, rows) and y.dtype == dt and h.dtype == dt
    assert np.array_equal(np.array(h.astype(mx.float32)), np.array(want_h.astype(mx.float32)))
    assert rel_err(np.array(y.astype(mx.float32)), np.array(want.astype(mx.float32))) <= _TOLERANCE[dtype]


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("shape", [(3584, 1024), (512, 256)])  # Qwen3.5-0.8B's down projection first
def test_swiglu_matmul_kernel_matches_mlx(dtype: str, shape: tuple, kernels_on) -> None:
    inputs, rows = shape
    dt = getattr(mx, dtype)
    down = _quantized(rows, inputs, dtype=dt, seed=inputs)
    gate_up = (2.0 * mx.random.normal((1, 1, 2 * inputs))).astype(dt)
    assert matvec_kernel_applies(down, gate_up, inputs)
    want = down(swiglu(gate_up[..., :inputs], gate_up[..., inputs:]))
    got = swiglu_matmul(gate_up, down)
    assert got.shape == want.shape and got.dtype == dt
    assert rel_err(np.array(got.astype(mx.float32)), np.array(want.astype(mx.float32))) <= _TOLERANCE[dtype]


@needs_cuda
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_step_with_matvec_kernels_matches_step_without(dtype: str, kernels_on) -> None:
    """The one-call step of a model whose hidden and MLP sizes the kernels take (256, 512), INT4, with and without
    the matvec kernels (the other kernels on in both)."""
    mx.random.seed(7)
    model = qwen3_5.Model(qwen3_5.ModelArgs.from_dict({**CONFIG, "hidden_size": 256, "intermediate_size": 512}))
    model.update(_widened(model))
    model.update(
        tree_map_with_path(lambda p, x: x if p.endswith("A_log") else x.astype(getattr(mx, dtype)), model.parameters())
    )
    nn.quantize(model, group_size=64, bits=4)
    fuse_projections(model)
    prompt = np.random.default_rng(3).integers(0, CONFIG["vocab_size"], 40).tolist()
    want = run(model, prompt, steps=12, step=compiled_decode_step(model, one_call=True, matvec_kernels=False))
    got = run(model, prompt, steps=12, step=compiled_decode_step(model, one_call=True))
    assert_steps_agree(got, want, dtype)
