"""Loading and unloading the memory governor's two models: timed, measured, a failed reload tried once more, and
every change logged with both models' state after it (the record that proves "never both at once")."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable

from voicepipe.memory.records import ModelEvent, ReloadFailed, StageMemory
from voicepipe.memory.rss import MB, release_freed_memory, rss_bytes
from voicepipe.stage import Stage

__all__ = ["ModelSwap"]

log = logging.getLogger("voicepipe.memory")


class ModelSwap:
    """Loads and unloads the LLM and the TTS stage for the governor; ``decide`` logs what it did, with its numbers."""

    def __init__(self, llm: Stage, tts: Stage, decide: Callable[[str], None]) -> None:
        self.llm, self.tts = llm, tts
        self.decide = decide
        self.events: deque[ModelEvent] = deque(maxlen=10_000)  # bounded: a long conversation must not grow it

    async def unload(self, stage: Stage, memory: StageMemory, *, reason: str, footprint: int | None = None) -> float:
        """Unload ``stage`` (if loaded) and give its memory back; milliseconds it took (0 if it was not loaded).
        ``footprint``, what the stage reported before, goes into the log line."""
        if not stage.is_loaded:
            return 0.0
        before = rss_bytes()
        started = time.perf_counter()
        await stage.unload()
        release_freed_memory()
        ms = (time.perf_counter() - started) * 1000
        self.note(f"unloaded {stage.name}")
        memory.unload_drop = before - rss_bytes()
        reported = f" (footprint {footprint / MB:.0f} MB)" if footprint is not None else ""
        self.decide(
            f"unloaded {stage.name} {reason}: {ms:.0f} ms, RSS -{memory.unload_drop / MB:.0f} MB{reported}, "
            f"now {rss_bytes() / MB:.0f} MB"
        )
        return ms

    async def load(self, stage: Stage, *, reason: str) -> float:
        """Load ``stage`` again (if unloaded); milliseconds it took. ``ReloadFailed`` after two failed tries."""
        if stage.is_loaded:
            return 0.0
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                await stage.load()
                break
            except Exception as exc:
                detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
                if attempt == 2:
                    raise ReloadFailed(
                        f"memory governor: {stage.name} could not be loaded again {reason} ({detail}); its model "
                        "changed or disappeared while it was unloaded, so the run stops"
                    ) from exc
                log.warning("memory governor: loading %s again failed (%s); trying once more", stage.name, detail)
        self.note(f"loaded {stage.name}")
        ms = (time.perf_counter() - started) * 1000
        self.decide(f"loaded {stage.name} {reason}: {ms:.0f} ms, RSS now {rss_bytes() / MB:.0f} MB")
        return ms

    def note(self, what: str) -> None:
        """Log an event with both models' state after it."""
        self.events.append(ModelEvent(time.monotonic(), what, self.llm.is_loaded, self.tts.is_loaded))

    def check_state(self, where: str) -> None:
        """Log a model that loaded or unloaded itself since the last event."""
        last = self.events[-1] if self.events else None
        if last is None or (last.llm_loaded, last.tts_loaded) != (self.llm.is_loaded, self.tts.is_loaded):
            self.note(f"seen at {where}")
