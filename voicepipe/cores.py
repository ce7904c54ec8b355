"""Who gets the CPU cores now: the stage on the critical path of the turn.

On a small CPU (two cores) Whisper, llama.cpp and the TTS all want every core, and the user waits for whichever of
them is on the critical path: after the end of speech that is the LLM's first chunk, then the TTS synthesizing that
first chunk. While the first chunk is synthesized, the LLM's next tokens are not needed yet (the first chunk's audio
lasts longer than decoding the next sentence takes), so the LLM waits and the TTS gets both cores.

Later in the reply the TTS and the LLM overlap (sentence two is synthesized while sentence three is decoded), and
neither is critical. Then llama.cpp's threads must not wait on the TTS's: its threads meet at a barrier after every
operation of a decode step, and a thread that has lost its core to the TTS holds all of them up (decode fell from 62
to 2 tokens/s beside Kokoro on two cores). A stage doing such work marks it with ``schedule.busy(name)``, and llama.cpp
decodes with fewer threads (``shared_threads``) while another stage is busy: one thread has no barrier to wait at.

A stage marks its critical phase with ``schedule.critical(name)``; a background stage calls
``schedule.wait_for_critical(name)`` between its own steps (llama.cpp: before each decode) and waits while another
stage is critical, at most ``max_wait_s`` per call so a stuck phase can never stall it. One process-wide schedule,
since the cores are the process's (and the machine's). Hand-written: this is a policy between our own stages, which no
thread-pool library expresses.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

__all__ = ["CoreSchedule", "schedule"]


class CoreSchedule:
    """Critical phases (by owner name) and the waits of everyone else; thread-safe."""

    def __init__(self, max_wait_s: float = 2.0) -> None:
        self.max_wait_s = max_wait_s
        self.enabled = True
        self._critical: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._changed = threading.Condition()
        self.waited_s = 0.0  # total time background work spent waiting (for benchmarks)
        self.waiting = 0  # callers blocked in wait_for_critical now

    def critical(self, owner: str) -> contextlib.AbstractContextManager[None]:
        """Mark ``owner``'s work inside the block as the critical path (re-entrant, per owner)."""
        return self._marked(self._critical, owner)

    def busy(self, owner: str) -> contextlib.AbstractContextManager[None]:
        """Mark ``owner`` as computing (not necessarily critical): others then use fewer threads (re-entrant)."""
        return self._marked(self._busy, owner)

    @contextlib.contextmanager
    def _marked(self, marks: dict[str, int], owner: str) -> Iterator[None]:
        with self._changed:
            marks[owner] = marks.get(owner, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                marks[owner] -= 1
                if not marks[owner]:
                    del marks[owner]
                self._changed.notify_all()

    def others_busy(self, owner: str) -> bool:
        """True while another owner computes (busy or critical)."""
        if not self.enabled:
            return False
        with self._changed:
            return any(name != owner for name in (*self._busy, *self._critical))

    def others_critical(self, owner: str) -> bool:
        with self._changed:
            return any(name != owner for name in self._critical)

    def wait_for_critical(self, owner: str) -> float:
        """Block while another owner is critical (at most ``max_wait_s``); returns the seconds waited."""
        if not self.enabled:
            return 0.0
        start = time.monotonic()
        deadline = start + self.max_wait_s
        with self._changed:
            self.waiting += 1
            while self.enabled and any(name != owner for name in self._critical):
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            self.waiting -= 1
            waited = time.monotonic() - start
            self.waited_s += waited
        return waited


#: The process-wide schedule that the stages share.
schedule = CoreSchedule()
