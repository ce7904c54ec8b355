"""The reliability catalogue: what a user or a machine throws at voicepipe, one case per finding of issue 15.

Each case runs the real CLI in a fresh process on real files (FIFOs, device nodes made with ``mknod`` in a temporary
directory, symlinks, a small tmpfs for a full disk) and asserts what the user is promised: no file destroyed, one
line and the documented exit code for every failure, nothing half-written left behind. Add new findings here.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .conftest import cli, fake_pipeline, one_line, partials, start_cli, tone_bursts, wait_for

PREVIOUS = b"previous contents, which must survive"


@contextlib.contextmanager
def small_tmpfs(where: Path, size: str, *options: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``where`` (needs root; skips the case otherwise)."""
    where.mkdir()
    opts = ",".join((f"size={size}", *options))
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _device(path: Path, major: int, minor: int) -> Path:
    """A character device node like /dev/null (1, 3) or /dev/full (1, 7), in a temporary directory."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except PermissionError:
        pytest.skip("making device nodes needs root (CAP_MKNOD)")
    return path


def _run(pipeline: Path, wav: Path, *more: str) -> subprocess.CompletedProcess:
    return cli("run", str(pipeline), "--quiet", "--input", str(wav), *more, cwd=pipeline.parent)


# -- 1 -----------------------------------------------------------------------------------------------------------------


def test_row01_output_onto_a_fifo_a_device_or_a_symlink_never_replaces_it(tmp_path, bursts_wav):
    pipeline = fake_pipeline(tmp_path)

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()), daemon=True)
    reader.start()
    result = _run(pipeline, bursts_wav, "--output", str(fifo))
    assert result.returncode == 0, result.stderr
    reader.join(timeout=30)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced"
    assert received and received[0][:4] == b"RIFF" and len(received[0]) > 10_000, "the reader got no WAV"

    unread = tmp_path / "unread"  # a FIFO nobody reads: one line, not a hang
    os.mkfifo(unread)
    result = _run(pipeline, bursts_wav, "--output", str(unread))
    assert result.returncode == 1 and "no program is reading" in one_line(result)
    assert stat.S_ISFIFO(os.lstat(unread).st_mode)

    null = _device(tmp_path / "null", 1, 3)
    result = _run(pipeline, bursts_wav, "--output", str(null))
    assert result.returncode == 0, result.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode), "the device node was replaced"

    real = tmp_path / "real.wav"
    real.write_bytes(PREVIOUS)
    link = tmp_path / "link.wav"
    link.symlink_to(real.name)
    result = _run(pipeline, bursts_wav, "--output", str(link))
    assert result.returncode == 0, result.stderr
    assert link.is_symlink() and os.readlink(link) == real.name, "the symlink was replaced"
    assert sf.info(str(real)).frames > 0, "the symlink's target was not written"
    assert not partials(tmp_path)


# -- 2 -----------------------------------------------------------------------------------------------------------------

BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
stages: [{type: fake-vad}]
"""


def _limit_memory() -> None:  # runs in the child: 2 GiB of address space is plenty to validate a pipeline
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


