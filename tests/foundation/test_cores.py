"""The core schedule: a background stage waits while another stage is on the critical path, and never forever."""

from __future__ import annotations

import threading

from voicepipe.cores import CoreSchedule


def _wait_until(condition, what: str) -> None:  # noqa: ANN001
    event = threading.Event()
    for _ in range(2000):
        if condition():
            return
        event.wait(0.005)
    raise AssertionError(f"never happened: {what}")


def test_a_background_caller_waits_until_the_critical_phase_ends() -> None:
    schedule = CoreSchedule(max_wait_s=60)
    done = threading.Event()
    with schedule.critical("tts"):
        worker = threading.Thread(target=lambda: (schedule.wait_for_critical("llm"), done.set()))
        worker.start()
        _wait_until(lambda: schedule.waiting == 1, "the llm blocked")
        assert not done.is_set()
    worker.join(5)
    assert done.is_set() and schedule.waiting == 0


def test_the_critical_owner_itself_never_waits_and_phases_nest() -> None:
    schedule = CoreSchedule(max_wait_s=60)
    with schedule.critical("tts"), schedule.critical("tts"):
        assert schedule.wait_for_critical("tts") < 1.0  # (it would wait 60 s if it counted itself)
        assert schedule.others_critical("llm") and not schedule.others_critical("tts")
    assert not schedule.others_critical("llm")


def test_the_wait_is_bounded_and_can_be_switched_off() -> None:
    schedule = CoreSchedule(max_wait_s=0.05)
    with schedule.critical("tts"):
        assert 0.04 <= schedule.wait_for_critical("llm") < 5  # a stuck phase cannot stall the LLM
        schedule.enabled = False
        assert schedule.wait_for_critical("llm") == 0.0


def test_busy_owners_are_seen_by_the_others_only_and_nest() -> None:
    schedule = CoreSchedule()
    assert not schedule.others_busy("llm")
    with schedule.busy("tts"), schedule.busy("tts"):
        assert schedule.others_busy("llm") and not schedule.others_busy("tts")
    assert not schedule.others_busy("llm")
    with schedule.critical("asr"):  # a critical phase is computing too
        assert schedule.others_busy("llm")
        schedule.enabled = False
        assert not schedule.others_busy("llm")
