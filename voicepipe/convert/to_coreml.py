"""Convert an HF Qwen3.5 checkpoint into a stateful CoreML package (prefill + decode functions, INT8 weights).

Output directory layout::

    OUT/model.mlpackage      functions "prefill" (input_ids/attention_mask [1, seq_len]) and "decode" ([1, 1]),
                             both with inputs position [1] and states key_cache, value_cache, conv_state,
                             recurrent_state (fp16), output logits [1, 1, vocab] fp16; weights deduplicated
    OUT/voicepipe-coreml.json  what the runtime needs to drive it (context, chunk length, state shapes, eos ids)
    OUT/tokenizer*.json ...  the checkpoint's tokenizer files, so the directory is self-contained

coremltools converts on Linux; only prediction needs macOS.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

from voicepipe._optional import require
from voicepipe.assets import progress_bar
from voicepipe.errors import UserError
from voicepipe.outfile import replace_dir

__all__ = ["MANIFEST", "PACKAGE", "convert", "main", "trace_function"]

PACKAGE = "model.mlpackage"
MANIFEST = "voicepipe-coreml.json"
FUNCTIONS = ("prefill", "decode")
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "config.json",
)


def trace_function(model: Any, seq_len: int) -> Any:
    """TorchScript of ``model`` for calls of ``seq_len`` tokens (what ``coremltools`` converts); the model's state
    buffers are left zeroed."""
    import torch

    example = (
        torch.zeros(1, seq_len, dtype=torch.int32),
        torch.ones(1, seq_len, dtype=torch.int32),
        torch.zeros(1, dtype=torch.int32),
    )
    with torch.no_grad(), model.tracing(seq_len), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.trace: still what coremltools 9 converts
        traced = torch.jit.trace(model, example, check_trace=False)
    model.reset_state()  # tracing ran the model once and wrote into the buffers
    return traced


def _trace_and_convert(model: Any, seq_len: int, *, compute_precision: str) -> Any:
    """Trace one function of the model (``seq_len`` tokens per call) and convert it to an mlprogram."""
    import numpy as np

    ct = require("coremltools", extra="coreml", purpose="CoreML conversion")
    traced = trace_function(model, seq_len)
    states = [
        ct.StateType(wrapped_type=ct.TensorType(shape=shape, dtype=np.float16), name=name)
        for name, shape in model.state_shapes().items()
    ]
    # The default pipeline casts gather indices to int16 for the Neural Engine; token ids (vocab 248,320) do not fit.
    pipeline = ct.PassPipeline.DEFAULT
    pipeline.remove_passes({"common::add_int16_cast"})
    precision = ct.precision.FLOAT16 if compute_precision == "float16" else ct.precision.FLOAT32
    return ct.convert(
        traced,
        inputs=[
            ct.TensorType(name="input_ids", shape=(1, seq_len), dtype=np.int32),
            ct.TensorType(name="attention_mask", shape=(1, seq_len), dtype=np.int32),
            ct.TensorType(name="position", shape=(1,), dtype=np.int32),
        ],
        outputs=[ct.TensorType(name="logits", dtype=np.float16)],
        states=states,
        minimum_deployment_target=ct.target.iOS18,
        convert_to="mlprogram",
        compute_precision=precision,
        pass_pipeline=pipeline,
        skip_model_load=True,  # loading needs macOS; conversion does not
    )


def _quantize_int8(mlmodel: Any) -> Any:
    """Per-channel symmetric INT8 for the model's weight matrices only (activations stay fp16).

    Other large constants (RoPE tables, the chunk's triangular masks) keep fp16: quantizing them would cost precision
    for no size gain, and an all-zero row of a mask has no valid INT8 scale.
    """
    ct = require("coremltools", extra="coreml", purpose="CoreML conversion")
    op_config = ct.optimize.coreml.OpLinearQuantizerConfig(
        mode="linear_symmetric", dtype="int8", granularity="per_channel"
    )
    config = ct.optimize.coreml.OptimizationConfig(global_config=op_config)
    for function in mlmodel._mil_program.functions.values():
        for op in function.find_ops(op_type="const"):
            if not op.name.endswith("weight_to_fp16"):
                config.set_op_name(op.name, None)
    return ct.optimize.coreml.linear_quantize_weights(mlmodel, config=config)


def convert(
    checkpoint: str | Path,
    output: str | Path,
    *,
    max_context: int = 2048,
    seq_len: int = 64,
    quantize: str = "int8",
    compute_precision: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Convert ``checkpoint`` (an HF Qwen3.5 directory) into ``output``; returns the ``.mlpackage`` path."""
    checkpoint, output = Path(checkpoint), Path(output)
    if not (checkpoint / "config.json").is_file():
        raise UserError(f"{checkpoint}: not an HF checkpoint directory (no config.json); pass a local checkpoint path")
    if quantize not in ("int8", "none"):
        raise UserError(f"quantize: {quantize!r} is not supported; use 'int8' or 'none'")
    if compute_precision not in ("float16", "float32"):
        raise UserError(f"compute_precision: {compute_precision!r} is not supported; use 'float16' or 'float32'")
    if seq_len < 2 or seq_len & (seq_len - 1) or max_context < seq_len:
        raise UserError(f"seq_len: {seq_len} must be a power of two >= 2 and <= max_context ({max_context})")
    if output.exists() and any(output.iterdir()) and not overwrite:
        raise UserError(f"{output}: already exists and is not empty; choose another path or pass --overwrite")
    ct = require("coremltools", extra="coreml", purpose="CoreML conversion")
    require("torch", extra="dev", purpose="CoreML conversion (tracing)")
    from voicepipe.convert.coreml_torch import load_checkpoint

    steps = 3 + 2 * (2 + (quantize == "int8"))
    with progress_bar(progress) as bar:
        task = bar.add_task("loading checkpoint", total=steps)
        model = load_checkpoint(checkpoint, max_context=max_context)
        shape = model.shape
        bar.advance(task)
        with tempfile.TemporaryDirectory(prefix="voicepipe-coreml-") as tmp:
            paths = {}
            for name, length in zip(FUNCTIONS, (seq_len, 1), strict=True):
                bar.update(task, description=f"tracing + converting {name} ({length} tokens)")
                mlmodel = _trace_and_convert(model, length, compute_precision=compute_precision)
                bar.advance(task, 2)
                if quantize == "int8":
                    bar.update(task, description=f"quantizing {name} weights to INT8")
                    mlmodel = _quantize_int8(mlmodel)
                    bar.advance(task)
                paths[name] = str(Path(tmp) / f"{name}.mlpackage")
                mlmodel.save(paths[name])
                del mlmodel
            del model
            bar.update(task, description="merging functions (shared weights)")
            desc = ct.utils.MultiFunctionDescriptor()
            for name in FUNCTIONS:
                desc.add_function(paths[name], src_function_name="main", target_function_name=name)
            desc.default_function_name = "decode"
            output.mkdir(parents=True, exist_ok=True)
            package = output / PACKAGE
            staged = Path(tempfile.mkdtemp(prefix=f".{PACKAGE}.", dir=output))  # beside the package: a rename
            try:
                ct.utils.save_multifunction(desc, str(staged / PACKAGE))
                replace_dir(staged / PACKAGE, package, what="CoreML package")
            finally:
                shutil.rmtree(staged, ignore_errors=True)
            bar.advance(task)
        bar.update(task, description="writing manifest and tokenizer")
        for fname in _TOKENIZER_FILES:
            if (checkpoint / fname).is_file():
                shutil.copy2(checkpoint / fname, output / fname)
        (output / MANIFEST).write_text(
            json.dumps(_manifest(checkpoint, shape, max_context, seq_len, quantize), indent=2)
        )
        bar.update(task, description="done", completed=steps)
    return package


def _manifest(checkpoint: Path, shape: Any, max_context: int, seq_len: int, quantize: str) -> dict[str, Any]:
    config = json.loads((checkpoint / "config.json").read_text())
    text = config.get("text_config", config)
    eos = text.get("eos_token_id", config.get("eos_token_id"))
    return {
        "format": 1,
        "architecture": "qwen3_5",
        "source": str(checkpoint),
        "max_context": max_context,
        "seq_len": seq_len,
        "vocab_size": shape.vocab_size,
        "quantization": quantize,
        "functions": list(FUNCTIONS),
        "inputs": ["input_ids", "attention_mask", "position"],
        "states": ["key_cache", "value_cache", "conv_state", "recurrent_state"],
        "eos_token_ids": eos if isinstance(eos, list) else ([eos] if eos is not None else []),
    }


def main(argv: list[str] | None = None) -> int:
    """``python scripts/convert_coreml.py CHECKPOINT OUT``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="HF Qwen3.5 checkpoint directory (e.g. a snapshot of Qwen/Qwen3.5-0.8B)")
    parser.add_argument("output", help="output directory (model.mlpackage + manifest + tokenizer)")
    parser.add_argument("--max-context", type=int, default=2048, help="fixed maximum context in tokens")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per prefill chunk")
    parser.add_argument("--quantize", choices=("int8", "none"), default="int8")
    parser.add_argument("--compute-precision", choices=("float16", "float32"), default="float16")
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    try:
        package = convert(
            args.checkpoint,
            args.output,
            max_context=args.max_context,
            seq_len=args.seq_len,
            quantize=args.quantize,
            compute_precision=args.compute_precision,
            overwrite=args.overwrite,
        )
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(package)
    return 0