def test_row02_billion_laughs_yaml_is_rejected_in_one_line_with_little_memory(tmp_path):
    path = tmp_path / "laughs.yaml"
    path.write_text(BILLION_LAUGHS)
    result = subprocess.run(
        [sys.executable, "-m", "voicepipe.cli.main", "validate", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={**os.environ, "OPENBLAS_NUM_THREADS": "1"},  # BLAS thread buffers must not count against the cap
        preexec_fn=_limit_memory,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "aliases" in one_line(result)

    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("x: &x [*x]\nstages: [{type: fake-vad}]\n")
    result = cli("validate", str(cyclic), cwd=tmp_path)
    assert result.returncode == 2 and "aliases" in one_line(result)

    fine = tmp_path / "fine.yaml"  # a few aliases, as people use them, still work
    fine.write_text("stages:\n  - &vad {type: fake-vad, threshold: 0.05}\n  - {<<: *vad, name: vad2}\n")
    result = cli("validate", str(fine), cwd=tmp_path)
    assert result.returncode == 0, result.stderr


# -- 3 -----------------------------------------------------------------------------------------------------------------


def test_row03_failed_writes_exit_1_in_one_line_and_keep_the_previous_file(tmp_path, bursts_wav):
    long_audio = "    seconds_per_char: 0.1\n"  # about 350 KB of WAV per turn
    pipeline = fake_pipeline(tmp_path, tts=long_audio)

    # the disk fills up while the reply is written
    with small_tmpfs(tmp_path / "small", "200k") as small:
        out = small / "out.wav"
        out.write_bytes(PREVIOUS)
        result = _run(pipeline, bursts_wav, "--output", str(out))
        assert result.returncode == 1, result.stderr
        assert one_line(result).startswith("error: ")
        assert out.read_bytes() == PREVIOUS and not partials(small)

    # a device that is always full (like /dev/full)
    full = _device(tmp_path / "full", 1, 7)
    result = _run(pipeline, bursts_wav, "--output", str(full))
    assert result.returncode == 1 and "No space left" in one_line(result)
    assert stat.S_ISCHR(os.lstat(full).st_mode)

    # the output directory is deleted while the run writes into it
    outdir = tmp_path / "outdir"
    outdir.mkdir()
    proc = start_cli("run", str(pipeline), "--quiet", "--realtime", "--input", str(bursts_wav), "--output",
                     str(outdir / "out.wav"), cwd=tmp_path)  # fmt: skip
    wait_for(lambda: bool(partials(outdir)), proc, "the first audio")
    shutil.rmtree(outdir)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1, stderr
    assert "removed" in one_line(stderr)

    # a subtype soundfile does not know fails validation, before any run
    bogus = fake_pipeline(tmp_path, sink=tmp_path / "o.wav")
    bogus.write_text(bogus.read_text() + "    subtype: bogus\n")
    result = cli("validate", str(bogus), cwd=tmp_path)
    assert result.returncode == 2 and "subtype" in one_line(result)

    # two runs writing the same --output at once: each its own temporary file, one complete result wins
    runs = []
    for i, text in enumerate(("short", "a much longer question than the other one")):
        runs.append(fake_pipeline(tmp_path, tts=long_audio).rename(tmp_path / f"p{i}.yaml"))
        runs[-1].write_text(runs[-1].read_text().replace("what time is it", text))
    lengths = set()
    for i, p in enumerate(runs):  # each alone first, for the length of its complete output
        assert _run(p, bursts_wav, "--output", str(tmp_path / f"alone{i}.wav")).returncode == 0
        lengths.add(sf.info(str(tmp_path / f"alone{i}.wav")).frames)
    shared = tmp_path / "shared.wav"
    procs = [
        start_cli(
            "run", str(p), "--quiet", "--realtime", "--input", str(bursts_wav), "--output", str(shared), cwd=tmp_path
        )  # fmt: skip
        for p in runs
    ]
    for proc in procs:
        _, stderr = proc.communicate(timeout=120)
        assert proc.returncode == 0 and not stderr.strip(), stderr
    assert sf.info(str(shared)).frames in lengths and not partials(tmp_path)


# -- 4 -----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_row04_sigterm_and_sighup_finish_like_ctrl_c(tmp_path, bursts_wav, sig):
    pipeline = fake_pipeline(tmp_path, tts="    seconds_per_char: 0.1\n")
    out, metrics = tmp_path / "out.wav", tmp_path / "m.jsonl"
    out.write_bytes(PREVIOUS)
    proc = start_cli("run", str(pipeline), "--quiet", "--realtime", "--input", str(bursts_wav), "--output", str(out),
                     "--metrics", str(metrics), cwd=tmp_path)  # fmt: skip

    def first_turn_done() -> bool:
        files = [metrics, *tmp_path.glob(".m.jsonl*.partial")]
        return any(f.exists() and f.stat().st_size > 0 for f in files)

    wait_for(first_turn_done, proc, "the first turn's metrics")
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped" in stderr
    assert sf.info(str(out)).frames > 0, "the audio so far was not moved into place"
    assert len(metrics.read_text().splitlines()) >= 1, "metrics were not flushed"
    assert not partials(tmp_path)


# -- 7 -----------------------------------------------------------------------------------------------------------------


def test_row07_say_with_nothing_to_say_leaves_the_output_untouched(tmp_path):
    from tests.support.tts_assets import piper_joe_model_path

    out = tmp_path / "reply.wav"
    out.write_bytes(PREVIOUS)
    result = cli("say", "🙂 ***", "--engine", "piper", "--model", str(piper_joe_model_path()), "-o", str(out),
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 2 and "nothing to say" in one_line(result)
    assert out.read_bytes() == PREVIOUS and not partials(tmp_path)


# -- 8 -----------------------------------------------------------------------------------------------------------------


def test_row08_metrics_start_empty_are_checked_early_and_never_overwrite_the_audio(tmp_path, bursts_wav):
    pipeline = fake_pipeline(tmp_path)
    metrics = tmp_path / "m.jsonl"

    metrics.write_text('{"turn": 1, "transcript": "from an earlier run"}\n')
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(32000, dtype=np.float32), 16000)
    result = _run(pipeline, silence, "--output", str(tmp_path / "o.wav"), "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    assert metrics.read_text() == "", "zero turns must leave an empty metrics file"

    result = _run(pipeline, bursts_wav, "--output", str(tmp_path / "o.wav"), "--metrics", str(tmp_path))
    assert result.returncode == 2 and "is a directory" in one_line(result)

    with small_tmpfs(tmp_path / "ro", "64k", "ro") as readonly:
        result = _run(pipeline, bursts_wav, "--metrics", str(readonly / "m.jsonl"), "--output", str(tmp_path / "o.wav"))
        assert result.returncode == 2 and "not writable" in one_line(result)

    same = tmp_path / "same.wav"
    same.write_bytes(PREVIOUS)
    result = _run(pipeline, bursts_wav, "--output", str(same), "--metrics", str(same))
    assert result.returncode == 2 and "--metrics" in one_line(result)
    assert same.read_bytes() == PREVIOUS


# -- 9 -----------------------------------------------------------------------------------------------------------------

PLUGINS = """\
from voicepipe.frames import TranscriptFrame
from voicepipe.stage import Stage

class FailsSetup(Stage):
    async def setup(self):
        raise RuntimeError("cannot open the gizmo")

class FailsInit(Stage):
    def __init__(self, config=None, *, name=None):
        super().__init__(config, name=name)
        raise ValueError("bad gizmo settings")

class Exits(Stage):
    async def process(self, frame):
        if isinstance(frame, TranscriptFrame) and frame.turn_id == 1:
            raise SystemExit(3)
        await self.push(frame)
"""


def test_row09_user_mistakes_and_broken_plugins_give_one_line_not_a_traceback(tmp_path, bursts_wav):
    (tmp_path / "gizmos.py").write_text(PLUGINS)
    (tmp_path / "bad_syntax.py").write_text("def broken(:\n    pass\n")
    (tmp_path / "bad_import.py").write_text("raise RuntimeError('plugin exploded at import')\n")
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")]))}

    def validate(stage_yaml: str) -> subprocess.CompletedProcess:
        path = tmp_path / "v.yaml"
        path.write_text(f"stages:\n  - type: fake-vad\n{stage_yaml}")
        return cli("validate", str(path), cwd=tmp_path, env=env)

    for stage_yaml, expected in [
        ('  - type: "..:X"\n', "package.module:Class"),
        ("  - type: bad_syntax:Stage\n", "SyntaxError"),
        ("  - type: bad_import:Stage\n", "plugin exploded at import"),
        ("  - type: llm\n    engine: llamacpp\n    bogus: 1\n", "v.yaml:5: stages[1].bogus: unknown field"),
        (
            "  - type: llm\n    engine: llamacpp\n    n_ctx: big\n",
            "v.yaml:5: stages[1].n_ctx: Input should be a valid integer",
        ),
        ("  - type: llm\n    backend: llamacpp\n", "v.yaml:4: stages[1].backend: 'backend:' is now 'engine:'"),
    ]:
        result = validate(stage_yaml)
        assert result.returncode == 2, (stage_yaml, result.stderr)
        assert expected in one_line(result), stage_yaml

    pipeline = fake_pipeline(tmp_path)
    out = tmp_path / "out.wav"
    for value in ("nan", "inf"):
        result = _run(pipeline, bursts_wav, "--output", str(out), "--jetsam-mb", value)
        assert result.returncode == 2 and "--jetsam-mb" in one_line(result)

    for cls, expected in [("FailsSetup", "cannot open the gizmo"), ("FailsInit", "bad gizmo settings")]:
        pipeline = fake_pipeline(tmp_path, extra=f"  - type: gizmos:{cls}\n    name: gizmo\n")
        result = cli("run", str(pipeline), "--quiet", "--input", str(bursts_wav), "--output", str(out),
                     cwd=tmp_path, env=env)  # fmt: skip
        assert result.returncode == 2, result.stderr
        line = one_line(result)
        assert "'gizmo'" in line and expected in line

    pipeline = fake_pipeline(tmp_path, extra="  - type: gizmos:Exits\n")
    metrics = tmp_path / "m.jsonl"
    result = cli("run", str(pipeline), "--quiet", "--input", str(bursts_wav), "--output", str(out), "--metrics",
                 str(metrics), cwd=tmp_path, env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr
    turns = {t["turn"]: t for t in map(json.loads, metrics.read_text().splitlines())}
    assert "SystemExit" in turns[1]["errors"][0] and turns[2]["completed"], turns
    assert sf.info(str(out)).frames > 0, "the run ended without its WAV"


# -- 10 ----------------------------------------------------------------------------------------------------------------


def test_row10_input_hygiene(tmp_path, bursts_wav):
    from tests.support.whisper_assets import whisper_tiny_en_dir
    from voicepipe.text.chunker import SentenceChunker
    from voicepipe.tts.normalize import normalize_text

    # NaN and infinite samples: replaced, said once, and no turn lost
    audio = tone_bursts()
    audio[9000:9010] = np.nan
    audio[45000:45005] = np.inf
    odd = tmp_path / "nan.wav"
    sf.write(odd, audio, 16000, subtype="FLOAT")
    pipeline = fake_pipeline(tmp_path)
    metrics = tmp_path / "m.jsonl"
    result = _run(pipeline, odd, "--output", str(tmp_path / "o.wav"), "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("WARNING") == 1 and "NaN" in result.stderr, result.stderr  # said once
    assert "RuntimeWarning" not in result.stderr and "Traceback" not in result.stderr
    assert [t["completed"] for t in map(json.loads, metrics.read_text().splitlines())] == [True, True]

    # control characters in a reply: neither shown raw nor spoken
    reply = r'"\x1b[31mRed alert\x1b[0m now, \x1b]0;owned\x07please."'
    pipeline = fake_pipeline(tmp_path, reply=reply)
    result = cli("run", str(pipeline), "--input", str(tmp_path / "in.wav"), "--output", str(tmp_path / "o.wav"),
                 cwd=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout and "Red alert now" in result.stdout
    chunker = SentenceChunker()
    raw = "\x1b[31mRed alert\x1b[0m now."
    spoken = [normalize_text(c) for piece in raw for c in chunker.push(piece)] + [
        normalize_text(c) for c in chunker.flush()
    ]
    assert " ".join(spoken) == "Red alert now."

    # transcribing silence without a VAD prints nothing
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(16000 * 30, dtype=np.float32), 16000)
    result = cli("transcribe", str(silence), "--vad", "none", "--model", str(whisper_tiny_en_dir()), cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr

    # --output's suffix picks the format, or is refused
    pipeline = fake_pipeline(tmp_path)
    flac = tmp_path / "reply.flac"
    assert _run(pipeline, tmp_path / "in.wav", "--output", str(flac)).returncode == 0
    assert sf.info(str(flac)).format == "FLAC"
    result = _run(pipeline, tmp_path / "in.wav", "--output", str(tmp_path / "reply.xyz"))
    assert result.returncode == 2 and ".xyz" in one_line(result)

    # a scripted reply with braces
    pipeline = fake_pipeline(tmp_path, reply='"A set looks like {} in Python."')
    result = _run(pipeline, tmp_path / "in.wav", "--output", str(tmp_path / "o.wav"), "--metrics", str(metrics))
    assert result.returncode == 0, result.stderr
    turns = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert turns and all(t["completed"] and "{}" in t["reply"] for t in turns), turns

    # phone numbers are read digit by digit
    assert normalize_text("Call 555-1234.") == "Call five five five, one two three four."
