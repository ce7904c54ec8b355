"""``voicepipe devices``: the audio devices PortAudio sees (works, and says why, when there are none)."""

from __future__ import annotations

import argparse

HELP = "list audio input and output devices"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    try:
        import sounddevice as sd
    except ImportError as exc:
        print(f"no audio devices: sounddevice is not installed ({exc}); pip install 'voicepipe[audio]'")
        return 0
    except OSError as exc:
        print(
            f"no audio devices: the PortAudio library is missing ({exc}); install it (Debian: apt install libportaudio2)"
        )
        return 0
    try:
        devices = list(sd.query_devices())
        default_in, default_out = sd.default.device
    except Exception as exc:  # PortAudio reports a missing audio system in several ways
        print(f"no audio devices: {exc}")
        return 0
    if args.json:
        import json

        print(
            json.dumps(
                [
                    {
                        "index": i,
                        **{
                            k: d[k] for k in ("name", "max_input_channels", "max_output_channels", "default_samplerate")
                        },
                    }
                    for i, d in enumerate(devices)
                ]
            )
        )
        return 0
    if not devices:
        print("no audio devices found (is a sound card or a PulseAudio/PipeWire server available?)")
        return 0
    for i, d in enumerate(devices):
        marks = ("<" if i == default_in else " ") + (">" if i == default_out else " ")
        print(
            f"{marks} {i:2d} {d['name']}  (in {d['max_input_channels']}, out {d['max_output_channels']}, "
            f"{int(d['default_samplerate'])} Hz)"
        )
    print("< default input, > default output; choose one in pipeline.yaml by name or index")
    return 0
