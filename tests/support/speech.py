"""Test speech made at run time: espeak-ng and Piper utterances, silence padding, white/pink noise at a chosen SNR,
resampling.

Nothing here is committed audio: every clip is synthesized (espeak-ng, apt package ``espeak-ng``; Piper's joe voice
from the dev extra) or generated from a seeded random generator when a test runs. All functions return mono float32
numpy arrays in [-1, 1] unless they say otherwise.
"""

from __future__ import annotations

import functools
import io
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import numpy as np

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE
from voicepipe.errors import MissingDependencyError
from voicepipe.frames import AudioFrame

__all__ = [
    "SAMPLE_RATE",
    "espeak",
    "piper",
    "silence",
    "pad",
    "concat",
    "white_noise",
    "pink_noise",
    "noise",
    "mix_at_snr",
    "rms",
    "resample",
    "to_stereo",
    "audio_frames",
]

#: Test speech comes at the rate speech models take.
SAMPLE_RATE = SPEECH_SAMPLE_RATE


def _rng(seed: int | np.random.Generator | None) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


@functools.lru_cache(maxsize=256)
def _espeak_cached(text: str, voice: str, words_per_minute: int, sample_rate: int) -> np.ndarray:
    import soundfile as sf

    exe = shutil.which("espeak-ng")
    if exe is None:
        raise MissingDependencyError("test speech needs espeak-ng; install it with: apt-get install espeak-ng")
    wav = subprocess.run(
        [exe, "-v", voice, "-s", str(words_per_minute), "--stdout", text], check=True, capture_output=True
    ).stdout
    pcm, rate = sf.read(io.BytesIO(wav), dtype="float32", always_2d=False)
    pcm = resample(pcm, rate, sample_rate)
    pcm.setflags(write=False)
    return pcm


