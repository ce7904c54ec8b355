"""Hugging Face Qwen3.5 checkpoint -> GGUF (F32/BF16) -> Q4_K_M / Q4_0 / Q8_0, for the llama.cpp engine.

The converter must match the llama.cpp inside the installed llama-cpp-python, and it ships only in that package's
sdist (``vendor/llama.cpp/convert_hf_to_gguf.py``, its ``conversion/`` package, and the ``gguf-py`` it was released
with: PyPI ``gguf`` 0.19 lacks architectures this converter registers). So it is
fetched with pip for the installed version on first use and cached, never copied into this repository. Quantization
uses llama.cpp itself (``llama_cpp.llama_model_quantize``).
"""

from __future__ import annotations

import ctypes
import importlib.metadata
import json
import logging
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from voicepipe.assets import cache_dir, file_lock, fingerprint, pip_download, progress_bar
from voicepipe.errors import ModelLoadError, UserError
from voicepipe.outfile import OutputFile

__all__ = [
    "QUANTIZATIONS",
    "cache_root",
    "converter_dir",
    "convert_hf_to_gguf",
    "quantize_gguf",
    "gguf_for_checkpoint",
]

#: quantization name -> llama.cpp file type (enum llama_ftype)
QUANTIZATIONS: dict[str, int] = {"f32": 0, "bf16": 32, "q8_0": 7, "q4_0": 2, "q4_k_m": 15}
_FLOAT_TYPES = ("f32", "bf16")
_CONVERSION_VERSION = "1"  # bump when the output of this module changes


def cache_root() -> Path:
    """Where converted GGUF files are cached: ``$VOICEPIPE_CACHE/gguf`` (default ``~/.cache/voicepipe/gguf``)."""
    return cache_dir("gguf")


def _llama_cpp_version() -> str:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError as exc:
        raise UserError(
            "GGUF conversion needs the 'llamacpp' extra, which is not installed; "
            "install it with: pip install 'voicepipe[llamacpp]'"
        ) from exc


