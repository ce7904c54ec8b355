"""Convert a CTranslate2 Whisper directory (faster-whisper format) to mlx-whisper's format.

Hand-written because no library reads CTranslate2's ``model.bin`` back (ctranslate2 only writes it from Python) nor
converts it to MLX. The format (ctranslate2/specs/model_spec.py ``_serialize``): a version, the spec name, a
revision, then named tensors (rank, shape, dtype id, bytes) and aliases. The tensors map 1:1 onto mlx-whisper's
``Whisper`` module after renaming, splitting CT2's fused q/k/v (self-attention) and k/v (cross-attention)
projections (the key projection has no bias in Whisper: its slice of the fused bias is zero), and moving the conv
kernels' axis (CT2: out, in, width; MLX: out, width, in). The encoder's sinusoidal positions are recomputed by
mlx-whisper, so they are not copied.

Output: ``config.json`` (mlx-whisper's ``ModelDimensions``) and ``weights.safetensors``.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import tempfile
from pathlib import Path

import numpy as np

from voicepipe.assets import cache_dir, file_lock, fingerprint, progress_bar
from voicepipe.errors import ModelLoadError
from voicepipe.outfile import replace_dir

__all__ = ["read_ct2_model", "ct2_to_mlx_weights", "convert_ct2_to_mlx", "cache_root", "converted_dir", "is_ct2_dir"]

# CTranslate2 DataType enum order (include/ctranslate2/types.h); bfloat16 has no numpy dtype: read as uint16.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: np.uint16}
_BF16 = 5


def is_ct2_dir(path: str | os.PathLike[str]) -> bool:
    p = Path(path)
    return (p / "model.bin").is_file() and (p / "config.json").is_file()


def read_ct2_model(path: str | os.PathLike[str]) -> tuple[str, dict[str, np.ndarray]]:
    """Read a CTranslate2 ``model.bin``: (spec name, {variable name: array}); aliases resolved to their targets."""
    path = Path(path)
    data = path.read_bytes()
    offset = 0

    def take(fmt: str) -> int:
        nonlocal offset
        (value,) = struct.unpack_from("<" + fmt, data, offset)
        offset += struct.calcsize("<" + fmt)
        return value

    def text() -> str:
        nonlocal offset
        length = take("H")
        value = data[offset : offset + length - 1].decode("utf-8")
        offset += length
        return value

    try:
        version = take("I")
        if version < 5:
            raise ModelLoadError(f"{path}: CTranslate2 binary version {version} is too old; re-convert with ct2 >= 3")
        spec = text()
        take("I")  # revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(take("I")):
            name = text()
            shape = tuple(take("I") for _ in range(take("B")))
            dtype_id = take("B")
            nbytes = take("I")
            array = np.frombuffer(
                data, dtype=_DTYPES[dtype_id], count=nbytes // np.dtype(_DTYPES[dtype_id]).itemsize, offset=offset
            )
            if dtype_id == _BF16:
                array = (array.astype(np.uint32) << 16).view(np.float32)
            variables[name] = array.reshape(shape)
            offset += nbytes
        for _ in range(take("I")):
            alias, target = text(), text()
            variables[alias] = variables[target]
    except (struct.error, KeyError, ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable CTranslate2 model.bin ({exc}); check the file is complete"
        ) from exc
    return spec, variables


def _layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    return 1 + max(int(m.group(1)) for name in variables if (m := pattern.match(name)))


def ct2_to_mlx_weights(
    variables: dict[str, np.ndarray], dtype: np.dtype = np.float32, alignment_heads: list[list[int]] | None = None
) -> tuple[dict, dict[str, np.ndarray]]:
    """Map CT2 Whisper variables to mlx-whisper (dims config, {parameter name: array}).

    ``alignment_heads`` (from the CT2 ``config.json``: [layer, head] pairs) become mlx-whisper's int32
    ``alignment_heads`` array (used for word timestamps).
    """
    v = variables
    out: dict[str, np.ndarray] = {}

    def put(name: str, array: np.ndarray) -> None:
        out[name] = np.ascontiguousarray(array, dtype=dtype)

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", v[f"{src}/gamma"])
        put(f"{dst}.bias", v[f"{src}/beta"])

    def linear(dst: str, src: str, *, bias: bool = True) -> None:
        put(f"{dst}.weight", v[f"{src}/weight"])
        if bias:
            put(f"{dst}.bias", v[f"{src}/bias"])

    def fused(dst: str, names: tuple[str, ...], src: str) -> None:
        weights = np.split(v[f"{src}/weight"], len(names), axis=0)
        biases = np.split(v[f"{src}/bias"], len(names), axis=0)
        for name, w, b in zip(names, weights, biases, strict=True):
            put(f"{dst}.{name}.weight", w)
            if name != "key":  # Whisper's key projection has no bias (CT2 stores zeros there)
                put(f"{dst}.{name}.bias", b)

    for i in (1, 2):
        put(f"encoder.conv{i}.weight", np.swapaxes(v[f"encoder/conv{i}/weight"], 1, 2))
        put(f"encoder.conv{i}.bias", v[f"encoder/conv{i}/bias"])
    n_audio_layer = _layers(v, "encoder")
    for i in range(n_audio_layer):
        src, dst = f"encoder/layer_{i}", f"encoder.blocks.{i}"
        fused(f"{dst}.attn", ("query", "key", "value"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.mlp1", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("encoder.ln_post", "encoder/layer_norm")

    put("decoder.token_embedding.weight", v["decoder/embeddings/weight"])
    put("decoder.positional_embedding", v["decoder/position_encodings/encodings"])
    n_text_layer = _layers(v, "decoder")
    for i in range(n_text_layer):
        src, dst = f"decoder/layer_{i}", f"decoder.blocks.{i}"
        fused(f"{dst}.attn", ("query", "key", "value"), f"{src}/self_attention/linear_0")
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        fused(f"{dst}.cross_attn", ("key", "value"), f"{src}/attention/linear_1")
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.mlp1", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp2", f"{src}/ffn/linear_1")
        norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
    norm("decoder.ln", "decoder/layer_norm")
    if alignment_heads:
        out["alignment_heads"] = np.asarray(alignment_heads, dtype=np.int32).reshape(-1, 2)

    conv1 = v["encoder/conv1/weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(v["encoder/position_encodings/encodings"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(v["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(v["decoder/embeddings/weight"].shape[0]),
        "n_text_ctx": int(v["decoder/position_encodings/encodings"].shape[0]),
        "n_text_state": int(v["decoder/embeddings/weight"].shape[1]),
        "n_text_head": int(v["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    return dims, out


def convert_ct2_to_mlx(src: str | os.PathLike[str], dst: str | os.PathLike[str], *, dtype: str = "float32") -> Path:
    """Convert the CT2 Whisper directory ``src`` into an mlx-whisper directory ``dst`` (written atomically; an existing
    ``dst`` is replaced only if it holds nothing but an earlier output)."""
    src, dst = Path(src), Path(dst)
    if not is_ct2_dir(src):
        raise ModelLoadError(
            f"{src}: no model.bin/config.json there; give a CTranslate2 (faster-whisper) Whisper directory"
        )
    if dtype not in ("float32", "float16"):
        raise ModelLoadError(f"dtype must be float32 or float16, not {dtype!r}")
    import mlx.core as mx

    with progress_bar(transient=True) as progress:
        task = progress.add_task(f"converting {src.name} to mlx-whisper", total=3)
        spec, variables = read_ct2_model(src / "model.bin")
        if spec != "WhisperSpec":
            raise ModelLoadError(f"{src}: holds a {spec}, not a Whisper model")
        progress.advance(task)
        ct2_config = json.loads((src / "config.json").read_text())
        dims, weights = ct2_to_mlx_weights(variables, np.dtype(dtype), ct2_config.get("alignment_heads"))
        progress.advance(task)
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
        try:
            mx.save_safetensors(str(tmp / "weights.safetensors"), {k: mx.array(a) for k, a in weights.items()})
            config = {"model_type": "whisper", **dims}
            (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any model directory
            replace_dir(tmp, dst, what="mlx-whisper output")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        progress.advance(task)
    return dst


def cache_root() -> Path:
    """Where converted models are cached: ``$VOICEPIPE_CACHE/mlx-whisper`` (default ``~/.cache/voicepipe/mlx-whisper``)."""
    return cache_dir("mlx-whisper")


def converted_dir(src: str | os.PathLike[str], *, dtype: str = "float32") -> Path:
    """Convert ``src`` once into ``$VOICEPIPE_CACHE/mlx-whisper/`` (keyed by its model.bin) and return that dir."""
    src = Path(src).resolve()
    key = fingerprint([src / "model.bin"], dtype)
    root = cache_root()
    dst = root / f"{src.name}-{key}"
    if (dst / "weights.safetensors").is_file():
        return dst
    with file_lock(root / f"{dst.name}.lock"):
        if not (dst / "weights.safetensors").is_file():
            convert_ct2_to_mlx(src, dst, dtype=dtype)
    return dst
