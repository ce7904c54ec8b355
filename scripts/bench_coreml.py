"""Convert a full-size (0.8B-shaped) random Qwen3.5 checkpoint to CoreML and report time, peak memory and sizes.

Usage: python scripts/bench_coreml.py OUT_DIR [--max-context 2048] [--seq-len 64] [--quantize int8]
       python scripts/bench_coreml.py --parity   # traced functions vs transformers on the full-size checkpoint

Builds (or reuses) the cached random checkpoint of the real shape (``voicepipe.testing.checkpoints``), converts it
with ``voicepipe.convert.to_coreml.convert``, and prints one Markdown table row: wall time, peak RSS of this process,
the package's weight file and total size, ops per function and how many weights are INT8. Prediction speed needs a Mac.
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path


def _ops(package: Path) -> dict[str, dict[str, int]]:
    import coremltools as ct

    spec = ct.models.utils.load_spec(str(package))
    out: dict[str, dict[str, int]] = {}
    for name, fn in spec.mlProgram.functions.items():
        ops = fn.block_specializations[fn.opset].operations
        int8 = 0
        for op in ops:
            if op.type == "constexpr_blockwise_shift_scale":
                data = op.inputs["data"].arguments[0].value.type.tensorType
                int8 += ct.proto.MIL_pb2.DataType.Name(data.dataType) == "INT8"
        out[name] = {"ops": len(ops), "int8_weights": int8}
    return out


def parity(seq_len: int, steps: int = 16) -> None:
    """Prefill (a full and a padded chunk) + ``steps`` greedy decode steps through the traced functions, fp32, against
    transformers on the full-size checkpoint: the max relative logit error per row."""
    import torch
    from transformers import Qwen3_5ForCausalLM

    from voicepipe.convert.coreml_torch import load_checkpoint
    from voicepipe.convert.to_coreml import trace_function
    from voicepipe.testing.checkpoints import full_size_checkpoint

    checkpoint = full_size_checkpoint()
    model = load_checkpoint(checkpoint, max_context=4 * seq_len)
    prefill, decode = trace_function(model, seq_len), trace_function(model, 1)
    prompt = torch.randint(0, 248000, (seq_len + 13,), generator=torch.Generator().manual_seed(0)).tolist()
    started = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(prompt), seq_len):
            part = prompt[start : start + seq_len]
            ids = torch.zeros(1, seq_len, dtype=torch.int32)
            mask = torch.zeros(1, seq_len, dtype=torch.int32)
            ids[0, : len(part)], mask[0, : len(part)] = torch.tensor(part, dtype=torch.int32), 1
            logits = prefill(ids, mask, torch.tensor([start], dtype=torch.int32))
        rows, tokens = [logits[0, 0]], list(prompt)
        for _ in range(steps):
            tokens.append(int(rows[-1].argmax()))
            one = torch.tensor([[tokens[-1]]], dtype=torch.int32)
            rows.append(decode(one, torch.ones(1, 1, dtype=torch.int32), torch.tensor([len(tokens) - 1]).int())[0, 0])
    ours_s = time.perf_counter() - started
    del model, prefill, decode
    reference = Qwen3_5ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :]
    got = torch.stack(rows)
    rel = (got - expected).abs().max(dim=-1).values / expected.abs().max(dim=-1).values
    same = bool((got.argmax(-1) == expected.argmax(-1)).all())
    print(f"full-size parity, prompt {len(prompt)} tokens (chunks of {seq_len}) + {steps} decode steps, fp32:")
    print(
        f"max relative logit error {rel.max().item():.2e} (median {rel.median().item():.2e}); greedy tokens equal: {same}"
    )
    print(f"traced functions took {ours_s:.1f} s on the CPU (torch eager ops, not CoreML)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", help="where the package goes (not needed with --parity)")
    parser.add_argument("--parity", action="store_true", help="check the traced functions against transformers")
    parser.add_argument("--max-context", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--quantize", default="int8", choices=("int8", "none"))
    args = parser.parse_args()
    if args.parity:
        parity(args.seq_len)
        return
    if args.output is None:
        parser.error("OUT_DIR is required (or pass --parity)")

    from voicepipe.convert.coreml_torch import read_shape
    from voicepipe.convert.to_coreml import PACKAGE, convert
    from voicepipe.testing.checkpoints import full_size_checkpoint

    checkpoint = full_size_checkpoint()
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    convert(
        checkpoint,
        args.output,
        max_context=args.max_context,
        seq_len=args.seq_len,
        quantize=args.quantize,
        overwrite=True,
    )
    seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    package = Path(args.output) / PACKAGE
    weights = sum(f.stat().st_size for f in package.rglob("weight.bin"))
    total = sum(f.stat().st_size for f in package.rglob("*") if f.is_file())
    shape = read_shape(checkpoint)
    ops = _ops(package)
    print(f"checkpoint: {checkpoint} (vocab {shape.vocab_size}, {len(shape.layer_types)} layers)")
    print(f"load average: {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| quantize | max context | seq_len | convert wall | peak RSS | weight.bin | package | ops prefill/decode |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {args.quantize} | {args.max_context} | {args.seq_len} | {seconds:.0f} s | {peak_mb / 1024:.1f} GiB "
        f"| {weights / 1e6:.0f} MB | {total / 1e6:.0f} MB | {ops['prefill']['ops']}/{ops['decode']['ops']} |"
    )
    print(f"INT8 weight tensors per function: {ops['prefill']['int8_weights']}/{ops['decode']['int8_weights']}")


if __name__ == "__main__":
    main()
