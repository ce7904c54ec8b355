"""Memory: footprints, the memory governor and the jetsam simulator.

- ``rss``: the process's resident memory (and the kernel's peak of it), and giving freed memory back to the OS.
- ``jetsam.RssWatchdog``: samples RSS at >= 50 Hz; past a limit it kills the process with SIGKILL, as iOS does.
- ``governor.MemoryGovernor``: measures what the LLM and the TTS cost when they load, decides whether both may stay
  loaded, and otherwise runs each turn sequentially (LLM writes, unloads; TTS speaks; LLM reloads during playback).
  Its decisions are ``policy``, its three pass-through stages ``taps``, what it measures and logs ``records``.
- ``config.MemoryConfig``: the ``memory:`` section of pipeline.yaml; ``profiles``: named device limits with sources.

``apply_memory(stages, config, jetsam_mb)`` installs them; ``build_pipeline`` (``voicepipe.build``) calls it for
every run.
"""

from __future__ import annotations

from collections.abc import Sequence

from voicepipe.memory.config import MemoryConfig
from voicepipe.memory.governor import MemoryGovernor, StageMemory
from voicepipe.memory.jetsam import RssWatchdog
from voicepipe.memory.profiles import PROFILES, DeviceProfile
from voicepipe.stage import Stage

__all__ = [
    "MemoryConfig",
    "MemoryGovernor",
    "StageMemory",
    "RssWatchdog",
    "PROFILES",
    "DeviceProfile",
    "apply_memory",
]


def apply_memory(
    stages: Sequence[Stage], config: MemoryConfig | None, jetsam_mb: float | None = None
) -> tuple[list[Stage], MemoryGovernor | None, RssWatchdog | None]:
    """Install the governor (when ``config`` is given) and build the jetsam watchdog (``jetsam_mb`` or
    ``config.jetsam_mb``). The caller starts the watchdog before the pipeline runs and stops it afterwards."""
    limit = jetsam_mb if jetsam_mb is not None else (config.jetsam_mb if config is not None else None)
    hz = config.sample_hz if config is not None else 100.0
    watchdog = RssWatchdog(limit, hz=hz) if limit is not None else None
    if config is None:
        return list(stages), None, watchdog
    governor = MemoryGovernor(config, monitor=watchdog)
    return governor.install(stages), governor, watchdog
