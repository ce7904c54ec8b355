"""Resident memory of this process: the number iOS's jetsam and the governor look at.

``psutil`` gives the current resident set size. Linux also keeps the peak since the last reset (``VmHWM`` in
``/proc/self/status``, reset by writing ``5`` to ``/proc/self/clear_refs``); reading it catches a spike that falls
between two samples of the watchdog. psutil exposes neither, so those two are read by hand (Linux only; elsewhere the
sampled RSS is all there is).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

import psutil

__all__ = ["rss_bytes", "peak_rss_bytes", "reset_peak_rss", "release_freed_memory", "MB"]

MB = 1024 * 1024
_PROCESS = psutil.Process()
_LINUX = sys.platform.startswith("linux")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(_PROCESS.memory_info().rss)


def peak_rss_bytes() -> int | None:
    """The kernel's resident high-water mark since the last ``reset_peak_rss()`` (None where unavailable)."""
    if not _LINUX:
        return None
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark to the current RSS (Linux >= 4.0). Returns False where unsupported."""
    if not _LINUX:
        return False
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as clear:
            clear.write("5")
        return True
    except OSError:
        return False


def _malloc_trim() -> None:
    # glibc keeps freed heap pages mapped unless asked; malloc_trim(0) gives them back (no Python library does this).
    if not _LINUX:
        return
    name = ctypes.util.find_library("c")
    if name is None:
        return
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim(0)
    except (OSError, AttributeError):
        return


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS, so an unload shows up in RSS at once."""
    gc.collect()
    _malloc_trim()