def converter_dir(version: str | None = None) -> Path:
    """The cached ``convert_hf_to_gguf.py`` (+ ``conversion/``, ``gguf-py/``) of llama-cpp-python ``version`` (default: installed).

    Fetched on first use with ``pip download --no-deps --no-binary :all: llama-cpp-python==VERSION``
    (``voicepipe.assets.pip_download``).
    """
    version = version or _llama_cpp_version()
    out = cache_root() / "converter" / version
    with file_lock(cache_root() / "converter.lock"):
        if (out / "convert_hf_to_gguf.py").exists():
            return out
        with tempfile.TemporaryDirectory(prefix="voicepipe-sdist-") as tmp:
            try:
                sdist = pip_download(f"llama-cpp-python=={version}", tmp, sdist=True, quiet=True)
            except ModelLoadError as exc:
                raise ModelLoadError(f"the GGUF converter: {exc}") from exc
            partial = out.with_name(out.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
            with tarfile.open(sdist) as tar:
                for member in tar.getmembers():
                    parts = Path(member.name).parts
                    if len(parts) < 4 or parts[1:3] != ("vendor", "llama.cpp"):
                        continue
                    rel = Path(*parts[3:])
                    wanted = rel == Path("convert_hf_to_gguf.py") or rel.parts[0] == "conversion"
                    wanted = wanted or rel.parts[:2] == ("gguf-py", "gguf")
                    if member.isfile() and wanted:
                        target = partial / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        source = tar.extractfile(member)
                        if source is not None:
                            target.write_bytes(source.read())
            if not (partial / "convert_hf_to_gguf.py").exists() or not (partial / "gguf-py" / "gguf").is_dir():
                raise ModelLoadError(f"llama-cpp-python=={version} sdist has no vendor/llama.cpp/convert_hf_to_gguf.py")
            shutil.rmtree(out, ignore_errors=True)
            partial.rename(out)
    return out


def convert_hf_to_gguf(checkpoint: str | Path, out_file: str | Path, *, outtype: str = "f32") -> Path:
    """Convert a Hugging Face Qwen3.5 checkpoint directory to one GGUF file (``outtype`` f32, bf16 or f16).

    The MTP head is left out (``--no-mtp``): voicepipe does not use speculative decoding, and random test checkpoints
    have none.
    """
    checkpoint, out_file = Path(checkpoint), Path(out_file)
    if not (checkpoint / "config.json").exists():
        raise ModelLoadError(f"{checkpoint}: not a Hugging Face checkpoint (no config.json)")
    if outtype not in ("f32", "bf16", "f16"):
        raise UserError(f"outtype {outtype!r} is not supported: use f32, bf16 or f16")
    script = converter_dir() / "convert_hf_to_gguf.py"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    output = OutputFile(out_file, what="GGUF output")
    partial = output.begin()
    with tempfile.TemporaryDirectory(prefix="voicepipe-gguf-") as staging:
        source = _text_model_view(checkpoint, Path(staging))
        cmd = [sys.executable, str(script), str(source), "--outfile", str(partial), "--outtype", outtype, "--no-mtp"]
        result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not partial.exists() or partial.stat().st_size == 0:
        output.discard()
        tail = "\n".join((result.stderr or result.stdout).strip().splitlines()[-5:])
        raise ModelLoadError(f"{checkpoint}: GGUF conversion failed:\n{tail}")
    output.commit()
    return out_file


def _text_model_view(checkpoint: Path, staging: Path) -> Path:
    """A text-only checkpoint whose config says ``model_type: qwen3_5`` (the spelling mlx-lm needs) is read by the
    converter as the multimodal config, whose defaults then replace the real sizes; give the converter a view of the
    directory (symlinks) whose config says ``qwen3_5_text`` instead. Other checkpoints pass through unchanged."""
    config = json.loads((checkpoint / "config.json").read_text())
    if config.get("model_type") != "qwen3_5" or "text_config" in config:
        return checkpoint
    for f in checkpoint.iterdir():
        if f.name != "config.json":
            (staging / f.name).symlink_to(f.resolve())
    (staging / "config.json").write_text(json.dumps(dict(config, model_type="qwen3_5_text"), indent=2))
    return staging


def quantize_gguf(src: str | Path, dst: str | Path, quantization: str, *, threads: int = 0) -> Path:
    """Quantize a float GGUF with llama.cpp (``quantization``: q4_k_m, q4_0, q8_0, bf16, f32)."""
    import llama_cpp

    quantization = quantization.lower()
    if quantization not in QUANTIZATIONS:
        raise UserError(f"quantization {quantization!r} is unknown: use one of {', '.join(QUANTIZATIONS)}")
    src, dst = Path(src), Path(dst)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = QUANTIZATIONS[quantization]
    params.nthread = threads
    output = OutputFile(dst, what="quantized GGUF")
    partial = output.begin()
    # llama.cpp logs every tensor it converts (hundreds of lines) through this logger; the progress bar says enough
    llama_log = logging.getLogger("llama-cpp-python")
    level = llama_log.level
    llama_log.setLevel(logging.ERROR)
    try:
        code = llama_cpp.llama_model_quantize(str(src).encode(), str(partial).encode(), ctypes.byref(params))
    finally:
        llama_log.setLevel(level)
    if code != 0 or not partial.exists() or partial.stat().st_size == 0:
        output.discard()
        raise ModelLoadError(f"{src}: llama.cpp could not quantize it to {quantization} (code {code})")
    output.commit()
    return dst


def _checkpoint_float_type(checkpoint: Path) -> str:
    config = json.loads((checkpoint / "config.json").read_text())
    dtype = str(config.get("dtype") or config.get("torch_dtype") or (config.get("text_config") or {}).get("dtype"))
    return "bf16" if "bfloat16" in dtype else "f32"


def gguf_for_checkpoint(checkpoint: str | Path, quantization: str | None = None, *, progress: bool = True) -> Path:
    """The cached GGUF of a Hugging Face checkpoint directory, converted (and quantized) on first use.

    ``quantization=None`` keeps the checkpoint's precision (bf16 stays bf16, anything else becomes f32).
    """
    checkpoint = Path(checkpoint)
    base_type = _checkpoint_float_type(checkpoint)
    quant = (quantization or base_type).lower()
    if quant not in QUANTIZATIONS:
        raise UserError(f"quantization {quantization!r} is unknown: use one of {', '.join(QUANTIZATIONS)} or None")
    float_type = quant if quant in _FLOAT_TYPES else ("f32" if base_type == "f32" else "bf16")
    key = fingerprint(sorted(f for f in checkpoint.iterdir() if f.is_file()), _CONVERSION_VERSION, checkpoint.resolve())
    out_dir = cache_root() / f"{checkpoint.name}-{key}"
    target = out_dir / f"model-{quant}.gguf"
    with file_lock(out_dir / ".lock"):
        if target.exists():
            return target
        float_file = out_dir / f"model-{float_type}.gguf"
        steps = 1 + (not float_file.exists()) + (quant != float_type)
        with progress_bar(progress) as bar:
            task = bar.add_task(f"GGUF {checkpoint.name} -> {quant}", total=steps)
            converter_dir()
            bar.advance(task)
            if not float_file.exists():
                bar.update(task, description=f"converting {checkpoint.name} to GGUF {float_type}")
                convert_hf_to_gguf(checkpoint, float_file, outtype=float_type)
                bar.advance(task)
            if quant != float_type:
                bar.update(task, description=f"quantizing to {quant}")
                quantize_gguf(float_file, target, quant)
                bar.advance(task)
            bar.update(task, description=f"GGUF ready: {target.name}")
    return target
