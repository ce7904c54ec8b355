"""The jetsam simulator: a watchdog that kills this process the way iOS does when it uses too much memory.

iOS gives a foreground app a memory limit and, when the app crosses it, terminates it with SIGKILL: no exception,
no cleanup, no chance to save anything. ``RssWatchdog`` reproduces that on any OS: a thread (started by ``start()``,
never by the constructor) samples the process's resident memory with psutil at ``hz`` (100 by default, at least 50),
and on Linux also reads the kernel's resident high-water mark, so a spike between two samples is caught too. Crossing
``limit_mb`` writes one line on stderr (the peak and the limit) and sends SIGKILL to the process itself.

Without a limit it only watches: the governor uses it for the peak of each turn (``reset_window`` /
``window_peak_bytes``).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from voicepipe.memory.rss import MB, peak_rss_bytes, reset_peak_rss, rss_bytes

__all__ = ["RssWatchdog", "MIN_HZ"]

MIN_HZ = 50.0


def _kill_like_jetsam(rss: int, peak: int, limit: int) -> None:
    sys.stderr.write(
        f"jetsam: killed pid {os.getpid()}: resident memory {rss / MB:.0f} MB crossed the limit of "
        f"{limit / MB:.0f} MB (peak {peak / MB:.0f} MB)\n"
    )
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


class RssWatchdog:
    """Samples resident memory at ``hz``; records the peak; with ``limit_mb``, kills the process past the limit.

    ``on_exceed(rss, peak, limit)`` replaces the kill (for in-process tests of the watchdog itself).
    """

    def __init__(
        self,
        limit_mb: float | None = None,
        *,
        hz: float = 100.0,
        on_exceed: Callable[[int, int, int], None] | None = None,
    ) -> None:
        if limit_mb is not None and limit_mb <= 0:
            raise ValueError(f"jetsam limit must be a positive number of MB, got {limit_mb}")
        if hz < MIN_HZ:
            raise ValueError(f"sampling rate must be at least {MIN_HZ:.0f} Hz, got {hz}")
        self.limit_bytes = int(limit_mb * MB) if limit_mb is not None else None
        self.interval = 1.0 / hz
        self.peak_bytes = 0
        self.window_peak_bytes = 0
        self.samples = 0
        self.exceeded = False
        self._on_exceed = on_exceed or _kill_like_jetsam
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_at = 0.0
        self._stopped_at = 0.0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def sample_rate_hz(self) -> float:
        """Samples per second actually achieved (so far)."""
        end = self._stopped_at if not self.running and self._stopped_at else time.monotonic()
        elapsed = end - self._started_at
        return self.samples / elapsed if elapsed > 0 else 0.0

    def start(self) -> None:
        if self.running:
            return
        self._stop.clear()
        self._started_at = time.monotonic()
        reset_peak_rss()
        self.sample()
        self._thread = threading.Thread(target=self._run, name="voicepipe-jetsam", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
            self._thread = None
        self._stopped_at = time.monotonic()
        self.sample()

    def _run(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            self.sample()
            next_at += self.interval
            delay = next_at - time.monotonic()
            if delay < 0:  # fell behind (a loaded machine): sample again at once, do not try to catch up
                next_at = time.monotonic()
                delay = 0.0
            self._stop.wait(delay)

    def sample(self) -> int:
        """Take one sample now (also called by the thread); returns the current RSS."""
        with self._lock:
            rss = rss_bytes()
            hwm = peak_rss_bytes() or 0
            peak = max(rss, hwm)
            self.samples += 1
            self.peak_bytes = max(self.peak_bytes, peak)
            self.window_peak_bytes = max(self.window_peak_bytes, peak)
            limit = self.limit_bytes
            over = limit is not None and peak > limit and not self.exceeded
            if over:
                self.exceeded = True
        if over and limit is not None:
            self._on_exceed(rss, self.peak_bytes, limit)
        return rss

    def reset_window(self) -> None:
        """Start a new window (e.g. a turn): ``window_peak_bytes`` restarts from the current RSS."""
        self.sample()  # fold the peak so far into peak_bytes before the kernel's mark is reset
        with self._lock:
            reset_peak_rss()
            self.window_peak_bytes = rss_bytes()
