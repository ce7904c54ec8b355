"""The governor's decisions from measured numbers (``voicepipe.memory.policy``): pure functions, no models needed."""

from __future__ import annotations

from voicepipe.memory.policy import after_turn, startup_mode, unload_llm_before_tts
from voicepipe.memory.records import StageMemory
from voicepipe.memory.rss import MB


def sizes(llm_mb: float, tts_mb: float, *, llm_working: float = 0, tts_working: float = 0):
    llm = StageMemory("llm", reported=int(llm_mb * MB), working=int(llm_working * MB))
    tts = StageMemory("tts", measured=int(tts_mb * MB), working=int(tts_working * MB))
    return llm, tts


def test_the_llm_leaves_before_the_tts_loads_only_when_they_might_not_fit_together():
    llm, _ = sizes(400, 0)
    assert unload_llm_before_tts("sequential", None, 100 * MB, llm) == "policy sequential"
    assert unload_llm_before_tts("auto", 600 * MB, 300 * MB, llm) == "budget may not hold both"
    assert unload_llm_before_tts("auto", 800 * MB, 300 * MB, llm) is None
    assert unload_llm_before_tts("auto", None, 300 * MB, llm) is None
    assert unload_llm_before_tts("concurrent", 100 * MB, 300 * MB, llm) is None


def test_startup_runs_concurrent_only_with_room_for_both_models_doubled():
    llm, tts = sizes(200, 100)
    assert startup_mode("auto", None, 100 * MB, llm, tts)[0] == "concurrent"
    assert startup_mode("auto", 700 * MB, 100 * MB, llm, tts)[0] == "concurrent"  # 100 + 2 * 300
    assert startup_mode("auto", 699 * MB, 100 * MB, llm, tts)[0] == "sequential"
    assert startup_mode("sequential", None, 100 * MB, llm, tts) == ("sequential", "policy sequential")


def test_measured_working_sets_that_fit_switch_to_concurrent_and_a_peak_over_budget_switches_back():
    llm, tts = sizes(200, 100, llm_working=250, tts_working=150)
    fits = after_turn("auto", 600 * MB, "sequential", turn_id=1, turn_peak=0, floor=100 * MB, llm=llm, tts=tts)
    assert fits.mode == "concurrent" and "500 MB fits the 600 MB budget" in fits.message
    tight = after_turn("auto", 450 * MB, "sequential", turn_id=1, turn_peak=0, floor=100 * MB, llm=llm, tts=tts)
    assert tight.mode == "sequential" and "does not fit" in tight.message and tight.warning is None
    hopeless = after_turn("auto", 300 * MB, "sequential", turn_id=1, turn_peak=0, floor=100 * MB, llm=llm, tts=tts)
    assert hopeless.mode == "sequential" and "even one model at a time" in hopeless.warning
    peaked = after_turn("auto", 600 * MB, "concurrent", turn_id=2, turn_peak=650 * MB, floor=100 * MB, llm=llm, tts=tts)
    assert peaked.mode == "sequential" and "peaked at 650 MB" in peaked.message
    calm = after_turn("auto", 600 * MB, "concurrent", turn_id=3, turn_peak=550 * MB, floor=100 * MB, llm=llm, tts=tts)
    assert calm.mode == "concurrent" and calm.message is None


def test_only_policy_auto_with_a_budget_changes_its_mind():
    llm, tts = sizes(200, 100, llm_working=250, tts_working=150)
    for policy, budget in (("sequential", 600 * MB), ("auto", None)):
        kept = after_turn(policy, budget, "sequential", turn_id=1, turn_peak=0, floor=100 * MB, llm=llm, tts=tts)
        assert kept.mode == "sequential" and kept.message is None
