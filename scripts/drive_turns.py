"""Run a pipeline for a few typed turns in this process and record what happened (run as a subprocess by
scripts/bench_memory.py and the memory tests, since the jetsam simulator may kill it).

    python scripts/drive_turns.py SPEC.json

SPEC: ``{"pipeline": YAML text of the stages after the source (and its memory: section), "prompts": [...],
"jetsam_mb": N or null, "out": path}``. Each prompt is sent as a final ``TranscriptFrame`` once the previous turn's
``EndOfTurnFrame`` has left the sink; the run is assembled by ``build_pipeline``, as ``voicepipe run`` assembles it.
With ``"prompts": null`` the pipeline's own first stage is the source (e.g. a ``wav-source`` not paced, whose
questions arrive as fast as they are recognised). One JSON line per finished turn is appended to ``out`` at once (a
killed run leaves the turns it finished), then a summary with the governor's load/unload event log.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from voicepipe.build import Overrides, build_pipeline
from voicepipe.config import parse_pipeline
from voicepipe.frames import (
    EndOfTurnFrame,
    Frame,
    LLMResponseEndFrame,
    MetricsFrame,
    TextChunkFrame,
    TranscriptFrame,
    TTSAudioFrame,
)
from voicepipe.memory.rss import MB
from voicepipe.stage import Direction, Source, Stage


class TurnSource(Source):
    """Sends each prompt as a final transcript, waiting for the previous turn to end."""

    def __init__(self, prompts: list[str]) -> None:
        super().__init__(name="turns")
        self.prompts = prompts
        self.turn_over = asyncio.Event()

    async def frames(self) -> AsyncIterator[Frame]:
        for prompt in self.prompts:
            self.turn_over.clear()
            yield TranscriptFrame(text=prompt, final=True, turn_id=self.turns.next())
            await self.turn_over.wait()


class Recorder:
    """Observer: the chunks the chunker sent, the audio that reached the sink, metrics, replies, per turn."""

    def __init__(self, out: Path, source: TurnSource | None) -> None:
        self.out = out
        self.source = source
        self.turns: dict[int, dict[str, Any]] = defaultdict(
            lambda: {"chunks": {}, "spoken": {}, "audio_s": 0.0, "metrics": {}, "reply": None}
        )
        self.started: dict[int, float] = {}

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        if direction is not Direction.DOWNSTREAM or frame.turn_id <= 0:
            return
        turn = self.turns[frame.turn_id]
        if isinstance(frame, TranscriptFrame) and frame.final and frame.turn_id not in self.started:
            self.started[frame.turn_id] = time.monotonic()
        elif isinstance(frame, TextChunkFrame) and source is not None and source.name == "chunker":
            turn["chunks"][frame.index] = frame.text
        elif isinstance(frame, LLMResponseEndFrame) and turn["reply"] is None:
            turn["reply"] = frame.text
        elif isinstance(frame, MetricsFrame):
            turn["metrics"].update(frame.values)
        elif isinstance(frame, TTSAudioFrame):  # seen once, as the TTS hands it on towards the sink
            if "first_audio_s" not in turn:
                turn["first_audio_s"] = time.monotonic() - self.started.get(frame.turn_id, time.monotonic())
            turn["audio_s"] += frame.duration
            spoken = turn["spoken"]
            spoken[frame.chunk_index] = max(spoken.get(frame.chunk_index, 0), frame.char_end)

    def on_output(self, frame: Frame) -> None:
        if isinstance(frame, EndOfTurnFrame) and frame.turn_id > 0:
            turn = self.turns[frame.turn_id]
            turn["turn"] = frame.turn_id
            turn["wall_s"] = time.monotonic() - self.started.get(frame.turn_id, time.monotonic())
            turn["chunks"] = {str(k): v for k, v in turn["chunks"].items()}
            turn["spoken"] = {str(k): v for k, v in turn["spoken"].items()}
            with self.out.open("a") as handle:
                handle.write(json.dumps(turn) + "\n")
            if self.source is not None:
                self.source.turn_over.set()


async def main(spec: dict[str, Any]) -> None:
    out = Path(spec["out"])
    out.write_text("")
    loaded = parse_pipeline(spec["pipeline"], "drive.yaml")
    source = TurnSource(spec["prompts"]) if spec["prompts"] is not None else None
    recorder = Recorder(out, source)
    run = build_pipeline(loaded, Overrides(source=source, jetsam_mb=spec.get("jetsam_mb")), observers=[recorder])
    run.pipeline.on_output(recorder.on_output)
    governor, watchdog = run.governor, run.watchdog
    started = time.monotonic()
    await run.run()
    summary: dict[str, Any] = {"summary": True, "wall_s": time.monotonic() - started}
    if governor is not None:
        summary.update(
            governor=governor.summary(),
            decisions=governor.decisions,
            events=[dataclasses.asdict(event) for event in governor.events],
        )
    if watchdog is not None:
        summary.update(peak_rss_mb=watchdog.peak_bytes / MB, sample_rate_hz=watchdog.sample_rate_hz)
    with out.open("a") as handle:
        handle.write(json.dumps(summary) + "\n")


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(main(json.loads(Path(sys.argv[1]).read_text())))
