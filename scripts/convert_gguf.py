#!/usr/bin/env python
"""Convert a Hugging Face Qwen3.5 checkpoint to GGUF for the llama.cpp engine, and quantize it.

    python scripts/convert_gguf.py CHECKPOINT_DIR_OR_REPO --quantization q4_k_m [--out model.gguf]
    python scripts/convert_gguf.py model-f32.gguf --quantization q8_0 --out model-q8_0.gguf

The converter is the one shipped with the installed llama-cpp-python (fetched from its sdist with pip on first use and
cached); quantization runs in llama.cpp. Without ``--out`` the result lands in voicepipe's cache, where
``Qwen35LlamaCppChat.from_pretrained`` finds it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from voicepipe.convert.to_gguf import QUANTIZATIONS, quantize_gguf
from voicepipe.errors import UserError
from voicepipe.llm.llamacpp import resolve_gguf


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="checkpoint directory, Hugging Face repo id, or a float .gguf to requantize")
    parser.add_argument("--quantization", "-q", default="q4_k_m", choices=sorted(QUANTIZATIONS) + ["none"])
    parser.add_argument("--out", type=Path, help="write the GGUF here (default: keep it in the cache)")
    parser.add_argument("--revision", help="revision of a Hugging Face repo")
    args = parser.parse_args(argv)
    quant = None if args.quantization == "none" else args.quantization
    try:
        if args.source.endswith(".gguf"):
            if args.out is None or quant is None:
                raise UserError("requantizing a .gguf needs --out and a --quantization other than none")
            result = quantize_gguf(args.source, args.out, quant)
        else:
            result = resolve_gguf(args.source, quantization=quant, revision=args.revision)
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(result, args.out)
                result = args.out
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
