"""Small audio conversions every stage needs: to mono float32, resampling with soxr, and finite samples.

``SPEECH_SAMPLE_RATE`` is the one definition of the rate speech models work at (the VAD engines, Smart Turn, Whisper).
"""

from __future__ import annotations

import logging

import numpy as np

__all__ = ["SPEECH_SAMPLE_RATE", "to_mono", "resample", "to_float32", "finite", "StreamResampler"]

log = logging.getLogger("voicepipe.audio")

#: Every speech model here (webrtcvad, Silero, Smart Turn, Whisper) takes 16 kHz mono audio.
SPEECH_SAMPLE_RATE = 16_000


def finite(pcm: np.ndarray, where: str) -> np.ndarray:
    """``pcm`` with NaN and infinite samples replaced (NaN -> 0, +-inf -> +-1), saying so once as a warning.

    One NaN would otherwise turn every level, resampled block and model input it touches into NaN, and the turn
    would be silently lost.
    """
    if not np.issubdtype(pcm.dtype, np.floating):
        return pcm
    bad = ~np.isfinite(pcm)
    count = int(np.count_nonzero(bad))
    if count == 0:
        return pcm
    log.warning("%s: replaced %d NaN/infinite sample(s) by silence/full scale", where, count)
    return np.nan_to_num(pcm, nan=0.0, posinf=1.0, neginf=-1.0)


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


class StreamResampler:
    """Mono float32 audio in blocks, resampled to ``rate_out`` through one soxr stream (stateful: block edges leave no
    clicks). The stream is made on the first block of a rate and made anew when the input rate changes; a block at
    ``rate_out`` already passes through untouched."""

    def __init__(self, rate_out: int) -> None:
        self.rate_out = rate_out
        self._stream = None
        self._rate_in = 0

    def __call__(self, pcm: np.ndarray, rate_in: int) -> np.ndarray:
        if rate_in == self.rate_out:
            return np.asarray(pcm, dtype=np.float32)
        if self._stream is None or rate_in != self._rate_in:
            import soxr

            self._stream = soxr.ResampleStream(rate_in, self.rate_out, 1, dtype="float32", quality="HQ")
            self._rate_in = rate_in
        out = self._stream.resample_chunk(np.asarray(pcm, dtype=np.float32).reshape(-1, 1))
        return np.asarray(out, dtype=np.float32).reshape(-1)

    def flush(self) -> np.ndarray:
        """The samples the stream still holds (end of the audio), then start afresh."""
        if self._stream is None:
            return np.zeros(0, dtype=np.float32)
        tail = self._stream.resample_chunk(np.zeros((0, 1), dtype=np.float32), last=True)
        self._stream = None
        return np.asarray(tail, dtype=np.float32).reshape(-1)

    def reset(self) -> None:
        """Forget the stream's state (the audio it held is dropped)."""
        self._stream = None