def espeak(
    text: str, *, voice: str = "en-us", words_per_minute: int = 160, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """Speak ``text`` with espeak-ng; mono float32 at ``sample_rate`` (espeak's own silence edges trimmed to 20 ms)."""
    pcm = _espeak_cached(text, voice, words_per_minute, sample_rate)
    return _trim(pcm, sample_rate).copy()


@functools.lru_cache(maxsize=2)
def _piper_voice(model: str) -> Any:  # a piper.PiperVoice (imported lazily: the piper extra)
    from piper import PiperVoice

    return PiperVoice.load(model)


@functools.lru_cache(maxsize=256)
def _piper_cached(text: str, model: str, sample_rate: int) -> np.ndarray:
    from piper import SynthesisConfig

    voice = _piper_voice(model)
    # no sampling noise: the same text gives the same clip in every run (VITS otherwise varies its timing and melody)
    config = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    pcm = np.concatenate([chunk.audio_float_array for chunk in voice.synthesize(text, syn_config=config)])
    pcm = resample(pcm, voice.config.sample_rate, sample_rate)
    pcm.setflags(write=False)
    return pcm


def piper(text: str, model: str | None = None, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Speak ``text`` with a Piper voice (default: joe, from the dev extra); silence edges trimmed to 20 ms.

    A neural voice with natural intonation: Whisper hears it more reliably than espeak-ng's formants (through a sound
    server espeak's "capital of France" came back as "capital and friends" in some runs), and an end-of-turn model can
    tell a finished sentence from an unfinished one by its melody.
    """
    if model is None:
        from tests.support.tts_assets import piper_joe_model_path

        model = str(piper_joe_model_path())
    return _trim(_piper_cached(text, str(model), sample_rate), sample_rate).copy()


def _trim(pcm: np.ndarray, sample_rate: int, *, threshold: float = 1e-3, keep: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(pcm) > threshold)
    if loud.size == 0:
        return pcm[:0]
    margin = int(keep * sample_rate)
    return pcm[max(0, loud[0] - margin) : loud[-1] + margin + 1]


def silence(seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    return np.zeros(int(round(seconds * sample_rate)), dtype=np.float32)


def pad(pcm: np.ndarray, lead: float = 0.5, trail: float = 1.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Add ``lead`` seconds of silence before and ``trail`` seconds after."""
    return np.concatenate([silence(lead, sample_rate), pcm, silence(trail, sample_rate)]).astype(np.float32)


def concat(*parts: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts])


def rms(pcm: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if len(pcm) else 0.0


def white_noise(
    seconds: float, *, level: float = 0.05, sample_rate: int = SAMPLE_RATE, seed: int | None = 0
) -> np.ndarray:
    """Gaussian white noise with RMS ``level``."""
    n = int(round(seconds * sample_rate))
    x = _rng(seed).standard_normal(n)
    return _scaled(x, level)


def pink_noise(
    seconds: float, *, level: float = 0.05, sample_rate: int = SAMPLE_RATE, seed: int | None = 0
) -> np.ndarray:
    """1/f (pink) noise with RMS ``level``: white noise shaped by 1/sqrt(f) in the frequency domain."""
    n = int(round(seconds * sample_rate))
    spectrum = np.fft.rfft(_rng(seed).standard_normal(n))
    freqs = np.fft.rfftfreq(n, d=1.0 / sample_rate)
    shaping = np.ones_like(freqs)
    shaping[1:] = 1.0 / np.sqrt(freqs[1:])
    shaping[0] = 0.0  # no DC
    return _scaled(np.fft.irfft(spectrum * shaping, n), level)


def noise(
    kind: str, seconds: float, *, level: float = 0.05, sample_rate: int = SAMPLE_RATE, seed: int | None = 0
) -> np.ndarray:
    """``kind`` is "white" or "pink"."""
    if kind == "white":
        return white_noise(seconds, level=level, sample_rate=sample_rate, seed=seed)
    if kind == "pink":
        return pink_noise(seconds, level=level, sample_rate=sample_rate, seed=seed)
    raise ValueError(f"noise kind must be 'white' or 'pink', not {kind!r}")


def _scaled(x: np.ndarray, level: float) -> np.ndarray:
    x = x * (level / max(rms(x), 1e-12))
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def mix_at_snr(
    clip: np.ndarray, snr_db: float, *, kind: str = "white", sample_rate: int = SAMPLE_RATE, seed: int | None = 0
) -> np.ndarray:
    """Add noise over the whole clip so that (power of the speech where it is active) / (noise power) = ``snr_db``.

    Speech power is measured over 20 ms blocks within 20 dB of the loudest block, so silence padding does not lower it.
    """
    block = max(1, int(0.02 * sample_rate))  # 20 ms blocks: per-sample gating would undercount the envelope
    usable = len(clip) // block * block
    if usable == 0:
        raise ValueError("clip is shorter than 20 ms; nothing to measure the speech level on")
    block_rms = np.sqrt(np.mean(np.square(clip[:usable].reshape(-1, block), dtype=np.float64), axis=1))
    loud = block_rms > block_rms.max() * 0.1
    speech_rms = float(np.sqrt(np.mean(np.square(block_rms[loud]))))
    level = speech_rms / (10 ** (snr_db / 20))
    mixed = clip + noise(kind, len(clip) / sample_rate, level=level, sample_rate=sample_rate, seed=seed)[: len(clip)]
    return np.clip(mixed, -1.0, 1.0).astype(np.float32)


def resample(pcm: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """High-quality resampling with soxr (works for mono (n,) and multi-channel (n, ch) arrays)."""
    import soxr

    if from_rate == to_rate:
        return np.asarray(pcm, dtype=np.float32)
    return soxr.resample(np.asarray(pcm, dtype=np.float32), from_rate, to_rate, quality="HQ").astype(np.float32)


def to_stereo(pcm: np.ndarray, *, right_gain: float = 1.0) -> np.ndarray:
    """Mono (n,) -> stereo (n, 2); ``right_gain`` lets a test tell the channels apart."""
    return np.stack([pcm, pcm * right_gain], axis=1).astype(np.float32)


def audio_frames(
    pcm: np.ndarray, sample_rate: int = SAMPLE_RATE, *, frame_ms: float = 20.0, start_timestamp: float | None = None
) -> Iterator[AudioFrame]:
    """Cut a clip into AudioFrames of ``frame_ms`` (the last may be shorter), as a microphone would deliver them.

    With ``start_timestamp`` the frames carry timestamps advancing with the audio (a virtual clock); otherwise
    each frame gets the monotonic time at which it is created.
    """
    step = max(1, int(round(sample_rate * frame_ms / 1000.0)))
    for i, offset in enumerate(range(0, len(pcm), step)):
        block = np.ascontiguousarray(pcm[offset : offset + step], dtype=np.float32)
        if start_timestamp is None:
            yield AudioFrame(pcm=block, sample_rate=sample_rate)
        else:
            yield AudioFrame(pcm=block, sample_rate=sample_rate, timestamp=start_timestamp + i * step / sample_rate)
