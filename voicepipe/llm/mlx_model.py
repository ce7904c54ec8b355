"""The Qwen3.5 model for the MLX engine: read a directory of MLX weights (checked for truncation), build mlx-lm's
``qwen3_5`` model from it (quantizing in memory if asked) and apply the engine's changes to it.

Everything that builds or loads the MLX model goes through ``load_mlx_model`` so that engine tweaks (e.g. a faster
prefill kernel) hook in at one place: ``prepare_model``. Turning a Hugging Face checkpoint into such a directory is
``voicepipe.convert.to_mlx``'s job.

Two things are hand-written here because mlx-lm does not do them:

- Norm weights. Qwen3.5 stores a norm weight ``w`` and applies ``1 + w``. mlx-lm's ``sanitize`` adds the 1 in the
  checkpoint's dtype; in bf16 the sum rounds to a step of 2**-7 near 1 (up to 0.39% error per weight, ~8e-3 relative
  logit error on the full model). The converter folds ``1 + w`` in fp32 and keeps those small vectors in fp32; they
  are applied like transformers does (normalise in fp32, multiply by the fp32 weight, cast back to the activation
  dtype): ``Fp32RMSNorm``.
- The config. transformers saves ``model_type: qwen3_5_text``, which mlx-lm does not know; it is the same model as
  mlx-lm's ``qwen3_5``.
"""

from __future__ import annotations

import functools
import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from voicepipe._optional import require
from voicepipe.errors import ModelLoadError, UserError

if TYPE_CHECKING:
    import mlx.nn as nn

__all__ = [
    "DEFAULT_REPO",
    "GROUP_SIZE",
    "QUANTIZATION_BITS",
    "build_model",
    "checkpoint_kind",
    "config_bits",
    "cpu_prefill_linear_class",
    "fp32_norm_class",
    "load_mlx_model",
    "mlx_lm_config",
    "prepare_model",
    "quantize_model",
    "read_config",
    "requested_bits",
    "weight_files",
    "weights_nbytes",
]

#: The MLX engine's default weights (INT4, already in mlx-lm's layout).
DEFAULT_REPO = "aufklarer/Qwen3.5-0.8B-Chat-MLX"
GROUP_SIZE = 64
QUANTIZATION_BITS = {"int4": 4, "int8": 8}

_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")

Kind = Literal["mlx", "hf"]


def _mx():
    return require("mlx.core", extra="mlx", purpose="The MLX engine")


# -- checkpoint files ------------------------------------------------------------------------------------------------


def read_config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    if not file.is_file():
        raise ModelLoadError(f"{file}: missing; a model directory needs config.json next to its *.safetensors files")
    try:
        config = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{file}: not valid JSON ({exc}); download or convert the model again") from exc
    model_type = config.get("model_type")
    if model_type not in _MODEL_TYPES:
        raise ModelLoadError(
            f"{file}: model_type is {model_type!r}, expected one of {', '.join(_MODEL_TYPES)}; "
            "point the MLX engine at a Qwen3.5 checkpoint"
        )
    return config


