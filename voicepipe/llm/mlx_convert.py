"""Qwen3.5 weights for MLX: find them (local dir or Hugging Face repo), convert a Hugging Face checkpoint to MLX
(fp32/bf16/fp16, INT8 or INT4 with group size 64), and load them into mlx-lm's ``qwen3_5`` model.

Everything that builds or loads the MLX model goes through ``load_mlx_model`` so that engine tweaks (e.g. a faster
prefill kernel) hook in at one place: ``prepare_model``.

Two things are hand-written here because mlx-lm does not do them:

- Norm weights. Qwen3.5 stores a norm weight ``w`` and applies ``1 + w``. mlx-lm's ``sanitize`` adds the 1 in the
  checkpoint's dtype; in bf16 the sum rounds to a step of 2**-7 near 1 (up to 0.39% error per weight, ~8e-3 relative
  logit error on the full model). We fold ``1 + w`` in fp32, keep those small vectors in fp32, and apply them like
  transformers does (normalise in fp32, multiply by the fp32 weight, cast back to the activation dtype):
  ``Fp32RMSNorm``.
- The config. transformers saves ``model_type: qwen3_5_text``, which mlx-lm does not know; it is the same model as
  mlx-lm's ``qwen3_5``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import shutil
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from voicepipe._optional import require
from voicepipe.assets import cache_dir, file_lock
from voicepipe.errors import ModelLoadError, UserError

if TYPE_CHECKING:
    import mlx.nn as nn

__all__ = [
    "DEFAULT_REPO",
    "GROUP_SIZE",
    "QUANTIZATION_BITS",
    "checkpoint_kind",
    "convert_checkpoint",
    "cpu_prefill_linear_class",
    "fp32_norm_class",
    "load_mlx_model",
    "prepare_model",
    "resolve_hf_source",
    "resolve_model_dir",
    "weights_summary",
    "weights_nbytes",
]

DEFAULT_REPO = "aufklarer/Qwen3.5-0.8B-Chat-MLX"
GROUP_SIZE = 64
QUANTIZATION_BITS = {"int4": 4, "int8": 8}
DTYPES = ("float32", "bfloat16", "float16")
#: Bumped when the conversion output changes, so cached conversions are rebuilt.
CONVERTER_VERSION = 1

_MODEL_TYPES = ("qwen3_5", "qwen3_5_text")
_NORM_SUFFIXES = (
    ".input_layernorm.weight",
    ".post_attention_layernorm.weight",
    "model.norm.weight",
    ".q_norm.weight",
    ".k_norm.weight",
)
# Files copied next to converted weights so the directory is a complete model (tokenizer and chat template included).
_SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
)
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "*.model"]

Kind = Literal["mlx", "hf"]


def _mx():
    return require("mlx.core", extra="mlx", purpose="The MLX engine")


# -- checkpoint files ------------------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict[str, Any]:
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


def _weight_files(path: Path) -> list[Path]:
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
    _read_config(path)
    for file in _weight_files(path):
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


def _model_config(config: dict[str, Any]) -> dict[str, Any]:
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


def _build(config: dict[str, Any]) -> nn.Module:
    arch = require("mlx_lm.models.qwen3_5", extra="mlx", purpose="The MLX engine")
    return arch.Model(arch.ModelArgs.from_dict(config))


def _quantize(model: nn.Module, bits: int, progress: Any = None) -> None:
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


def _quant_bits(config: dict[str, Any]) -> int | None:
    quant = config.get("quantization") or config.get("quantization_config")
    if not quant:
        return None
    if "bits" not in quant:
        raise ModelLoadError(f"config.json: unsupported quantization {quant}; convert with scripts/convert_mlx.py")
    return int(quant["bits"])


def _bits_for(quantization: str | None) -> int | None:
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
    bits = _bits_for(quantization)
    config = _read_config(path)
    for file in _weight_files(path):
        _safetensors_header(file)
    have = _quant_bits(config)
    if bits is not None and have is not None and have != bits:
        raise UserError(
            f"{path} holds INT{have} weights, not INT{bits}: pass quantization='int{have}' or None, "
            "or convert the original checkpoint with scripts/convert_mlx.py"
        )
    try:
        model, config = mlx_utils.load_model(path, model_config=_model_config(config))
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: the weights do not fit the Qwen3.5 model in config.json ({exc})") from exc
    if bits is not None and have is None:
        _quantize(model, bits)
        config["quantization"] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
    prepare_model(model)  # after quantizing: it adapts quantized layers too
    mx.eval(model.parameters())
    return model, config


# -- conversion ------------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _progress(enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
    ) as progress:
        yield progress


def _load_hf_weights(files: list[Path], progress: Any) -> dict[str, Any]:
    mx = _mx()
    weights: dict[str, Any] = {}
    task = progress.add_task("Reading weights", total=len(files)) if progress else None
    for file in files:
        try:
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{file}: unreadable ({exc}); delete it and download again") from exc
        if progress:
            progress.advance(task)
    return weights


def _fold_hf_weights(weights: dict[str, Any], dtype: str | None) -> dict[str, Any]:
    """Hugging Face layout -> mlx-lm layout: conv1d axes moved, ``1 + w`` norms folded in fp32 (see module doc)."""
    mx = _mx()
    target = getattr(mx, dtype) if dtype else None
    out = {}
    for key, value in weights.items():
        if "mtp." in key or key.startswith(("model.visual", "vision_tower")):
            continue
        if key.endswith("conv1d.weight") and value.shape[-1] != 1:
            value = value.moveaxis(2, 1)
        if key.endswith(_NORM_SUFFIXES) and value.ndim == 1:
            value = value.astype(mx.float32) + 1.0
        elif target is not None and mx.issubdtype(value.dtype, mx.floating) and not key.endswith("A_log"):
            value = value.astype(target)
        out[key] = value
    return out


def convert_checkpoint(
    src: str | Path,
    dst: str | Path,
    *,
    quantization: str | None = None,
    dtype: str | None = None,
    progress: bool = True,
) -> Path:
    """Convert a Hugging Face Qwen3.5 checkpoint directory into an MLX model directory at ``dst``.

    ``quantization``: "int4" / "int8" (affine, group size 64) or None. ``dtype``: "float32", "bfloat16", "float16" or
    None (keep the checkpoint's). Norm weights stay fp32 either way. The output is written to a temporary directory
    and renamed into place, so an interrupted conversion never leaves a half-written model.
    """
    mx = _mx()
    mlx_utils = require("mlx_lm.utils", extra="mlx", purpose="The MLX converter")
    src, dst = Path(src), Path(dst)
    bits = _bits_for(quantization)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)} or None (keep the checkpoint's)")
    if checkpoint_kind(src) != "hf":
        raise UserError(f"{src} already holds MLX weights; load it directly instead of converting it")
    config = _model_config(_read_config(src))
    files = _weight_files(src)
    with _progress(progress) as bar:
        weights = _fold_hf_weights(_load_hf_weights(files, bar), dtype)
        model = _build(config)
        weights = model.sanitize(weights)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as exc:
            raise ModelLoadError(f"{src}: the weights do not fit the Qwen3.5 model in config.json ({exc})") from exc
        del weights
        prepare_model(model, fuse=False)
        mx.eval(model.parameters())
        if bits is not None:
            _quantize(model, bits, bar)
            config["quantization"] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            task = bar.add_task("Writing MLX weights", total=1) if bar else None
            mlx_utils.save_model(tmp, model)
            mlx_utils.save_config(config, tmp / "config.json")
            for name in _SIDE_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            if bar:
                bar.advance(task)
            if dst.exists():
                shutil.rmtree(dst)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
            tmp.rename(dst)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dst


# -- finding the weights ---------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where converted checkpoints are cached: ``$VOICEPIPE_CACHE/mlx`` (default ``~/.cache/voicepipe/mlx``)."""
    return cache_dir("mlx")


def _conversion_key(src: Path, quantization: str | None) -> str:
    digest = hashlib.sha256(f"v{CONVERTER_VERSION}|{src.resolve()}|{quantization}".encode())
    for file in [src / "config.json", *_weight_files(src)]:
        st = file.stat()
        digest.update(f"|{file.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


def _converted(src: Path, quantization: str | None, progress: bool) -> Path:
    """Convert ``src`` once and reuse the result; a file lock keeps concurrent processes from converting twice."""
    root = cache_root()
    dst = root / f"{src.name}-{quantization or 'fp'}-{_conversion_key(src, quantization)}"
    with file_lock(root / f"{dst.name}.lock"):
        if not (dst / "config.json").is_file():
            convert_checkpoint(src, dst, quantization=quantization, progress=progress)
    return dst


def resolve_hf_source(repo_or_path: str | Path, *, revision: str | None = None) -> Path:
    """The local directory for ``repo_or_path``: the directory itself, or the Hugging Face repo's downloaded snapshot."""
    target = str(repo_or_path)
    local = Path(target).expanduser()
    if local.is_dir():
        if revision is not None:
            raise UserError(f"revision={revision!r} only applies to Hugging Face repos, not the local dir {local}")
        return local
    if local.exists() or target.startswith((".", "/", "~")) or target.count("/") != 1:
        raise UserError(f"{target}: not a model directory nor a Hugging Face repo id like 'org/name'; check the path")
    from voicepipe.assets import fetch_snapshot

    return fetch_snapshot(target, revision=revision, allow_patterns=_HUB_PATTERNS)


def weights_summary(path: str | Path) -> str:
    """One line about a model directory: size of its weights and their quantization."""
    path = Path(path)
    size = sum(f.stat().st_size for f in _weight_files(path))
    bits = _quant_bits(_read_config(path))
    return f"{size / 1e6:.1f} MB, " + (f"INT{bits} group {GROUP_SIZE}" if bits else "not quantized")


def resolve_model_dir(
    repo_or_path: str | Path | None = None,
    *,
    revision: str | None = None,
    quantization: str | None = None,
    progress: bool = True,
) -> Path:
    """A directory of MLX weights for ``repo_or_path`` (a local dir or a Hugging Face repo id; default
    ``DEFAULT_REPO``). Plain Hugging Face checkpoints are converted on first use and cached (see ``cache_root``);
    downloads go through ``voicepipe.assets`` (huggingface_hub's cache and progress bars, ``HF_HUB_OFFLINE``)."""
    _bits_for(quantization)
    path = resolve_hf_source(repo_or_path if repo_or_path is not None else DEFAULT_REPO, revision=revision)
    if checkpoint_kind(path) == "hf":
        return _converted(path, quantization, progress)
    return path
