"""Convert an HF Qwen3.5 checkpoint into a stateful INT8 CoreML package (prefill + decode functions).

Usage: python scripts/convert_coreml.py CHECKPOINT_DIR OUT_DIR [--max-context 2048] [--seq-len 64] [--quantize int8]
"""

import sys

from voicepipe.convert.to_coreml import main

if __name__ == "__main__":
    sys.exit(main())
