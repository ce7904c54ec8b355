"""The speaker's output buffer: samples waiting for the device, and when each one reaches the DAC.

PortAudio pulls audio on its own thread (``fill``); the event loop appends reply audio and asks how far the device has
really played (``played``), from the DAC times PortAudio reports, so "heard" means heard, not merely handed over.
Hand-written: sounddevice hands out raw callbacks, no such buffer.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

__all__ = ["OutputBuffer"]


class OutputBuffer:
    """Samples waiting for the device, shared with PortAudio's callback thread (hence the lock).

    Positions count reply samples only (silence the callback fills in when the buffer runs dry is not counted), so
    ``written`` is where the next block will end up and ``consumed`` how far the device has taken audio.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: collections.deque[np.ndarray] = collections.deque()
        self.offset = 0  # samples of blocks[0] already consumed
        self.written = 0
        self.consumed = 0
        # (reply position after a callback, stream time at which that position's last sample reaches the DAC)
        self.dac_marks: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)

    def append(self, pcm: np.ndarray) -> None:
        with self.lock:
            self.blocks.append(pcm)
            self.written += len(pcm)

    def clear(self) -> int:
        """Drop everything not yet consumed; returns the position the reply stops at."""
        with self.lock:
            self.blocks.clear()
            self.offset = 0
            self.written = self.consumed
            return self.consumed

    @property
    def queued(self) -> int:
        return self.written - self.consumed

    def fill(self, out: np.ndarray, dac_start: float, rate: int) -> None:
        """Called by PortAudio's thread: copy queued samples into ``out`` (silence after them).

        ``dac_start`` is the stream time at which ``out[0]`` reaches the DAC.
        """
        n = len(out)
        filled = 0
        with self.lock:
            while filled < n and self.blocks:
                head = self.blocks[0]
                take = min(n - filled, len(head) - self.offset)
                out[filled : filled + take] = head[self.offset : self.offset + take]
                filled += take
                self.offset += take
                if self.offset >= len(head):
                    self.blocks.popleft()
                    self.offset = 0
            self.consumed += filled
            if filled:
                self.dac_marks.append((self.consumed, dac_start + filled / rate))
        out[filled:] = 0.0

    def played(self, now: float) -> int:
        """Reply position the device has played by stream time ``now``."""
        with self.lock:
            done = 0
            for position, at in self.dac_marks:
                if at <= now:
                    done = position
                else:
                    break
            return done
