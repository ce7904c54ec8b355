"""voicepipe.assets against a local hub: first download, offline reuse with no request, resume, corruption, errors."""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from voicepipe.assets import fetch_file, fetch_snapshot
from voicepipe.errors import ModelLoadError

from .conftest import PIPER, PIPER_FILE, QWEN, qwen_files
from .server import HubServer

LLAMACPP_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def lfs_gets(hub: HubServer) -> list[str | None]:
    """The Range header of every download from the CDN (None: from the start)."""
    return [r.range for r in hub.requests if r.method == "GET" and r.path.startswith("/lfs/")]


def test_snapshot_downloads_what_the_engine_needs_then_reuses_it_without_a_request(hub: HubServer, offline_later):
    path = fetch_snapshot(QWEN, allow_patterns=LLAMACPP_PATTERNS, progress=False)
    source = qwen_files()
    got = {p.name for p in path.iterdir()}
    assert got == {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} | {
        "chat_template.jinja",
        "generation_config.json",
    }  # README.md and .gitattributes are not needed
    assert sha256(path / "model.safetensors") == sha256(source["model.safetensors"])
    assert (path / "chat_template.jinja").read_bytes() == source["chat_template.jinja"]
    assert len(lfs_gets(hub)) == 2  # model.safetensors and the 11 MB tokenizer.json come from the CDN
    commit = hub.repos[QWEN].commit
    api_calls = [r.path for r in hub.requests if r.path.startswith("/api/models/")]
    assert api_calls == [
        f"/api/models/{QWEN}/revision/main",  # which commit is main
        f"/api/models/{QWEN}/tree/{commit}",  # the file list
        f"/api/models/{QWEN}/revision/{commit}",  # the checksums, after the download
    ]

    hub.requests.clear()  # online again: the snapshot is current and verified, nothing is fetched or hashed
    assert fetch_snapshot(QWEN, allow_patterns=LLAMACPP_PATTERNS, progress=False) == path
    assert [r.path for r in hub.requests if "agent-harnesses" not in r.path] == [
        f"/api/models/{QWEN}/revision/main"  # "is main still that commit?"
    ]

    hub.requests.clear()
    offline_later()
    assert fetch_snapshot(QWEN, allow_patterns=LLAMACPP_PATTERNS, progress=False) == path
    assert hub.requests == []


def test_a_download_cut_midway_resumes_with_a_range_request(hub: HubServer):
    cut = 25_000_000  # huggingface_hub writes 10 MiB chunks: it resumes after the last whole one
    hub.cut_after(QWEN, "model.safetensors", cut)
    path = fetch_snapshot(QWEN, allow_patterns=["*.safetensors", "config.json"], progress=False)
    assert lfs_gets(hub) == [None, f"bytes={2 * 10 * 1024 * 1024}-"]
    assert sha256(path / "model.safetensors") == sha256(qwen_files()["model.safetensors"])  # whole


def test_a_corrupted_download_is_detected_and_fetched_again(hub: HubServer, caplog: pytest.LogCaptureFixture):
    hub.corrupt_once(PIPER, PIPER_FILE)
    with caplog.at_level(logging.WARNING):
        path = fetch_file(PIPER, PIPER_FILE, progress=False)
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [f"{PIPER_FILE} in {PIPER} is corrupted (sha256 mismatch); fetching it again"]
    assert len(lfs_gets(hub)) == 2
    assert sha256(path) == hub.repos[PIPER].files[PIPER_FILE].sha256


def test_a_cached_file_damaged_on_disk_is_fetched_again(hub: HubServer, caplog: pytest.LogCaptureFixture):
    path = fetch_file(PIPER, PIPER_FILE, progress=False)
    blob = path.resolve()
    blob.chmod(0o644)
    with open(blob, "r+b") as f:
        f.seek(1000)
        f.write(b"\0" * 16)
    hub.requests.clear()
    with caplog.at_level(logging.WARNING):
        again = fetch_file(PIPER, PIPER_FILE, progress=False)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        f"{PIPER_FILE} in {PIPER} is corrupted (sha256 mismatch); fetching it again"
    ]
    assert sha256(again) == hub.repos[PIPER].files[PIPER_FILE].sha256
    assert len(lfs_gets(hub)) == 1


def one_line(exc: pytest.ExceptionInfo[ModelLoadError]) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_a_missing_repo_file_or_revision_says_so_in_one_line(hub: HubServer):
    with pytest.raises(ModelLoadError) as exc:
        fetch_snapshot("nobody/no-such-model", progress=False)
    assert "the hub knows no repo 'nobody/no-such-model'" in one_line(exc) and "check the repo id" in one_line(exc)
    with pytest.raises(ModelLoadError) as exc:
        fetch_file(PIPER, "en/en_US/joe/medium/missing.onnx", field="model", progress=False)
    assert one_line(exc).startswith("model: rhasspy/piper-voices/en/en_US/joe/medium/missing.onnx: ")
    assert f"{PIPER} has no file 'en/en_US/joe/medium/missing.onnx'" in one_line(exc)
    with pytest.raises(ModelLoadError) as exc:
        fetch_snapshot(QWEN, revision="v9", progress=False)
    assert "has no revision 'v9'; check the branch, tag or commit" in one_line(exc)


