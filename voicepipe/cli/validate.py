"""``voicepipe validate PIPELINE``: check a pipeline file without loading any model."""

from __future__ import annotations

import argparse

from voicepipe.config import load_pipeline

HELP = "check a pipeline.yaml (every stage's fields) without loading any model"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pipeline", help="path of the pipeline file")


def run(args: argparse.Namespace) -> int:
    loaded = load_pipeline(args.pipeline)
    chain = " -> ".join(f"{s.name} ({s.type_name})" if s.name != s.type_name else s.name for s in loaded.stages)
    print(f"{loaded.path}: OK, {len(loaded.stages)} stages: {chain}")
    return 0
