"""What the TTS stage needs from an engine, and an onnxruntime session whose run another thread can abort.

Engines are plain blocking wrappers (no asyncio, no frames): ``load()``, ``synthesize(text) -> float32 audio``,
``cancel()``, ``unload()``. The stage runs ``load``/``synthesize`` on its worker thread and calls ``cancel`` from the
event loop when the user barges in.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

__all__ = [
    "TTSEngine",
    "SynthesisCancelled",
    "CancellableSession",
    "session_options",
    "resident_bytes",
    "release_memory",
]


class SynthesisCancelled(Exception):
    """``cancel()`` stopped the synthesis that was running."""


class TTSEngine(ABC):
    """A text-to-speech engine: text in, mono float32 audio at ``sample_rate`` out."""

    #: Output rate of the loaded voice (valid after ``load``).
    sample_rate: int = 0

    @abstractmethod
    def load(self) -> None:
        """Load the model files; raises ``ModelLoadError`` naming the file that is missing or broken."""

    @abstractmethod
    def unload(self) -> None:
        """Free the model (``load`` brings it back)."""

    @property
    @abstractmethod
    def is_loaded(self) -> bool: ...

    @property
    @abstractmethod
    def memory_footprint(self) -> int:
        """Bytes of model weights held now (0 when unloaded)."""

    @abstractmethod
    def synthesize(self, text: str) -> np.ndarray:
        """Speak already-normalized ``text``; mono float32 in [-1, 1]. Raises ``SynthesisCancelled`` if cancelled."""

    @abstractmethod
    def cancel(self) -> None:
        """Abort the synthesis running on another thread now (thread-safe; a no-op when idle)."""


def session_options(threads: int) -> Any:
    """onnxruntime options for ``threads`` intra-op threads (not spinning) and no inter-op pool (sequential graphs).

    The CPU memory arena stays on: without it Kokoro kept less resident between sentences (158 MB instead of 314 MB)
    but its peak while synthesizing nearly doubled (peak RSS 813 MB instead of 439 MB, scripts/bench_tts.py), and the
    peak is what a memory watchdog acts on.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # idle pool threads sleep instead of spinning: a spinning TTS pool takes cores from llama.cpp between graph nodes
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def resident_bytes() -> int:
    """This process's resident set size."""
    import psutil

    return int(psutil.Process().memory_info().rss)


def release_memory() -> None:
    """After an unload: collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise).

    Measured with Kokoro: 127 MB still resident after ``unload`` without this, 22 MB with it.
    """
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if hasattr(libc, "malloc_trim"):  # glibc only
        libc.malloc_trim(0)


class CancellableSession:
    """Wraps an ``onnxruntime.InferenceSession`` so that ``cancel()`` from another thread aborts ``run()``.

    onnxruntime checks ``RunOptions.terminate`` between graph nodes, so a run stops within one node's time. Engines
    (kokoro-onnx, piper-tts) call ``session.run(...)`` themselves; they get this wrapper in place of the session, and
    every other attribute is the wrapped session's. After ``cancel()`` every run raises ``SynthesisCancelled`` until
    ``reset()``, so an engine that runs the graph once per sentence stops at the next one too.

    ``shrink_arena``: at the end of each run, hand the regions of onnxruntime's CPU memory arena that the run no longer
    uses back to the OS (run option ``memory.enable_memory_arena_shrinkage``). The arena otherwise grows by doubling
    regions (kNextPowerOfTwo) to the largest synthesis so far and keeps it: in a 100-turn Piper soak its resident part
    went from 104 MB to 183 MB (a 256 MB region added for one longer sentence), the whole of the TTS's RSS growth.
    Kokoro alone (40 turns): 461 -> 621 MB, with the shrink 284 -> 285 MB. The peak during a run is unchanged (the
    arena still serves the run); only what stays resident between runs shrinks. The cost: the next run faults its
    pages in again (a short Piper sentence took ~20 % longer on a busy 2-core machine), hence the TTS stage's
    ``release_arena`` setting.
    """

    def __init__(self, session: Any, *, shrink_arena: bool = False) -> None:
        self._session = session
        self.shrink_arena = shrink_arena
        self._lock = threading.Lock()
        self._current: Any = None
        self._cancelled = False

    def run(self, output_names: Any, input_feed: Any, run_options: Any = None) -> Any:
        import onnxruntime as ort

        options = run_options or ort.RunOptions()
        if self.shrink_arena:
            options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        with self._lock:
            if self._cancelled:
                raise SynthesisCancelled("synthesis cancelled")
            self._current = options
        try:
            return self._session.run(output_names, input_feed, options)
        except Exception as exc:
            if options.terminate:
                raise SynthesisCancelled("synthesis cancelled") from exc
            raise
        finally:
            with self._lock:
                self._current = None

    def cancel(self) -> None:
        with self._lock:
            self._cancelled = True
            if self._current is not None:
                self._current.terminate = True

    def reset(self) -> None:
        """Allow runs again (called at the start of each synthesis)."""
        with self._lock:
            self._cancelled = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)
