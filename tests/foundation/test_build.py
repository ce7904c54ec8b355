"""``build_pipeline``: the one place a run is assembled (overrides, queue size, metrics file, governor, observers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voicepipe.audio.wav import WavSink, WavSource
from voicepipe.config import load_pipeline, parse_pipeline
from voicepipe.errors import ConfigError, UserError
from voicepipe.frames import Frame, TranscriptFrame
from voicepipe.pipeline import Overrides, build_pipeline
from voicepipe.stage import Direction, Stage
from voicepipe.testing.harness import ListSource

from .conftest import fake_pipeline_yaml


class Seen:
    def __init__(self) -> None:
        self.frames: list[Frame] = []

    def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
        self.frames.append(frame)


def test_overrides_replace_the_ends_and_the_file_settings_apply(tmp_path: Path, bursts_wav: Path) -> None:
    path = fake_pipeline_yaml(tmp_path, tmp_path / "missing.wav", tmp_path / "unused.wav")
    path.write_text(path.read_text() + "queue_size: 7\nmemory:\n  llm: fake-llm\n  tts: fake-tts\n  jetsam_mb: 9000\n")
    view = Seen()
    run = build_pipeline(
        load_pipeline(path), Overrides(input=str(bursts_wav), output=str(tmp_path / "out.wav")), observers=[view]
    )
    first, last = run.stages[0], run.stages[-1]
    assert isinstance(first, WavSource) and first.config.path == str(bursts_wav)
    assert isinstance(last, WavSink) and last.config.path == str(tmp_path / "out.wav")
    assert run.pipeline.queue_size == 7
    assert run.pipeline.observers == [run.metrics, view]
    names = [s.name for s in run.stages]
    assert names.index("memory-before-llm") < names.index("fake-llm") < names.index("memory-after-llm")
    assert names.index("fake-tts") + 1 == names.index("memory-after-tts")
    assert run.governor is not None and run.watchdog is not None and run.governor.monitor is run.watchdog
    assert run.watchdog.limit_bytes == 9000 * 1024 * 1024 and not run.watchdog.running  # started by run()


async def test_a_run_writes_its_metrics_file_and_stops_the_watchdog(tmp_path: Path, bursts_wav: Path) -> None:
    metrics, out = tmp_path / "m.jsonl", tmp_path / "out.wav"
    loaded = load_pipeline(fake_pipeline_yaml(tmp_path, bursts_wav, out))
    turns: list[int] = []
    run = build_pipeline(
        loaded, Overrides(jetsam_mb=9000), metrics_path=metrics, on_turn=lambda t: turns.append(t.turn_id)
    )
    assert not metrics.exists()  # written beside it and moved into place when the run ends
    await run.run()
    assert [json.loads(line)["turn"] for line in metrics.read_text().splitlines()] == [1, 2] == turns
    assert run.watchdog is not None and not run.watchdog.running
    assert out.exists()


def test_a_ready_source_goes_in_front_of_a_chain_without_one() -> None:
    loaded = parse_pipeline("stages:\n  - type: fake-llm\n  - type: fake-tts\n", "p.yaml")
    with pytest.raises(UserError, match="first stage must be a source"):
        build_pipeline(loaded)
    source = ListSource([TranscriptFrame(text="hi", final=True, turn_id=1)])
    run = build_pipeline(loaded, Overrides(source=source, queue_size=3))
    assert run.stages[0] is source and [s.name for s in run.stages[1:]] == ["fake-llm", "fake-tts"]
    assert run.pipeline.queue_size == 3


def test_the_previous_metrics_file_stays_when_the_run_cannot_be_built(tmp_path: Path, bursts_wav: Path) -> None:
    metrics, out = tmp_path / "m.jsonl", tmp_path / "out.wav"
    metrics.write_text("previous run\n")
    loaded = load_pipeline(fake_pipeline_yaml(tmp_path, bursts_wav, out))
    with pytest.raises(UserError, match="the reply audio goes to that file too"):
        build_pipeline(loaded, metrics_path=out)  # the file's own sink writes there
    with pytest.raises(ConfigError, match="memory.llm: no stage named 'nope'"):
        build_pipeline(loaded, Overrides(memory=_memory(llm="nope", tts="fake-tts")), metrics_path=metrics)
    assert metrics.read_text() == "previous run\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["in.wav", "pipeline.yaml", "m.jsonl"])


def _memory(**fields):
    from voicepipe.memory import MemoryConfig

    return MemoryConfig(**fields)
