"""Choosing devices by name or index, and the one-line errors when a device does not exist."""

from __future__ import annotations

import pytest

from voicepipe.audio.device import MicConfig, MicSource, SpeakerConfig, SpeakerSink
from voicepipe.audio.portaudio import resolve_device
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


async def test_a_reply_that_fails_midway_still_ends_its_turn(room):
    """Without an end of reply (the LLM failed), the speaker must not stay "speaking": the echo guard would mute the
    microphone for good."""
    import numpy as np

    from voicepipe.frames import BotSpeakingFrame, EndOfTurnFrame, ErrorFrame, TTSAudioFrame
    from voicepipe.testing.harness import Pause, run_pipeline_collect

    tone = (0.1 * np.sin(np.arange(2400) / 24000 * 2 * np.pi * 220)).astype(np.float32)
    frames = [
        TTSAudioFrame(pcm=tone, sample_rate=24000, chunk_text="Hello there.", char_end=12, turn_id=1),
        ErrorFrame(message="llm: engine failed", stage="llm", turn_id=1),
        Pause(4.0),  # the turn ends ~1 s after its audio has played; leave room on a loaded machine
    ]
    collector, _ = await run_pipeline_collect([SpeakerSink(SpeakerConfig(device="pulse"), name="speaker")], frames)
    speaking = [f.speaking for n, f in collector.upstream if n == "speaker" and isinstance(f, BotSpeakingFrame)]
    assert speaking == [True, False]
    assert [f.turn_id for f in collector.of_type(EndOfTurnFrame)] == [1]
