"""Multi-turn prompt cache: engine-state snapshots taken at turn boundaries, keyed by the tokens they hold.

Qwen3.5 is hybrid: its Gated DeltaNet layers keep a recurrent state that cannot be rolled back to an earlier position
(unlike an attention KV cache, which can be trimmed). So instead of trimming, the chat model snapshots the whole engine
state whenever a prompt reaches a turn boundary (the end of the last complete message). A later prompt that extends a
snapshot's tokens restores it and prefills only the remainder; when the history was edited (e.g. a barge-in cut the
last reply short), the longest snapshot that is still a prefix wins, or nothing does and the prompt is prefilled cold.

Snapshots are opaque engine objects (bytes for llama.cpp, arrays for MLX). They live here, outside the engine, so they
survive ``ChatModel.unload()`` and a later reload.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["Snapshot", "PromptCache"]


@dataclass(frozen=True)
class Snapshot:
    """The engine state after exactly ``tokens`` were prefilled."""

    tokens: tuple[int, ...]
    state: Any
    nbytes: int = 0


class PromptCache:
    """An LRU set of snapshots (at most ``max_snapshots``)."""

    def __init__(self, max_snapshots: int = 4) -> None:
        if max_snapshots < 1:
            raise ValueError(f"max_snapshots must be >= 1, got {max_snapshots}")
        self.max_snapshots = max_snapshots
        self._snapshots: OrderedDict[tuple[int, ...], Snapshot] = OrderedDict()

    def __len__(self) -> int:
        return len(self._snapshots)

    def __contains__(self, tokens: Sequence[int]) -> bool:
        return tuple(tokens) in self._snapshots

    @property
    def nbytes(self) -> int:
        """Bytes held by all snapshots (as reported by the engine)."""
        return sum(s.nbytes for s in self._snapshots.values())

    def add(self, tokens: Sequence[int], state: Any, nbytes: int = 0) -> Snapshot:
        key = tuple(tokens)
        snap = Snapshot(key, state, nbytes)
        self._snapshots[key] = snap
        self._snapshots.move_to_end(key)
        while len(self._snapshots) > self.max_snapshots:
            self._snapshots.popitem(last=False)
        return snap

    def longest_prefix(self, tokens: Sequence[int], *, max_len: int | None = None) -> Snapshot | None:
        """The snapshot with the most tokens that are a prefix of ``tokens`` (at most ``max_len`` of them)."""
        limit = len(tokens) if max_len is None else max_len
        best: Snapshot | None = None
        for key, snap in self._snapshots.items():
            if len(key) <= limit and (best is None or len(key) > len(best.tokens)) and _is_prefix(key, tokens):
                best = snap
        if best is not None:
            self._snapshots.move_to_end(best.tokens)
        return best

    def keep_prefixes_of(self, tokens: Sequence[int]) -> int:
        """Drop every snapshot that is not a prefix of ``tokens`` (it can never serve a conversation that extends
        them); returns how many were dropped."""
        stale = [key for key in self._snapshots if not _is_prefix(key, tokens)]
        for key in stale:
            del self._snapshots[key]
        return len(stale)

    def clear(self) -> None:
        self._snapshots.clear()


def _is_prefix(prefix: Sequence[int], tokens: Sequence[int]) -> bool:
    return len(prefix) <= len(tokens) and tuple(tokens[: len(prefix)]) == tuple(prefix)
