"""Third-party stages: by module:Class path and by entry point in an installed package, both run in a pipeline."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

from voicepipe.config import build_stages, parse_pipeline
from voicepipe.errors import UserError
from voicepipe.frames import TextChunkFrame
from voicepipe.registry import list_stages, resolve_stage
from voicepipe.stage import Stage
from voicepipe.testing.harness import run_stage

README = Path(__file__).resolve().parents[2] / "README.md"

PLUGIN_SOURCE = """
from voicepipe.frames import Frame, TextChunkFrame
from voicepipe.stage import Stage, StageConfig


class ReverseConfig(StageConfig):
    times: int = 1


class Reverse(Stage):
    Config = ReverseConfig

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TextChunkFrame):
            text = frame.text
            for _ in range(self.config.times):
                text = text[::-1]
            frame = TextChunkFrame(text=text, index=frame.index, turn_id=frame.turn_id)
        await self.push(frame)


NotAStage = 42
"""


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    """A tiny package installed the way pip installs one: its module plus a dist-info with entry points."""
    site = tmp_path / "site"
    (site / "vp_example_plugin").mkdir(parents=True)
    (site / "vp_example_plugin" / "__init__.py").write_text(PLUGIN_SOURCE)
    (site / "vp_broken_plugin.py").write_text("raise ImportError('this plugin needs libfoo')\n")
    dist = site / "vp_example_plugin-1.2.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: vp-example-plugin\nVersion: 1.2.0\n")
    (dist / "entry_points.txt").write_text(
        "[voicepipe.stages]\n"
        "reverse = vp_example_plugin:Reverse\n"
        "broken = vp_broken_plugin:Thing\n"
        "not-a-stage = vp_example_plugin:NotAStage\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield site
    for name in ("vp_example_plugin", "vp_broken_plugin"):
        sys.modules.pop(name, None)


async def test_entry_point_plugin_runs_in_a_pipeline(installed_plugin):
    loaded = parse_pipeline("stages:\n  - type: reverse\n    times: 3\n", "p.yaml")
    (stage,) = build_stages(loaded)
    out = await run_stage(stage, [TextChunkFrame(text="abc", turn_id=1)])
    assert [f.text for f in out] == ["cba"]


def test_plugins_list_shows_origin_and_isolates_a_broken_plugin(installed_plugin):
    infos = {i.name: i for i in list_stages()}
    assert infos["reverse"].origin == "vp-example-plugin 1.2.0" and infos["reverse"].error is None
    assert infos["broken"].stage_class is None and "this plugin needs libfoo" in infos["broken"].error
    assert "is not a voicepipe stage" in infos["not-a-stage"].error
    assert infos["wav-source"].origin.startswith("voicepipe ")  # built-ins register the same way
    assert infos["fake-llm"].error is None


def test_broken_plugin_in_yaml_is_a_config_problem_not_a_crash(installed_plugin):
    from voicepipe.errors import ConfigError

    with pytest.raises(ConfigError, match=r"p.yaml:2: stages\[0\].type: stage type 'broken'.*failed to import"):
        parse_pipeline("stages:\n  - type: broken\n", "p.yaml")


async def test_module_class_path_plugin_runs_in_a_pipeline(installed_plugin):
    loaded = parse_pipeline("stages:\n  - type: vp_example_plugin:Reverse\n", "p.yaml")
    out = await run_stage(build_stages(loaded)[0], [TextChunkFrame(text="hello", turn_id=1)])
    assert [f.text for f in out] == ["olleh"]


def test_resolving_a_non_stage_says_what_it_must_be():
    with pytest.raises(UserError, match="must be a subclass of voicepipe.stage.Stage"):
        resolve_stage("json:dumps")


async def test_readme_write_your_own_stage_example_works(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    example = next(b for b in blocks if "class Shout(Stage)" in b)
    (tmp_path / "my_package").mkdir()
    (tmp_path / "my_package" / "__init__.py").write_text("")
    (tmp_path / "my_package" / "shout.py").write_text(textwrap.dedent(example))
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = parse_pipeline('stages:\n  - type: my_package.shout:Shout\n    suffix: "!!"\n', "p.yaml")
    stage = build_stages(loaded)[0]
    assert isinstance(stage, Stage)
    out = await run_stage(stage, [TextChunkFrame(text="hi there", turn_id=1)])
    assert [f.text for f in out] == ["HI THERE!!"]
    sys.modules.pop("my_package.shout", None)
    sys.modules.pop("my_package", None)
