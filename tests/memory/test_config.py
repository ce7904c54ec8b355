"""The memory: section and where the governor sits: validation with file:line, stage lookup, tap placement."""

from __future__ import annotations

import pytest

from voicepipe.config import build_stages, parse_pipeline
from voicepipe.errors import ConfigError
from voicepipe.memory import MemoryConfig, apply_memory
from voicepipe.memory.profiles import PROFILES

STAGES = """stages:
  - type: fake-llm
  - type: chunker
  - type: fake-tts
"""


@pytest.mark.parametrize(
    ("memory", "expected"),
    [
        ("memory:\n  budget_mb: 900\n  profile: iphone-12\n", "pipeline.yaml:5: memory: set either"),
        ("memory:\n  profile: iphone-99\n", "unknown profile 'iphone-99'; use one of"),
        ("memory:\n  policy: lazy\n", "pipeline.yaml:6: memory.policy: Input should be 'auto', 'sequential'"),
        ("memory:\n  budget: 900\n", "pipeline.yaml:6: memory.budget: unknown field"),
        ("memory:\n  sample_hz: 10\n", "memory.sample_hz: Input should be greater than or equal to 50"),
    ],
)
def test_memory_section_mistakes_name_the_line_and_field(memory, expected):
    with pytest.raises(ConfigError) as err:
        parse_pipeline(STAGES + memory)
    assert expected in str(err.value)


def test_profile_gives_the_budget_and_every_profile_cites_its_source():
    assert MemoryConfig(profile="iphone-xs").budget_bytes == 2040 * 1024 * 1024
    assert MemoryConfig(budget_mb=1500).budget_bytes == 1500 * 1024 * 1024
    assert MemoryConfig().budget_bytes is None
    for profile in PROFILES.values():
        assert "stackoverflow.com/a/15200855" in profile.source and 0 < profile.limit_mb < profile.ram_mb


def test_governor_needs_model_stages_or_names():
    loaded = parse_pipeline(STAGES + "memory:\n  policy: sequential\n")
    with pytest.raises(ConfigError, match="name them with 'memory.llm' and 'memory.tts'"):
        apply_memory(build_stages(loaded), loaded.settings.memory)
    loaded = parse_pipeline(STAGES + "memory:\n  llm: nope\n")
    with pytest.raises(ConfigError, match="memory.llm: no stage named 'nope'"):
        apply_memory(build_stages(loaded), loaded.settings.memory)


def test_taps_sit_around_the_llm_and_after_the_tts():
    loaded = parse_pipeline(STAGES + "memory:\n  llm: fake-llm\n  tts: fake-tts\n  jetsam_mb: 5000\n")
    stages, governor, watchdog = apply_memory(build_stages(loaded), loaded.settings.memory)
    names = [s.name for s in stages]
    assert names == ["memory-before-llm", "fake-llm", "memory-after-llm", "chunker", "fake-tts", "memory-after-tts"]
    assert governor is not None and governor.monitor is watchdog
    assert watchdog is not None and watchdog.limit_bytes == 5000 * 1024 * 1024 and not watchdog.running


def test_no_memory_section_installs_nothing_but_the_jetsam_flag_still_counts():
    loaded = parse_pipeline(STAGES)
    stages, governor, watchdog = apply_memory(build_stages(loaded), None, jetsam_mb=300)
    assert [s.name for s in stages] == ["fake-llm", "chunker", "fake-tts"] and governor is None
    assert watchdog is not None and watchdog.limit_bytes == 300 * 1024 * 1024
