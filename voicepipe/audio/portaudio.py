"""PortAudio through sounddevice: find a device by index or name, pick a rate it accepts, close a stream safely.

Shared by the microphone and the speaker (``voicepipe.audio.device``). PortAudio rejects 16 kHz on many
PulseAudio/PipeWire devices, so a device is opened at a rate it supports and the stages resample.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Any, Literal

from voicepipe._optional import require
from voicepipe.errors import UserError

__all__ = ["Latency", "DeviceLostError", "sounddevice", "resolve_device", "pick_rate", "lost_message", "close_stream"]

log = logging.getLogger("voicepipe.audio.device")

#: PortAudio buffer: seconds, or the device's own "low"/"high" figures. Its "high" latency is only ~35 ms on
#: PulseAudio's ALSA device; under CPU load such a buffer underruns and the stream stalls for a second or more
#: (measured here), so the stages default to 100 ms.
Latency = Literal["low", "high"] | float
_FALLBACK_RATES = (48000, 44100, 32000, 24000, 16000)


class DeviceLostError(RuntimeError):
    """The audio device stopped delivering or taking audio (unplugged, or its sound server went away)."""


def sounddevice() -> Any:
    """The ``sounddevice`` module; a ``UserError`` naming the install command when it or PortAudio is missing."""
    try:
        return require("sounddevice", extra="audio", purpose="the microphone and speaker stages")
    except OSError as exc:  # sounddevice imports, but libportaudio is missing
        raise UserError(
            f"the PortAudio library is missing ({exc}); install it (Debian/Ubuntu: apt install libportaudio2, "
            "macOS: brew install portaudio)"
        ) from exc


def resolve_device(sd: Any, spec: str | int | None, kind: Literal["input", "output"], field: str) -> int:
    """Index of the device ``spec`` names: an index, an exact name, or a unique part of a name (case-insensitive).

    ``None`` is the system default. Raises ``UserError`` naming ``field`` and the devices that would fit.
    """
    channels_key = f"max_{kind}_channels"
    try:
        devices = list(sd.query_devices())
    except Exception as exc:  # PortAudio reports a missing audio system in several ways
        raise UserError(
            f"{field}: cannot list audio devices ({exc}); is a sound card or sound server available?"
        ) from exc
    usable = [(i, d) for i, d in enumerate(devices) if d[channels_key] > 0]
    names = ", ".join(f"{i}: {d['name']!r}" for i, d in usable) or "none"
    if spec is None:
        default = sd.default.device[0 if kind == "input" else 1]
        if default is None or default < 0 or default >= len(devices) or devices[default][channels_key] <= 0:
            raise UserError(f"{field}: there is no default {kind} device; set '{field}' to one of: {names}")
        return int(default)
    if isinstance(spec, int):
        if 0 <= spec < len(devices) and devices[spec][channels_key] > 0:
            return spec
        raise UserError(f"{field}: {spec} is not an {kind} device index; use one of: {names}")
    exact = [i for i, d in usable if d["name"] == spec]
    if exact:
        return exact[0]
    partial = [i for i, d in usable if spec.lower() in d["name"].lower()]
    if len(partial) == 1:
        return partial[0]
    if not partial:
        raise UserError(f"{field}: no {kind} device is named like {spec!r}; use one of: {names}")
    found = ", ".join(f"{i}: {devices[i]['name']!r}" for i in partial)
    raise UserError(f"{field}: {spec!r} matches several {kind} devices ({found}); give the full name or the index")


def pick_rate(sd: Any, device: int, kind: Literal["input", "output"], wanted: int | None, field: str) -> int:
    """The rate to open the device at: ``wanted`` if given (and supported), else its default, else a common rate."""
    check = sd.check_input_settings if kind == "input" else sd.check_output_settings
    default = int(sd.query_devices(device)["default_samplerate"])
    candidates = [wanted] if wanted else [default, *[r for r in _FALLBACK_RATES if r != default]]
    for rate in candidates:
        try:
            check(device=device, samplerate=rate, channels=1, dtype="float32")
            return rate
        except Exception as exc:
            last = exc
    if wanted:
        raise UserError(f"{field}: the {kind} device does not support {wanted} Hz ({last}); remove it or try {default}")
    raise UserError(
        f"{field}: the {kind} device accepts none of the rates {candidates} ({last}); choose another device"
    )


def lost_message(kind: str, device_name: str) -> str:
    """The one line a user sees when a device disappears."""
    return (
        f"the audio {kind} device {device_name!r} disappeared (unplugged, or its sound server stopped); "
        "reconnect it and run again"
    )


def close_stream(stream: Any, timeout: float = 2.0) -> None:
    """Close a PortAudio stream without ever hanging shutdown (closing on a dead sound server can block)."""

    def close() -> None:
        with contextlib.suppress(Exception):
            stream.abort(ignore_errors=True)
        with contextlib.suppress(Exception):
            stream.close(ignore_errors=True)

    closer = threading.Thread(target=close, name="voicepipe-close-stream", daemon=True)
    closer.start()
    closer.join(timeout)
    if closer.is_alive():
        log.debug("closing the audio stream did not finish within %.1f s; leaving it", timeout)
