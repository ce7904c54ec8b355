"""Small audio conversions every stage needs: to mono float32, and resampling with soxr."""

from __future__ import annotations

import numpy as np

__all__ = ["to_mono", "resample", "to_float32"]


def to_float32(pcm: np.ndarray) -> np.ndarray:
    """Integer PCM -> float32 in [-1, 1]; float input is cast."""
    if np.issubdtype(pcm.dtype, np.integer):
        info = np.iinfo(pcm.dtype)
        return (pcm.astype(np.float32) / float(max(abs(info.min), info.max))).astype(np.float32)
    return pcm.astype(np.float32, copy=False)


def to_mono(pcm: np.ndarray) -> np.ndarray:
    """(samples, channels) -> (samples,) by averaging channels; mono input is returned as is."""
    if pcm.ndim == 1:
        return pcm
    return pcm.mean(axis=1, dtype=np.float32)


def resample(pcm: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Resample float32 audio (mono or multi-channel) with soxr; a no-op when the rates match."""
    if rate_in == rate_out or len(pcm) == 0:
        return pcm.astype(np.float32, copy=False)
    import soxr

    return soxr.resample(pcm, rate_in, rate_out, quality="HQ").astype(np.float32, copy=False)
