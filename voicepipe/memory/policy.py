"""The memory governor's decisions, as plain functions of the numbers measured: whether turns run concurrent (both
models stay loaded) or sequential (they take turns in memory). ``MemoryGovernor`` measures and acts; this decides.

Policy ``auto`` with a budget: a model needs more than its loaded size while it works (llama.cpp's buffers, the
synthesis graph of the TTS), and that is only known once it has worked. Unless the budget is generous (both loaded
sizes doubled still fit), turns start sequential; once both working sets are measured, the governor switches to
concurrent if the floor plus both fit the budget. A concurrent turn that peaks over the budget switches back.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from voicepipe.memory.config import Policy
from voicepipe.memory.records import StageMemory
from voicepipe.memory.rss import MB

__all__ = ["Mode", "Decision", "unload_llm_before_tts", "startup_mode", "after_turn"]

Mode = Literal["concurrent", "sequential"]


@dataclass(frozen=True)
class Decision:
    """The mode to run the next turns in, and what to log about it (``None``: nothing changed worth a line)."""

    mode: Mode
    message: str | None = None
    warning: str | None = None


def unload_llm_before_tts(policy: Policy, budget: int | None, rss_now: int, llm: StageMemory) -> str | None:
    """Why the LLM must be unloaded before the TTS loads, or ``None``: the TTS's size is unknown until it loads, so
    when a TTS as big as the LLM might not fit beside it, the two must never overlap even once."""
    if policy == "sequential":
        return "policy sequential"
    if policy == "auto" and budget is not None and rss_now + llm.size > budget:
        return "budget may not hold both"
    return None


def startup_mode(
    policy: Policy, budget: int | None, baseline: int, llm: StageMemory, tts: StageMemory
) -> tuple[Mode, str]:
    """The mode of the first turns once both models have loaded, and why."""
    if policy != "auto":
        return policy, f"policy {policy}"
    if budget is None:
        return "concurrent", "no budget"
    if baseline + 2 * (llm.size + tts.size) <= budget:
        return "concurrent", "fits even if each model doubles while it works"
    # Working memory (KV cache, synthesis buffers) comes on top of the loaded size and is only known once each model
    # has worked: measure it on a sequential turn, then decide.
    return "sequential", "working sets not measured yet; the first turn measures them"


def after_turn(
    policy: Policy,
    budget: int | None,
    mode: Mode,
    *,
    turn_id: int,
    turn_peak: int,
    floor: int,
    llm: StageMemory,
    tts: StageMemory,
) -> Decision:
    """Policy auto: revisit the mode after a turn, with the working sets measured so far and the turn's peak."""
    if policy != "auto" or budget is None:
        return Decision(mode)
    if mode == "sequential" and llm.working and tts.working:
        need_all = floor + llm.working + tts.working
        verdict = "fits" if need_all <= budget else "does not fit"
        message = (
            f"turn {turn_id}: working sets {llm.name} {llm.working / MB:.0f} MB, "
            f"{tts.name} {tts.working / MB:.0f} MB over a floor of {floor / MB:.0f} MB: "
            f"together {need_all / MB:.0f} MB {verdict} the {budget / MB:.0f} MB budget"
        )
        if need_all <= budget:
            return Decision("concurrent", message)
        warning = None
        if floor + max(llm.working, tts.working) > budget:
            warning = f"even one model at a time needs more than the {budget / MB:.0f} MB budget"
        return Decision(mode, message, warning)
    if mode == "concurrent" and turn_peak > budget:
        message = (
            f"turn {turn_id} peaked at {turn_peak / MB:.0f} MB, over the {budget / MB:.0f} MB budget: "
            "next turns run sequential"
        )
        return Decision("sequential", message)
    return Decision(mode)
