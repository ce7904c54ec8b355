"""The TTS role: what the TTS stage needs from an engine, the settings every voicepipe TTS engine shares, and an
onnxruntime session whose run another thread can abort.

A TTS engine is an ``Engine`` (``voicepipe.engine``: ``Config``, ``load``/``unload``, ``is_loaded``,
``memory_footprint``, ``cancel``) that also has ``sample_rate`` and ``synthesize(text) -> float32 audio``. The stage
runs ``load``/``synthesize`` on its worker thread and calls ``cancel`` from the event loop when the user barges in.
"""

from __future__ import annotations

import threading
from abc import abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from voicepipe.engine import Engine, EngineConfig
from voicepipe.errors import ModelLoadError

__all__ = [
    "TTSEngine",
    "TTSEngineConfig",
    "SynthesisCancelled",
    "CancellableSession",
    "session_options",
    "open_session",
]


class SynthesisCancelled(Exception):
    """``cancel()`` stopped the synthesis that was running."""


class TTSEngineConfig(EngineConfig):
    """The settings Kokoro and Piper share (each engine's ``Config`` adds its files).

    ``language`` is also the language the TTS stage normalizes text in (numbers, dates), so an engine whose ``Config``
    has no ``language`` gets English text.
    """

    voice: str | None = Field(
        None,
        description="Kokoro: a voice of the archive (default af_heart); Piper: a speaker of a multi-speaker model.",
    )
    speed: float = Field(1.0, ge=0.5, le=2.0, description="Speaking rate (1.0 normal).")
    language: str = Field(
        "en-us", description="Language of the text: Kokoro's phonemizer language and the language numbers are read in."
    )
    threads: int = Field(
        2,
        ge=1,
        le=64,
        description="onnxruntime threads (the first chunk has the cores to itself; see first_chunk_priority).",
    )
    release_arena: bool = Field(
        True,
        description="Hand onnxruntime's working memory back after each sentence, so resident memory does not keep the "
        "longest sentence so far and stays flat over a long conversation; off: each sentence starts without page "
        "faults (side by side on a quiet 2-core box the first sound came 0-4% sooner, BENCHMARKS.md).",
    )


class TTSEngine(Engine):
    """A text-to-speech engine: text in, mono float32 audio at ``sample_rate`` out."""

    role: ClassVar[str] = "tts"

    #: Output rate of the loaded voice (valid after ``load``).
    sample_rate: int = 0

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


def open_session(model_path: Path, threads: int, engine: str) -> Any:
    """An onnxruntime CPU session of ``model_path`` with ``session_options(threads)``; a ``ModelLoadError`` that names
    the file when it is not an ONNX model (``engine`` names the engine in the message)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(model_path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:
        raise ModelLoadError(
            f"{engine} model file {model_path} is not a valid ONNX model ({str(exc).splitlines()[0]}); "
            "download it again or point the tts 'model' setting at a good copy"
        ) from exc


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
    pages in again (a short Piper sentence took ~20 % longer on a busy 2-core machine), hence the engines'
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
