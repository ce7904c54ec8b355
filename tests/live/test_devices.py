"""Choosing devices by name or index, and the one-line errors when a device does not exist."""

from __future__ import annotations

import pytest

from voicepipe.audio.device import MicConfig, MicSource, SpeakerConfig, SpeakerSink, resolve_device
from voicepipe.errors import UserError


def test_devices_by_index_exact_and_partial_name(room):
    import sounddevice as sd

    names = [d["name"] for d in sd.query_devices()]
    pulse_index = names.index("pulse")
    assert resolve_device(sd, "pulse", "input", "mic.device") == pulse_index
    assert resolve_device(sd, pulse_index, "output", "speaker.device") == pulse_index
    assert resolve_device(sd, "PULS", "input", "mic.device") == pulse_index
    assert resolve_device(sd, None, "output", "speaker.device") == sd.default.device[1]


@pytest.mark.parametrize("spec", ["no such microphone", 999])
async def test_unknown_device_is_a_user_error_naming_the_field_and_the_choices(room, spec):
    mic = MicSource(MicConfig(device=spec), name="mic")
    with pytest.raises(UserError) as err:
        await mic.setup()
    message = str(err.value)
    assert message.startswith("mic.device: ") and "'pulse'" in message and "\n" not in message


async def test_streams_open_at_the_devices_own_rate(room):
    import sounddevice as sd

    own = int(sd.query_devices("pulse")["default_samplerate"])
    mic, speaker = MicSource(MicConfig(device="pulse")), SpeakerSink(SpeakerConfig(device="pulse"))
    await mic.setup()
    await speaker.setup()
    try:
        assert mic.device_rate == speaker.device_rate == own != 16000  # the mic resamples to the pipeline's 16 kHz
    finally:
        await mic.cleanup()
        await speaker.cleanup()