def test_a_gated_repo_says_how_to_get_access(hub: HubServer):
    hub.add_repo("meta/gated-model", {"config.json": b"{}"}, gated=True)
    try:
        with pytest.raises(ModelLoadError) as exc:
            fetch_file("meta/gated-model", "config.json", progress=False)
        assert "gated repo; accept its terms" in one_line(exc) and "hf auth login" in one_line(exc)
    finally:
        del hub.repos["meta/gated-model"]


def test_offline_with_nothing_cached_names_the_fix(hub: HubServer, offline_later):
    offline_later()
    with pytest.raises(ModelLoadError) as exc:
        fetch_snapshot(QWEN, progress=False)
    assert one_line(exc).endswith(
        "not in the Hugging Face cache and HF_HUB_OFFLINE is set; download it while online "
        "(HF_HUB_OFFLINE=1 allows only the cache)"
    )
    assert hub.requests == []


def test_an_unreachable_hub_uses_the_cache_or_names_the_fix(
    hub: HubServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
):
    import socket

    from huggingface_hub import constants

    cached = fetch_file(PIPER, f"{PIPER_FILE}.json", progress=False)
    (tmp_path / "voicepipe-cache" / "hub-verified.json").unlink()  # not yet verified: checked when the hub is back

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    # huggingface_hub retries a refused connection with back-off (1+2+4+8+8 s); the waits are skipped here
    monkeypatch.setattr("huggingface_hub.utils._http.time", SimpleNamespace(sleep=lambda s: None, time=time.time))
    monkeypatch.setattr(constants, "ENDPOINT", dead)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
    assert fetch_file(PIPER, f"{PIPER_FILE}.json", progress=False) == cached
    with pytest.raises(ModelLoadError) as exc:
        fetch_file(PIPER, PIPER_FILE, progress=False)
    assert "the hub cannot be reached; download it while online" in one_line(exc)


def test_whisper_model_names_resolve_to_hub_repos_or_say_what_is_wrong(hub: HubServer):
    pytest.importorskip("faster_whisper")
    from voicepipe.asr.faster_whisper import FasterWhisperTranscriber

    engine = FasterWhisperTranscriber(
        FasterWhisperTranscriber.Config(model="tiny.en")
    )  # faster-whisper's size name for Systran/faster-whisper-tiny.en
    engine.load()
    assert engine.is_loaded and engine.memory_footprint > 0
    assert any(r.path.startswith("/api/models/Systran/faster-whisper-tiny.en/") for r in hub.requests)
    with pytest.raises(
        ModelLoadError, match="'tiny.xx' is neither a directory, a repo id .* nor a faster-whisper size"
    ):
        FasterWhisperTranscriber(FasterWhisperTranscriber.Config(model="tiny.xx")).load()
    with pytest.raises(ModelLoadError, match="asr.model: no such directory: ./models/whisper"):
        FasterWhisperTranscriber(FasterWhisperTranscriber.Config(model="./models/whisper")).load()


def test_locate_reads_every_model_setting_by_one_rule(hub: HubServer, tmp_path: Path):
    """Local paths as they are; owner/name a repo, owner/name/path a file in it; everything else one line."""
    from voicepipe.assets import locate

    voice = tmp_path / "voice.onnx"
    voice.write_bytes(b"onnx")
    assert locate(str(voice), field="model", want="file") == voice
    assert locate(tmp_path, field="asr.model", want="dir") == tmp_path
    with pytest.raises(ModelLoadError, match="model: .* is a directory; name the file inside it"):
        locate(str(tmp_path), field="model", want="file")
    with pytest.raises(ModelLoadError, match="asr.model: .* is a file; give the model's directory"):
        locate(str(voice), field="asr.model", want="dir")
    assert hub.requests == []  # nothing local asks the hub

    snapshot = locate(QWEN, field="llm.model", allow_patterns=LLAMACPP_PATTERNS, progress=False)
    assert snapshot.is_dir() and (snapshot / "config.json").is_file()
    file = locate(f"{PIPER}/{PIPER_FILE}", field="model", want="file", progress=False)
    assert file.is_file() and file.name == Path(PIPER_FILE).name

    hub.requests.clear()
    for ref, want, message in [
        (
            "./models/whisper",
            "dir",
            "asr.model: no such directory: ./models/whisper; give an existing path or a Hugging",
        ),
        ("~/voices/joe.onnx", "file", "model: no such file: ~/voices/joe.onnx"),
        ("models/qwen.gguf", "any", "llm.model: no such file or directory: models/qwen.gguf"),  # a file, not a repo
        ("just-a-name", "any", "llm.model: no such file or directory: just-a-name"),
        (QWEN, "file", "names a Hugging Face repo; name the file in it"),
        (f"{PIPER}/{PIPER_FILE}", "dir", f"names a file in a Hugging Face repo; give the repo id \\({PIPER}\\)"),
    ]:
        field = {"dir": "asr.model", "file": "model", "any": "llm.model"}[want]
        with pytest.raises(ModelLoadError, match=message):
            locate(ref, field=field, want=want, progress=False)
    assert hub.requests == []  # a mistyped path is never sent to the hub
