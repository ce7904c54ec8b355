"""``Worker``: the one owner of a dedicated worker thread (every stage's, every chat model's).

Blocking model calls must not run on the event loop, and several engines tie their state to the thread that created it
(MLX streams, onnxruntime arenas are cheapest reused on one thread), so each owner gets exactly one thread, started on
first use (never in a constructor) and stopped by ``shutdown``. ``call`` runs on it and waits (directly when already on
it, so nested calls cannot deadlock); ``run`` is the awaitable form for the event loop.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

__all__ = ["Worker"]

T = TypeVar("T")


class Worker:
    """One lazily started worker thread named ``voicepipe-<name>``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._executor: ThreadPoolExecutor | None = None
        self._ident: int | None = None
        self._lock = threading.Lock()

    def _mark(self) -> None:
        self._ident = threading.get_ident()

    @property
    def executor(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=1, thread_name_prefix=f"voicepipe-{self.name}", initializer=self._mark
                )
            return self._executor

    @property
    def started(self) -> bool:
        return self._executor is not None

    def on_thread(self) -> bool:
        """True when called from this worker's thread."""
        return self._ident is not None and threading.get_ident() == self._ident

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        return self.executor.submit(fn, *args, **kwargs)

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker thread and wait for it (directly when already on that thread)."""
        if self.on_thread():
            return fn(*args, **kwargs)
        return self.submit(fn, *args, **kwargs).result()

    async def run(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` on the worker thread without blocking the event loop."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def shutdown(self, *, wait: bool = False) -> None:
        """Stop the thread. With ``wait=False`` work still running finishes in the background; queued work is dropped."""
        with self._lock:
            executor, self._executor = self._executor, None
            self._ident = None
        if executor is not None:
            executor.shutdown(wait=wait, cancel_futures=not wait)