def _safetensors_header(file: Path) -> dict[str, Any]:
    """Parse a safetensors header and check the file holds all the bytes it promises (catches truncated downloads)."""
    try:
        size = file.stat().st_size
        with file.open("rb") as fh:
            (n,) = struct.unpack("<Q", fh.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file size {size}")
            header = json.loads(fh.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{file}: not a readable safetensors file ({exc}); delete it and download again") from exc
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ModelLoadError(
            f"{file}: truncated or corrupt (header promises {8 + n + end} bytes, file has {size}); "
            "delete it and download or convert again"
        )
    return header


def weight_files(path: Path) -> list[Path]:
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (OSError, ValueError, KeyError) as exc:
            raise ModelLoadError(f"{index}: unreadable ({exc}); download the model again") from exc
        files = [path / name for name in names]
        for file in files:
            if not file.is_file():
                raise ModelLoadError(f"{file}: missing (listed in {index.name}); download the model again")
        return files
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise ModelLoadError(f"{path}: no model*.safetensors files; download the model again or check the path")
    return files


def checkpoint_kind(path: str | Path) -> Kind:
    """``"mlx"`` for weights already in mlx-lm's layout, ``"hf"`` for a plain Hugging Face checkpoint.

    Decided like mlx-lm does: Hugging Face stores the DeltaNet conv1d weight as (C, 1, K), MLX as (C, K, 1).
    """
    path = Path(path)
    read_config(path)
    for file in weight_files(path):
        for key, info in _safetensors_header(file).items():
            if key.endswith("conv1d.weight"):
                return "mlx" if info["shape"][-1] == 1 else "hf"
    raise ModelLoadError(f"{path}: no linear-attention conv1d weight found; this is not a Qwen3.5 checkpoint")


# -- the model -------------------------------------------------------------------------------------------------------


@functools.cache
def fp32_norm_class() -> type:
    """The ``Fp32RMSNorm`` module class, built on first use so that importing this module does not import MLX."""
    mx = _mx()
    nn = require("mlx.nn", extra="mlx")

    class Fp32RMSNorm(nn.Module):
        """RMSNorm that normalises and scales in fp32 and returns the input dtype, as transformers' Qwen3.5 does."""

        def __init__(self, weight: Any, eps: float) -> None:
            super().__init__()
            self.weight = weight
            self.eps = eps

        def __call__(self, x: Any) -> Any:
            return mx.fast.rms_norm(x.astype(mx.float32), self.weight.astype(mx.float32), self.eps).astype(x.dtype)

    return Fp32RMSNorm


#: Inputs with at least this many rows (prompt tokens) take the dequantize + fp32 matmul path on the CPU.
CPU_PREFILL_ROWS = 8


@functools.cache
def cpu_prefill_linear_class() -> type:
    """``QuantizedLinear`` that, on the CPU, multiplies many rows through the dequantized fp32 weight.

    Hand-written because MLX's CPU quantized matmul has no matrix-matrix kernel: 128 prompt rows cost 128 times one
    row (measured: 0.86 s for a 3584x1024 INT4 weight), while dequantizing (14 ms) and one fp32 GEMM through BLAS
    (13 ms with OpenBLAS preloaded) cost ~50 ms. Decode (one row) keeps MLX's quantized kernel. Only swapped in when
    the default device is the CPU; Metal and CUDA have fast quantized GEMMs.
    """
    mx = _mx()
    nn = require("mlx.nn", extra="mlx")

    class CpuPrefillQuantizedLinear(nn.QuantizedLinear):
        def __call__(self, x: Any) -> Any:
            if x.ndim < 2 or x.size // x.shape[-1] < CPU_PREFILL_ROWS or self.mode != "affine":
                return super().__call__(x)
            weight = mx.dequantize(self.weight, self.scales, self.biases, self.group_size, self.bits, self.mode)
            y = x.astype(mx.float32) @ weight.astype(mx.float32).T
            if "bias" in self:
                y = y + self.bias
            return y.astype(x.dtype)

    return CpuPrefillQuantizedLinear


def _use_cpu_prefill_linears(model: nn.Module) -> None:
    mx = _mx()
    nn = require("mlx.nn", extra="mlx")
    if mx.default_device().type != mx.cpu:
        return
    cls = cpu_prefill_linear_class()
    for _, module in model.named_modules():
        if type(module) is nn.QuantizedLinear:
            module.__class__ = cls  # same parameters, another __call__


def _use_fp32_norms(model: nn.Module) -> None:
    """Swap mlx-lm's ``nn.RMSNorm`` modules (the ``1 + w`` norms) for ``Fp32RMSNorm``, keeping their weights."""
    nn = require("mlx.nn", extra="mlx")
    utils = require("mlx.utils", extra="mlx")
    cls = fp32_norm_class()
    swaps = [(name, cls(m.weight, m.eps)) for name, m in model.named_modules() if type(m) is nn.RMSNorm]
    if swaps:
        model.update_modules(utils.tree_unflatten(swaps))


def prepare_model(model: nn.Module, *, fuse: bool = True) -> nn.Module:
    """Last step of every load: the one place where engine-level changes to mlx-lm's model are applied.

    ``fuse``: join each layer's projections into one matmul (``voicepipe.llm.mlx_fused``); conversion passes False
    so that saved checkpoints keep mlx-lm's layout.
    """
    _use_fp32_norms(model)
    if fuse:
        require("voicepipe.llm.mlx_fused", extra="mlx").fuse_projections(model)
    _use_cpu_prefill_linears(model)
    return model


def mlx_lm_config(config: dict[str, Any]) -> dict[str, Any]:
    """A config mlx-lm's ``qwen3_5`` accepts: model_type renamed, rope fields where it reads them, layers checked."""
    config = json.loads(json.dumps(config))
    config["model_type"] = "qwen3_5"
    text = config.get("text_config", config)
    if text is not config and "tie_word_embeddings" in config:
        text.setdefault("tie_word_embeddings", config["tie_word_embeddings"])  # mlx-lm reads it from text_config
    rope = text.get("rope_parameters") or text.get("rope_scaling") or {}
    for key in ("rope_theta", "partial_rotary_factor"):
        if key in text and key not in rope:
            rope[key] = text[key]
    if rope:
        text["rope_parameters"] = rope
    layer_types = text.get("layer_types")
    interval = text.get("full_attention_interval", 4)
    if layer_types is not None:
        expected = [
            "full_attention" if (i + 1) % interval == 0 else "linear_attention" for i in range(len(layer_types))
        ]
        if list(layer_types) != expected:
            raise ModelLoadError(
                "config.json: layer_types is not 'linear_attention' x3 then 'full_attention' repeated, "
                "which is the only layout mlx-lm's qwen3_5 builds"
            )
    return config


def build_model(config: dict[str, Any]) -> nn.Module:
    arch = require("mlx_lm.models.qwen3_5", extra="mlx", purpose="The MLX engine")
    return arch.Model(arch.ModelArgs.from_dict(config))


def quantize_model(model: nn.Module, bits: int, progress: Any = None) -> None:
    """INT4/INT8 affine quantization with group size 64, layer by layer (so a progress bar can follow)."""
    mx = _mx()
    nn = require("mlx.nn", extra="mlx")

    def predicate(_path: str, module: Any) -> bool:
        return hasattr(module, "to_quantized") and module.weight.shape[-1] % GROUP_SIZE == 0

    layers = model.layers
    task = progress.add_task(f"Quantizing to INT{bits}", total=len(layers) + 1) if progress else None
    for layer in layers:
        nn.quantize(layer, GROUP_SIZE, bits, class_predicate=predicate)
        mx.eval(layer.parameters())
        if progress:
            progress.advance(task)
    nn.quantize(model, GROUP_SIZE, bits, class_predicate=predicate)  # the embedding (and lm_head when untied)
    mx.eval(model.parameters())
    if progress:
        progress.advance(task)


def config_bits(config: dict[str, Any]) -> int | None:
    quant = config.get("quantization") or config.get("quantization_config")
    if not quant:
        return None
    if "bits" not in quant:
        raise ModelLoadError(f"config.json: unsupported quantization {quant}; convert with scripts/convert_mlx.py")
    return int(quant["bits"])


def requested_bits(quantization: str | None) -> int | None:
    if quantization is None:
        return None
    if quantization not in QUANTIZATION_BITS:
        raise UserError(f"quantization={quantization!r}: use 'int4', 'int8' or None (keep the checkpoint's precision)")
    return QUANTIZATION_BITS[quantization]


def weights_nbytes(model: nn.Module) -> int:
    """Bytes of the model's parameters (resident once evaluated)."""
    utils = require("mlx.utils", extra="mlx")
    return sum(v.nbytes for _, v in utils.tree_flatten(model.parameters()))


def load_mlx_model(path: str | Path, *, quantization: str | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Load a directory of MLX weights into mlx-lm's ``qwen3_5`` model (quantizing in memory if asked)."""
    mlx_utils = require("mlx_lm.utils", extra="mlx", purpose="The MLX engine")
    mx = _mx()
    path = Path(path)
    bits = requested_bits(quantization)
    config = read_config(path)
    for file in weight_files(path):
        _safetensors_header(file)
    have = config_bits(config)
    if bits is not None and have is not None and have != bits:
        raise UserError(
            f"{path} holds INT{have} weights, not INT{bits}: pass quantization='int{have}' or None, "
            "or convert the original checkpoint with scripts/convert_mlx.py"
        )
    try:
        model, config = mlx_utils.load_model(path, model_config=mlx_lm_config(config))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: the weights do not fit the Qwen3.5 model in config.json ({exc})") from exc
    if bits is not None and have is None:
        quantize_model(model, bits)
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    prepare_model(model)  # after quantizing: it adapts quantized layers too
    mx.eval(model.parameters())
    return model, config
