"""A private PulseAudio server with null sinks: real audio devices for tests on machines without a sound card.

``pulse_server()`` starts ``pulseaudio`` with its own runtime directory and socket (never a user's server: every
path lives in a fresh temporary directory and ``PULSE_SERVER`` points at its socket), creates one null sink per name
(each has a ``NAME.monitor`` source that records what is played into it), and stops the server on exit. While it
runs, the process environment points PulseAudio clients (PortAudio through ALSA's pulse plugin, ``pacat``) at it.

A test plays the "user" into one sink with ``play()`` while the pipeline's microphone records that sink's monitor,
and records the pipeline's speaker sink with ``record()``. Needs the apt packages ``pulseaudio pulseaudio-utils
libasound2-plugins libportaudio2`` (``scripts/install_system_deps.sh``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from voicepipe.errors import MissingDependencyError

__all__ = ["PulseServer", "Recording", "pulse_server", "reinitialize_portaudio"]

_ENV_KEYS = ("XDG_RUNTIME_DIR", "PULSE_RUNTIME_PATH", "PULSE_STATE_PATH", "PULSE_SERVER", "PULSE_SINK", "PULSE_SOURCE")


class Recording:
    """Records a PulseAudio source with ``parec`` (float32, mono) until ``stop()``, which returns the samples."""

    def __init__(self, proc: subprocess.Popen[bytes], rate: int) -> None:
        self._proc = proc
        self.rate = rate
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, name="parec-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        stream = self._proc.stdout  # Popen was given stdout=PIPE
        while stream is not None and (chunk := stream.read(4096)):
            self._chunks.append(chunk)

    def samples(self) -> np.ndarray:
        """What was recorded so far."""
        data = b"".join(self._chunks)
        return np.frombuffer(data[: len(data) // 4 * 4], dtype="<f4").astype(np.float32)

    def stop(self) -> np.ndarray:
        if self._proc.poll() is None:
            self._proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._proc.wait(timeout=5)
        self._reader.join(timeout=5)
        return self.samples()


class PulseServer:
    """One private ``pulseaudio`` daemon. Use ``pulse_server()`` rather than constructing it directly."""

    def __init__(
        self,
        root: Path,
        sinks: Sequence[str],
        rate: int = 48000,
        default_sink: str | None = None,
        default_source: str | None = None,
    ) -> None:
        self.root = root
        self.sinks = list(sinks)
        self.rate = rate
        self.default_sink = default_sink or (self.sinks[0] if self.sinks else None)
        self.default_source = default_source or (f"{self.sinks[0]}.monitor" if self.sinks else None)
        xdg = root / "xdg"
        self.env = {
            "XDG_RUNTIME_DIR": str(xdg),
            "PULSE_RUNTIME_PATH": str(xdg / "pulse"),
            "PULSE_STATE_PATH": str(root / "state"),
            "PULSE_SERVER": f"unix:{root / 'native'}",
        }
        self.log_path = root / "pulse.log"
        self.pid: int | None = None

    # -- lifecycle -------------------------------------------------------------------------------------------------

    def start(self, timeout: float = 20.0) -> None:
        exe = shutil.which("pulseaudio")
        if exe is None or shutil.which("pactl") is None:
            raise MissingDependencyError(
                "real-audio tests need PulseAudio; install it with: apt-get install pulseaudio pulseaudio-utils "
                "libasound2-plugins libportaudio2"
            )
        runtime = Path(self.env["PULSE_RUNTIME_PATH"])
        runtime.mkdir(parents=True, exist_ok=True)
        # after a kill the old pid file and socket stay behind (and a killed daemon can linger as a zombie that
        # pulseaudio takes for a running one): this directory is ours alone, so clear them
        (runtime / "pid").unlink(missing_ok=True)
        (self.root / "native").unlink(missing_ok=True)
        Path(self.env["PULSE_STATE_PATH"]).mkdir(parents=True, exist_ok=True)
        os.chmod(self.env["XDG_RUNTIME_DIR"], 0o700)
        args = [
            exe,
            "--daemonize=yes",
            "-n",  # no default.pa: only the modules below
            "--exit-idle-time=-1",
            "--disallow-exit=yes",
            "--use-pid-file=yes",
            f"--log-target=file:{self.log_path}",
            "-L",
            f"module-native-protocol-unix socket={self.root / 'native'} auth-anonymous=1",
        ]
        for sink in self.sinks:
            args += ["-L", f"module-null-sink sink_name={sink} rate={self.rate} channels=2"]
        args += ["-L", "module-always-sink"]
        if os.geteuid() == 0:
            args.append("--system=no")
        subprocess.run(args, env=self._child_env(), check=True, capture_output=True, timeout=timeout)
        deadline = time.monotonic() + timeout
        while True:
            probe = subprocess.run(["pactl", "info"], env=self._child_env(), capture_output=True, timeout=timeout)
            if probe.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"pulseaudio did not come up; see {self.log_path}")
            time.sleep(0.1)
        pid_file = Path(self.env["PULSE_RUNTIME_PATH"]) / "pid"
        self.pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        if self.default_sink:
            self.pactl("set-default-sink", self.default_sink)
        if self.default_source:
            self.pactl("set-default-source", self.default_source)

    def stop(self) -> None:
        """Stop the daemon (SIGTERM, then SIGKILL) and wait until it is gone."""
        if self.pid is None:
            return
        pid, self.pid = self.pid, None
        for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return
                time.sleep(0.05)

    def kill(self) -> None:
        """Kill the daemon at once (SIGKILL), as a device that disappears would."""
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while _alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            self.pid = None

    @property
    def running(self) -> bool:
        return self.pid is not None and _alive(self.pid)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def _child_env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
        env.update(self.env)
        env.update(extra)
        return env

    def client_env(self, *, sink: str | None = None, source: str | None = None) -> dict[str, str]:
        """Environment for a child process (e.g. ``voicepipe run``) that should use this server."""
        extra = {}
        if sink:
            extra["PULSE_SINK"] = sink
        if source:
            extra["PULSE_SOURCE"] = source
        return self._child_env(**extra)

    def pactl(self, *args: str) -> str:
        out = subprocess.run(["pactl", *args], env=self._child_env(), capture_output=True, text=True, timeout=20)
        if out.returncode != 0:
            raise RuntimeError(f"pactl {' '.join(args)} failed: {out.stderr.strip()}")
        return out.stdout

    def play(self, pcm: np.ndarray, rate: int, sink: str) -> subprocess.Popen[bytes]:
        """Start playing mono float32 ``pcm`` into ``sink`` in real time (``pacat``); returns the process."""
        proc = subprocess.Popen(
            [
                "pacat",
                "--playback",
                f"--device={sink}",
                "--format=float32le",
                f"--rate={rate}",
                "--channels=1",
                "--raw",
                "--latency-msec=50",
            ],
            env=self._child_env(),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        data = np.ascontiguousarray(pcm, dtype="<f4").tobytes()

        def feed() -> None:
            with contextlib.suppress(BrokenPipeError, OSError):
                proc.stdin.write(data)
                proc.stdin.close()

        threading.Thread(target=feed, name="pacat-feeder", daemon=True).start()
        return proc

    def room_tone(self, sink: str, rate: int = 16000) -> subprocess.Popen[bytes]:
        """Play endless silence into ``sink``: a null sink's monitor delivers audio only while something plays, but
        a real microphone never stops. Terminate the returned process to stop it."""
        return subprocess.Popen(
            [
                "pacat",
                "--playback",
                f"--device={sink}",
                "--format=float32le",
                f"--rate={rate}",
                "--channels=1",
                "--raw",
                "--latency-msec=50",
                "/dev/zero",
            ],
            env=self._child_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def record(self, source: str, rate: int = 16000) -> Recording:
        """Start recording ``source`` (e.g. ``"bot.monitor"``) as mono float32 at ``rate``."""
        proc = subprocess.Popen(
            [
                "parec",
                f"--device={source}",
                "--format=float32le",
                f"--rate={rate}",
                "--channels=1",
                "--raw",
                "--latency-msec=20",
            ],
            env=self._child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        return Recording(proc, rate)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child still answers signal 0; it is gone for our purposes
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][:1]
        return state != "Z"
    return True


def reinitialize_portaudio() -> None:
    """Make PortAudio (sounddevice) enumerate devices again, e.g. after a PulseAudio server started or stopped."""
    import sounddevice as sd

    sd._terminate()
    sd._initialize()


@contextlib.contextmanager
def pulse_server(
    sinks: Sequence[str] = ("user", "bot"),
    *,
    rate: int = 48000,
    default_sink: str | None = "bot",
    default_source: str | None = "user.monitor",
) -> Iterator[PulseServer]:
    """Run a private PulseAudio server with the given null sinks; this process's environment points at it meanwhile.

    By default the "user" speaks into sink ``user`` (whose monitor is the default source: the pipeline's mic) and the
    pipeline's speaker plays into the default sink ``bot`` (record ``bot.monitor`` to hear it).
    """
    saved = {k: os.environ.get(k) for k in _ENV_KEYS}
    with tempfile.TemporaryDirectory(prefix="voicepipe-pulse-") as tmp:
        server = PulseServer(Path(tmp), sinks, rate, default_sink, default_source)
        try:
            server.start()
            for key in _ENV_KEYS:
                os.environ.pop(key, None)
            os.environ.update(server.env)
            yield server
        finally:
            server.stop()
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
