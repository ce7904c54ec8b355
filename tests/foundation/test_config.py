"""pipeline.yaml validation: every problem reported as file:line: field.path: problem, before anything loads."""

from __future__ import annotations

import pytest

from voicepipe.config import parse_pipeline
from voicepipe.errors import ConfigError
from voicepipe.testing.fakes import FakeASR, FakeVAD

GOOD = """\
name: test
stages:
  - type: fake-vad
    threshold: 0.05
  - type: fake-asr
"""


def problems(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_pipeline(text, "p.yaml")
    return info.value.problems


def test_a_valid_file_gives_validated_stage_configs():
    loaded = parse_pipeline(GOOD, "p.yaml")
    assert [s.stage_class for s in loaded.stages] == [FakeVAD, FakeASR]
    assert loaded.stages[0].config.threshold == 0.05
    assert loaded.stages[0].line == 3
    assert loaded.settings.queue_size == 32


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("stages: [\n  - type: x\n", "p.yaml:2: YAML syntax error"),
        ("stages:\n  - type: no-such-stage\n", "p.yaml:2: stages[0].type: unknown stage type 'no-such-stage'"),
        (
            "stages:\n  - type: fake-vad\n    threshold: loud\n",
            "p.yaml:3: stages[0].threshold: Input should be a valid number",
        ),
        (
            "stages:\n  - type: fake-vad\n    treshold: 0.1\n",
            "p.yaml:3: stages[0].treshold: unknown field; remove it or check its spelling",
        ),
        ("stages:\n  - type: wav-source\n", "p.yaml:2: stages[0].path: required field is missing"),
        ("stages:\n  - type: fake-vad\nqueue_sise: 3\n", "p.yaml:3: queue_sise: unknown field"),
        (
            "stages:\n  - type: fake-vad\nqueue_size: 0\n",
            "p.yaml:3: queue_size: Input should be greater than or equal to 1",
        ),
        ("stages: []\n", "p.yaml:1: stages: List should have at least 1 item"),
        ("stages:\n  - threshold: 1\n", "p.yaml:2: stages[0]: every stage needs 'type: NAME'"),
        (
            "stages:\n  - type: os.path:join\n",
            "p.yaml:2: stages[0].type: stage type 'os.path:join' is not a voicepipe stage",
        ),
        (
            "stages:\n  - type: no_such_pkg.mod:Stage\n",
            "p.yaml:2: stages[0].type: stage type 'no_such_pkg.mod:Stage': cannot import module 'no_such_pkg.mod'",
        ),
        (
            "stages:\n  - type: fake-vad\n  - type: fake-vad\n",
            "p.yaml:3: stages[1].name: stage name 'fake-vad' is used twice",
        ),
        ("- just a list\n", "p.yaml:1: (top level): expected a mapping"),
        # engine settings sit beside the stage's: checked against the engine chosen, reported at their own line
        (
            "stages:\n  - type: vad\n    engine: webrtc\n    hangover_ms: 500\n    agressiveness: 3\n",
            "p.yaml:5: stages[0].agressiveness: unknown field; remove it or check its spelling",
        ),
        (
            "stages:\n  - type: vad\n    engine: silero\n    aggressiveness: 3\n",
            "p.yaml:4: stages[0].aggressiveness: unknown field",
        ),
        (
            "stages:\n  - type: vad\n    frame_ms: 25\n",
            "p.yaml:3: stages[0].frame_ms: Input should be 10, 20 or 30",
        ),
        (
            "stages:\n  - type: asr\n    engine: mlx-whisper\n    language: en\n    threads: 4\n",
            "p.yaml:5: stages[0].threads: unknown field",
        ),
        (
            "stages:\n  - type: asr\n    engine: mlx-whisper\n    beam_size: 4\n",
            "p.yaml:4: stages[0].beam_size: mlx-whisper decodes greedily only; set beam_size: 1",
        ),
        ("stages:\n  - type: asr\n    engine: whisper.cpp\n", "p.yaml:3: stages[0].engine: unknown asr engine"),
    ],
)
def test_each_mistake_gets_one_line_with_file_line_and_field(text, expected):
    found = problems(text)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_are_reported_at_once():
    text = "stages:\n  - type: fake-vad\n    threshold: -1\n  - type: fake-asr\n    txt: hi\n"
    found = problems(text)
    assert len(found) == 2
    assert found[0].startswith("p.yaml:3: stages[0].threshold:")
    assert found[1].startswith("p.yaml:5: stages[1].txt: unknown field")


def test_validation_loads_no_model(monkeypatch):
    # Stage classes are imported, but no stage and no engine is constructed (so none can load a model) while
    # validating; a real model stage (asr) is among them.
    from voicepipe.engine import Engine
    from voicepipe.stage import Stage

    constructed: list[str] = []

    def recording(cls):
        original = cls.__init__

        def record(self, *args, **kwargs):
            constructed.append(type(self).__name__)
            original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", record)

    recording(Stage)
    recording(Engine)
    loaded = parse_pipeline(GOOD + "  - type: asr\n    model: tiny.en\n", "p.yaml")
    assert constructed == []
    loaded.stages[0].build()  # the patches do see construction: building is what validation must not do
    loaded.stages[-1].config.build_engine()
    assert constructed == [loaded.stages[0].stage_class.__name__, "FasterWhisperTranscriber"]


def test_stage_configs_are_immutable_after_validation():
    loaded = parse_pipeline(GOOD, "p.yaml")
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        loaded.stages[0].config.threshold = 1.0
