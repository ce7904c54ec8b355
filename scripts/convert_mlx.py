#!/usr/bin/env python
"""Convert a Hugging Face Qwen3.5 checkpoint to MLX weights: INT4 (group 64), INT8, or floating point.

    python scripts/convert_mlx.py Qwen/Qwen3.5-0.8B models/qwen3.5-0.8b-mlx-int4 --quantization int4
    python scripts/convert_mlx.py path/to/hf-checkpoint out-dir --quantization none --dtype float32

The source is a local checkpoint directory or a Hugging Face repo id (downloaded through huggingface_hub, honouring
HF_HUB_OFFLINE). Norm weights are folded in fp32 (see voicepipe/convert/to_mlx.py). The result loads with
``Qwen35MLXChat.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from voicepipe.convert.to_mlx import DTYPES, convert_checkpoint, resolve_hf_source, weights_summary
from voicepipe.errors import UserError
from voicepipe.llm.mlx_model import QUANTIZATION_BITS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", help="Hugging Face checkpoint directory or repo id (e.g. Qwen/Qwen3.5-0.8B)")
    parser.add_argument(
        "output",
        type=Path,
        help="directory to write the MLX model to (an earlier output there is replaced, other files are never)",
    )
    parser.add_argument("--quantization", "-q", choices=[*QUANTIZATION_BITS, "none"], default="int4")
    parser.add_argument(
        "--dtype", choices=DTYPES, default=None, help="float dtype of unquantized weights (default: keep)"
    )
    parser.add_argument("--revision", default=None, help="branch, tag or commit of a Hugging Face repo")
    args = parser.parse_args(argv)
    try:
        source = resolve_hf_source(args.source, revision=args.revision)
        quantization = None if args.quantization == "none" else args.quantization
        out = convert_checkpoint(source, args.output, quantization=quantization, dtype=args.dtype)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({weights_summary(out)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
