"""Route what C libraries write to file descriptor 2 into the debug log, for the length of a conversation.

PortAudio prints several "Expression ... failed" lines when a device disappears and offers no public hook to silence
them; the CLI wraps a conversation in ``capture_native_stderr`` so the user sees one clear line instead.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator

__all__ = ["capture_native_stderr"]

log = logging.getLogger("voicepipe.audio.device")


@contextlib.contextmanager
def capture_native_stderr(logger: logging.Logger | None = None) -> Iterator[None]:
    """Send file descriptor 2 (PortAudio's and ALSA's diagnostics) to ``logger`` at debug level while inside.

    Python's own ``sys.stderr`` keeps writing to the real stderr.
    """
    target = logger or log
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    original = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                target.debug("native: %s", line.rstrip())

    reader = threading.Thread(target=pump, name="voicepipe-native-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        replaced, sys.stderr = sys.stderr, original
        os.dup2(saved, 2)  # closes the pipe's write end held by fd 2, so the reader sees EOF
        os.close(saved)
        with contextlib.suppress(Exception):
            replaced.close()
        reader.join(timeout=1.0)
