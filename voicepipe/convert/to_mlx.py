"""Hugging Face Qwen3.5 checkpoint -> MLX model directory (fp32/bf16/fp16, INT8 or INT4 with group size 64), and
finding the MLX weights the engine loads: a local directory or a Hugging Face repo, converted on first use and cached.

The conversion folds the ``1 + w`` norm weights in fp32 (see ``voicepipe.llm.mlx_model``, which loads the result),
moves the DeltaNet conv1d axes to mlx-lm's layout and drops the MTP and vision weights.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from voicepipe._optional import require
from voicepipe.assets import cache_dir, file_lock, fingerprint, locate, progress_bar
from voicepipe.errors import ModelLoadError, UserError
from voicepipe.llm.mlx_model import (
    DEFAULT_REPO,
    GROUP_SIZE,
    build_model,
    checkpoint_kind,
    config_bits,
    mlx_lm_config,
    prepare_model,
    quantize_model,
    read_config,
    requested_bits,
    weight_files,
)
from voicepipe.outfile import replace_dir

__all__ = [
    "DTYPES",
    "cache_root",
    "convert_checkpoint",
    "resolve_hf_source",
    "resolve_model_dir",
    "weights_summary",
]

DTYPES = ("float32", "bfloat16", "float16")
#: Bumped when the conversion output changes, so cached conversions are rebuilt.
CONVERTER_VERSION = 1

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


# -- conversion ------------------------------------------------------------------------------------------------------


def _mx() -> Any:
    return require("mlx.core", extra="mlx", purpose="The MLX converter")


def _load_hf_weights(files: list[Path], bar: Any) -> dict[str, Any]:
    mx = _mx()
    weights: dict[str, Any] = {}
    task = bar.add_task("Reading weights", total=len(files))
    for file in files:
        try:
            weights.update(mx.load(str(file)))
        except (RuntimeError, ValueError) as exc:
            raise ModelLoadError(f"{file}: unreadable ({exc}); delete it and download again") from exc
        bar.advance(task)
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
    and renamed into place, so an interrupted conversion never leaves a half-written model; an existing ``dst`` is
    replaced only if it holds nothing but an earlier output (``voicepipe.outfile.replace_dir``).
    """
    mx = _mx()
    mlx_utils = require("mlx_lm.utils", extra="mlx", purpose="The MLX converter")
    src, dst = Path(src), Path(dst)
    bits = requested_bits(quantization)
    if dtype is not None and dtype not in DTYPES:
        raise UserError(f"dtype={dtype!r}: use one of {', '.join(DTYPES)} or None (keep the checkpoint's)")
    if checkpoint_kind(src) != "hf":
        raise UserError(f"{src} already holds MLX weights; load it directly instead of converting it")
    config = mlx_lm_config(read_config(src))
    files = weight_files(src)
    with progress_bar(progress) as bar:
        weights = _fold_hf_weights(_load_hf_weights(files, bar), dtype)
        model = build_model(config)
        weights = model.sanitize(weights)
        try:
            model.load_weights(list(weights.items()), strict=True)
        except ValueError as exc:
            raise ModelLoadError(f"{src}: the weights do not fit the Qwen3.5 model in config.json ({exc})") from exc
        del weights
        prepare_model(model, fuse=False)
        mx.eval(model.parameters())
        if bits is not None:
            quantize_model(model, bits, bar)
            config["quantization"] = {"group_size": GROUP_SIZE, "bits": bits, "mode": "affine"}
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            task = bar.add_task("Writing MLX weights", total=1)
            mlx_utils.save_model(tmp, model)
            mlx_utils.save_config(config, tmp / "config.json")
            for name in _SIDE_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, tmp / name)
            bar.advance(task)
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
            replace_dir(tmp, dst, what="MLX output")
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return dst


# -- finding the weights ---------------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Where converted checkpoints are cached: ``$VOICEPIPE_CACHE/mlx`` (default ``~/.cache/voicepipe/mlx``)."""
    return cache_dir("mlx")


def _converted(src: Path, quantization: str | None, progress: bool) -> Path:
    """Convert ``src`` once and reuse the result; a file lock keeps concurrent processes from converting twice."""
    root = cache_root()
    key = fingerprint([src / "config.json", *weight_files(src)], f"v{CONVERTER_VERSION}", quantization)
    dst = root / f"{src.name}-{quantization or 'fp'}-{key}"
    with file_lock(root / f"{dst.name}.lock"):
        if not (dst / "config.json").is_file():
            convert_checkpoint(src, dst, quantization=quantization, progress=progress)
    return dst


def resolve_hf_source(repo_or_path: str | Path, *, revision: str | None = None) -> Path:
    """The local directory for ``repo_or_path``: the directory itself, or the Hugging Face repo's downloaded snapshot."""
    local = Path(repo_or_path).expanduser()
    if local.is_dir() and revision is not None:
        raise UserError(f"revision={revision!r} only applies to Hugging Face repos, not the local dir {local}")
    return locate(repo_or_path, field="llm.model", want="dir", revision=revision, allow_patterns=_HUB_PATTERNS)


def weights_summary(path: str | Path) -> str:
    """One line about a model directory: size of its weights and their quantization."""
    path = Path(path)
    size = sum(f.stat().st_size for f in weight_files(path))
    bits = config_bits(read_config(path))
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
    requested_bits(quantization)
    path = resolve_hf_source(repo_or_path if repo_or_path is not None else DEFAULT_REPO, revision=revision)
    if checkpoint_kind(path) == "hf":
        return _converted(path, quantization, progress)
    return path
