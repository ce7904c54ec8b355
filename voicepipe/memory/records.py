"""What the memory governor measures and logs: each model's footprint, the load/unload event log, a turn's numbers."""

from __future__ import annotations

from dataclasses import dataclass, field

from voicepipe.errors import StageError
from voicepipe.memory.rss import MB

__all__ = ["StageMemory", "ModelEvent", "ReloadFailed", "TurnRecord"]


@dataclass
class StageMemory:
    """What one model stage costs: what it reports (``memory_footprint``) and what loading it added to the RSS."""

    name: str
    reported: int = 0
    measured: int = 0
    unload_drop: int = 0  # RSS freed by the last unload
    working: int = 0  # peak RSS over the floor while it worked alone (measured on sequential turns)

    @property
    def size(self) -> int:
        """The number the budget uses: the larger of the two."""
        return max(self.reported, self.measured)

    def as_dict(self) -> dict[str, float]:
        return {
            "reported_mb": round(self.reported / MB, 1),
            "measured_mb": round(self.measured / MB, 1),
            "unload_drop_mb": round(self.unload_drop / MB, 1),
            "working_mb": round(self.working / MB, 1),
        }


class ReloadFailed(StageError):
    """A model the governor had unloaded could not be loaded again (twice): the run cannot go on."""


@dataclass(frozen=True)
class ModelEvent:
    """One entry of the governor's event log: what happened, and whether each model was loaded right after it."""

    at: float
    what: str
    llm_loaded: bool
    tts_loaded: bool


@dataclass
class TurnRecord:
    """One turn's numbers while it runs (they go out in its ``MetricsFrame``)."""

    turn_id: int
    values: dict[str, float] = field(default_factory=dict)
    play_end: float = 0.0  # when a speaker would finish the audio seen so far
    peak: int = 0
