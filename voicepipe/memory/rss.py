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

__all__ = [
    "rss_bytes",
    "rss_breakdown",
    "heap_stats",
    "peak_rss_bytes",
    "reset_peak_rss",
    "release_freed_memory",
    "trim_heap",
    "MB",
]

MB = 1024 * 1024
_PROCESS = psutil.Process()
_LINUX = sys.platform.startswith("linux")


def rss_bytes() -> int:
    """Resident set size of this process now."""
    return int(_PROCESS.memory_info().rss)


def rss_breakdown() -> dict[str, int]:
    """Resident bytes by kind (Linux ``RssAnon``/``RssFile``/``RssShmem``; empty elsewhere): file pages are mapped
    weights (a GGUF), anonymous pages are heaps, arenas and buffers."""
    if not _LINUX:
        return {}
    out: dict[str, int] = {}
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                    key, value = line.split(":", 1)
                    out[key[3:].lower()] = int(value.split()[0]) * 1024
    except OSError:
        return {}
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def heap_stats() -> dict[str, int]:
    """glibc malloc's own accounting (``mallinfo2``, glibc >= 2.33; empty elsewhere), summed over all arenas:
    ``heap`` bytes obtained with brk/arena heaps, ``in_use`` and ``free`` parts of it (free bytes are held, not
    returned: fragmentation or a high-water mark), ``mmapped`` bytes of large blocks mapped one by one.
    No library exposes this, hence ctypes."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return {}
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return {"heap": info.arena, "in_use": info.uordblks, "free": info.fordblks, "mmapped": info.hblkhd}


def _libc() -> ctypes.CDLL | None:
    if not _LINUX:
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


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


def trim_heap() -> None:
    """Return the malloc heap's free pages to the OS (glibc keeps them mapped unless asked; no Python library does
    this). Quick, and ctypes releases the GIL meanwhile."""
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Collect garbage and return freed heap pages to the OS, so an unload shows up in RSS at once."""
    gc.collect()
    trim_heap()
