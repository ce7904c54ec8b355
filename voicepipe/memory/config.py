"""The ``memory:`` section of pipeline.yaml."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from voicepipe.memory.profiles import PROFILES

__all__ = ["MemoryConfig", "Policy"]

Policy = Literal["auto", "sequential", "concurrent"]


class MemoryConfig(BaseModel):
    """How much memory the pipeline may use and what to do when the LLM and the TTS do not fit together.

    ``policy``: ``auto`` measures both at startup and runs turns sequentially (LLM unloaded while TTS speaks) only when
    the baseline plus both would exceed the budget; ``sequential`` always does; ``concurrent`` never unloads.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    budget_mb: float | None = Field(None, gt=0, description="Memory the whole process may use, in MB.")
    profile: str | None = Field(None, description="A named device whose memory limit is the budget (e.g. iphone-12).")
    policy: Policy = "auto"
    jetsam_mb: float | None = Field(None, gt=0, description="Kill the process like iOS when RSS crosses this (MB).")
    llm: str | None = Field(None, description="Name of the LLM stage (default: the model stage before the TTS).")
    tts: str | None = Field(None, description="Name of the TTS stage (default: the last model-holding stage).")
    sample_hz: float = Field(100.0, ge=50.0, le=1000.0, description="How often resident memory is sampled.")

    @model_validator(mode="after")
    def _check(self) -> MemoryConfig:
        if self.budget_mb is not None and self.profile is not None:
            raise ValueError("set either 'budget_mb' or 'profile', not both")
        if self.profile is not None and self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}; use one of: {', '.join(sorted(PROFILES))}")
        return self

    @property
    def budget_bytes(self) -> int | None:
        """The budget in bytes: ``budget_mb``, else the profile's limit, else none."""
        if self.budget_mb is not None:
            return int(self.budget_mb * 1024 * 1024)
        if self.profile is not None:
            return PROFILES[self.profile].limit_mb * 1024 * 1024
        return None
