"""Microphone source and speaker sink on sounddevice (PortAudio): entry points ``mic`` and ``speaker``.

Each opens its own stream (separate input and output streams: a duplex stream garbled audio under CPU load here) at
a rate the device supports and resamples with soxr streams to and from the pipeline's rates (PortAudio rejects
16 kHz on many PulseAudio/PipeWire devices). PortAudio calls back on its own thread; the callbacks only copy samples
and hand them to the event loop with ``loop.call_soon_threadsafe``. Streams are opened in ``setup()``.

A device that disappears (unplugged, sound server gone) ends its stream: the stage then sends a fatal ``ErrorFrame``
with one line saying which device and what to do, and the pipeline stops cleanly.

The speaker counts what the device actually played (from PortAudio's DAC times), so the ``PlaybackFrame``s it sends
upstream (progress while a reply plays, and a final one) hold only the text the user heard, also after a barge-in; it sends ``BotSpeakingFrame`` upstream when a
reply starts and stops playing (the turn-taking stage gates the mic on it) and ``EndOfTurnFrame`` downstream once a
turn's audio is out.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field

from voicepipe._optional import require
from voicepipe.audio.convert import to_mono
from voicepipe.audio.playback import HeardText
from voicepipe.errors import UserError
from voicepipe.frames import (
    AudioFrame,
    BotSpeakingFrame,
    CancelFrame,
    EndFrame,
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    InterruptionFrame,
    LLMResponseEndFrame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction, Sink, Source, StageConfig

__all__ = [
    "MicConfig",
    "MicSource",
    "SpeakerConfig",
    "SpeakerSink",
    "DeviceLostError",
    "resolve_device",
    "capture_native_stderr",
]

log = logging.getLogger("voicepipe.audio.device")

Latency = Literal["low", "high"] | float
#: PortAudio's "high" latency is only ~35 ms on PulseAudio's ALSA device; under CPU load such a buffer underruns and
#: the stream stalls for a second or more (measured here), so both stages default to 100 ms.
_FALLBACK_RATES = (48000, 44100, 32000, 24000, 16000)


class DeviceLostError(RuntimeError):
    """The audio device stopped delivering or taking audio (unplugged, or its sound server went away)."""


def _sounddevice() -> Any:
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


def _pick_rate(sd: Any, device: int, kind: Literal["input", "output"], wanted: int | None, field: str) -> int:
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


def _lost_message(kind: str, device_name: str) -> str:
    return (
        f"the audio {kind} device {device_name!r} disappeared (unplugged, or its sound server stopped); "
        "reconnect it and run again"
    )


def _close_stream(stream: Any, timeout: float = 2.0) -> None:
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


# -- microphone --------------------------------------------------------------------------------------------------------


class MicConfig(StageConfig):
    """``mic`` stage settings (pipeline.yaml)."""

    device: str | int | None = Field(None, description="Input device: index, name or part of a name; default: system")
    sample_rate: int = Field(16000, ge=8000, le=192000, description="Rate of the audio frames sent downstream.")
    device_rate: int | None = Field(
        None, ge=8000, le=192000, description="Rate to open the device at; default: its own"
    )
    block_ms: int = Field(20, ge=5, le=200, description="Duration of each audio frame sent downstream.")
    latency: Latency = Field(0.1, description="PortAudio buffer: seconds, or 'low'/'high' (the device's own figures).")


class MicSource(Source):
    """Records the microphone and sends mono ``AudioFrame``s at ``sample_rate`` (timestamp = arrival time)."""

    Config = MicConfig
    config: MicConfig

    def __init__(self, config: MicConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._stream: Any = None
        self._queue: asyncio.Queue[tuple[np.ndarray, float] | None] | None = None
        self._closing = False
        self.device_name = ""
        self.device_rate = 0

    async def setup(self) -> None:
        sd = _sounddevice()
        device = resolve_device(sd, self.config.device, "input", f"{self.name}.device")
        self.device_rate = _pick_rate(sd, device, "input", self.config.device_rate, f"{self.name}.device_rate")
        self.device_name = sd.query_devices(device)["name"]
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[np.ndarray, float] | None] = asyncio.Queue()
        self._queue = queue

        def deliver(item: tuple[np.ndarray, float] | None) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed while PortAudio was still calling
                loop.call_soon_threadsafe(queue.put_nowait, item)

        def callback(indata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                log.debug("%s: input status %s", self.name, status)
            deliver((to_mono(indata).astype(np.float32, copy=True), time.monotonic()))

        def finished() -> None:
            if not self._closing:
                deliver(None)

        try:
            self._stream = sd.InputStream(
                device=device,
                samplerate=self.device_rate,
                channels=1,
                dtype="float32",
                latency=self.config.latency,
                callback=callback,
                finished_callback=finished,
            )
        except Exception as exc:
            raise UserError(f"{self.name}.device: cannot open input device {self.device_name!r}: {exc}") from exc
        log.info("%s: %s at %d Hz -> %d Hz", self.name, self.device_name, self.device_rate, self.config.sample_rate)

    async def frames(self) -> AsyncIterator[Frame]:
        if self._stream is None or self._queue is None:
            await self.setup()
        import soxr

        rate = self.config.sample_rate
        block = max(1, rate * self.config.block_ms // 1000)
        resampler = None
        if self.device_rate != rate:
            resampler = soxr.ResampleStream(self.device_rate, rate, 1, dtype="float32", quality="HQ")
        pending: list[np.ndarray] = []
        pending_len = 0
        self._stream.start()
        while True:
            item = await self._queue.get()
            if item is None:
                raise DeviceLostError(_lost_message("input", self.device_name))  # the pipeline names the stage
            pcm, arrived = item
            if resampler is not None:
                pcm = resampler.resample_chunk(pcm)
            pending.append(pcm)
            pending_len += len(pcm)
            if pending_len < block:
                continue
            joined = np.concatenate(pending)
            whole = len(joined) // block * block
            for offset in range(0, whole, block):
                # every block of one callback arrived at the same moment: the callback's time
                yield AudioFrame(pcm=joined[offset : offset + block], sample_rate=rate, timestamp=arrived)
            pending = [joined[whole:]]
            pending_len = len(pending[0])

    async def cleanup(self) -> None:
        self._closing = True
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await asyncio.to_thread(_close_stream, stream)


# -- speaker -----------------------------------------------------------------------------------------------------------


class SpeakerConfig(StageConfig):
    """``speaker`` stage settings (pipeline.yaml)."""

    device: str | int | None = Field(None, description="Output device: index, name or part of a name; default: system")
    device_rate: int | None = Field(
        None, ge=8000, le=192000, description="Rate to open the device at; default: its own"
    )
    latency: Latency = Field(0.1, description="PortAudio buffer: seconds, or 'low'/'high' (the device's own figures).")
    buffer_s: float = Field(2.0, gt=0.1, le=60.0, description="Audio queued ahead of the device at most.")


@dataclass
class _Pending:
    """A block handed to the device, not yet heard: it is heard once the played position passes ``end``."""

    end: int
    frame: TTSAudioFrame


class _OutputBuffer:
    """Samples waiting for the device, shared with PortAudio's callback thread (hence the lock).

    Positions count reply samples only (silence the callback fills in when the buffer runs dry is not counted), so
    ``written`` is where the next block will end up and ``consumed`` how far the device has taken audio.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.blocks: collections.deque[np.ndarray] = collections.deque()
        self.offset = 0  # samples of blocks[0] already consumed
        self.written = 0
        self.consumed = 0
        # (reply position after a callback, stream time at which that position's last sample reaches the DAC)
        self.dac_marks: collections.deque[tuple[int, float]] = collections.deque(maxlen=256)

    def append(self, pcm: np.ndarray) -> None:
        with self.lock:
            self.blocks.append(pcm)
            self.written += len(pcm)

    def clear(self) -> int:
        """Drop everything not yet consumed; returns the position the reply stops at."""
        with self.lock:
            self.blocks.clear()
            self.offset = 0
            self.written = self.consumed
            return self.consumed

    @property
    def queued(self) -> int:
        return self.written - self.consumed

    def fill(self, out: np.ndarray, dac_start: float, rate: int) -> None:
        """Called by PortAudio's thread: copy queued samples into ``out`` (silence after them).

        ``dac_start`` is the stream time at which ``out[0]`` reaches the DAC.
        """
        n = len(out)
        filled = 0
        with self.lock:
            while filled < n and self.blocks:
                head = self.blocks[0]
                take = min(n - filled, len(head) - self.offset)
                out[filled : filled + take] = head[self.offset : self.offset + take]
                filled += take
                self.offset += take
                if self.offset >= len(head):
                    self.blocks.popleft()
                    self.offset = 0
            self.consumed += filled
            if filled:
                self.dac_marks.append((self.consumed, dac_start + filled / rate))
        out[filled:] = 0.0

    def played(self, now: float) -> int:
        """Reply position the device has played by stream time ``now``."""
        with self.lock:
            done = 0
            for position, at in self.dac_marks:
                if at <= now:
                    done = position
                else:
                    break
            return done


class SpeakerSink(Sink):
    """Plays ``TTSAudioFrame``s on an output device and reports what was heard (see the module docstring)."""

    Config = SpeakerConfig
    config: SpeakerConfig

    def __init__(self, config: SpeakerConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._stream: Any = None
        self._buffer = _OutputBuffer()
        self._heard = HeardText()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._resampler: Any = None
        self._resample_from = 0
        self._turn = 0  # turn whose audio is playing or queued
        self._speaking = False
        self._ended_turns: set[int] = set()
        self._lost: asyncio.Event | None = None  # created in setup, on the running loop
        self._lost_reported = False
        self._closing = False
        self._reported = ""  # heard text last reported upstream for the current turn
        self._ticker: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()
        self.device_name = ""
        self.device_rate = 0
        self.samples_played = 0

    # -- lifecycle -------------------------------------------------------------------------------------------------

    async def setup(self) -> None:
        sd = _sounddevice()
        device = resolve_device(sd, self.config.device, "output", f"{self.name}.device")
        self.device_rate = _pick_rate(sd, device, "output", self.config.device_rate, f"{self.name}.device_rate")
        self.device_name = sd.query_devices(device)["name"]
        loop = asyncio.get_running_loop()
        self._lost = asyncio.Event()
        buffer = self._buffer
        rate = self.device_rate
        latency = 0.1  # replaced by the stream's own figure once it is open

        def callback(outdata: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
            if status:
                log.debug("%s: output status %s", self.name, status)
            # some host APIs report no DAC time; then the buffer plays about one stream latency from now
            dac = time_info.outputBufferDacTime or (time_info.currentTime + latency)
            buffer.fill(outdata[:, 0], dac, rate)
            if outdata.shape[1] > 1:
                outdata[:, 1:] = outdata[:, :1]

        def finished() -> None:
            if not self._closing:
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._device_lost)

        try:
            self._stream = sd.OutputStream(
                device=device,
                samplerate=rate,
                channels=1,
                dtype="float32",
                latency=self.config.latency,
                callback=callback,
                finished_callback=finished,
            )
            latency = float(self._stream.latency)
            self._stream.start()
        except Exception as exc:
            raise UserError(f"{self.name}.device: cannot open output device {self.device_name!r}: {exc}") from exc
        self._ticker = loop.create_task(self._report_progress(), name=f"{self.name}:progress")
        log.info("%s: %s at %d Hz", self.name, self.device_name, rate)

    async def cleanup(self) -> None:
        self._closing = True
        tasks = [*self._background, *([self._ticker] if self._ticker is not None else [])]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._ticker = None
        if self._stream is not None:
            stream, self._stream = self._stream, None
            await asyncio.to_thread(_close_stream, stream)

    async def _report_progress(self, every: float = 0.04) -> None:
        """While a reply plays, tell upstream what has been heard so far (``PlaybackFrame(finished=False)``).

        The LLM stage applies the latest report when an interruption reaches it, which happens before the
        interruption reaches this sink, so the report must already be there.
        """
        while True:
            await asyncio.sleep(every)
            if self._pending:
                self._update_heard()
            turn = self._turn
            if not turn or turn in self._ended_turns or self._heard.turn_id != turn:
                continue
            text = self._heard.text
            if text != self._reported:
                self._reported = text
                await self.push(PlaybackFrame(text=text, finished=False, turn_id=turn), Direction.UPSTREAM)

    def _device_lost(self) -> None:
        if self._lost is not None:
            self._lost.set()
        if not self._lost_reported:
            self._lost_reported = True
            message = f"{self.name}: {_lost_message('output', self.device_name)}"
            error = ErrorFrame(message=message, stage=self.name, fatal=True, turn_id=self._turn)
            task = asyncio.get_running_loop().create_task(self.push(error))
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    # -- position --------------------------------------------------------------------------------------------------

    def _played_position(self) -> int:
        if self._stream is None:
            return self._buffer.consumed
        try:
            now = self._stream.time
        except Exception:
            return self._buffer.consumed
        return self._buffer.played(now)

    def _update_heard(self) -> None:
        played = self._played_position()
        while self._pending and self._pending[0].end <= played:
            self._heard.played(self._pending.popleft().frame)

    async def _wait_until(self, condition: Any, poll: float = 0.01) -> None:
        """Wait (polling the play position) until ``condition()``; stop waiting if the device is lost."""
        while not condition():
            if self._lost is not None and self._lost.is_set():
                return
            await asyncio.sleep(poll)
            self._update_heard()

    # -- frames ----------------------------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, TTSAudioFrame):
            await self._play(frame)
            return
        if isinstance(frame, LLMResponseEndFrame):
            await self._finish_turn(frame)
            return
        if isinstance(frame, InterruptionFrame):
            await self._interrupt()
        elif isinstance(frame, CancelFrame):
            self._buffer.clear()
        elif isinstance(frame, EndFrame):
            await self._wait_until(lambda: self._played_position() >= self._buffer.written)
        elif isinstance(frame, ErrorFrame) and not frame.fatal and frame.turn_id > 0 and frame.turn_id >= self._turn:
            self._end_when_played(frame.turn_id)  # a failed reply may never send its end: do not stay "speaking"
        await self.push(frame)

    def _end_when_played(self, turn: int, *, quiet_s: float = 1.0, give_up_s: float = 10.0) -> None:
        """In the background: end ``turn`` once its audio has played and no more came for ``quiet_s``.

        For replies that failed: their end of reply may never come. (The error, a system frame, can overtake the
        reply's queued audio, so the turn may not have started playing yet; ``give_up_s`` bounds that wait.)
        """

        async def finish() -> None:
            loop = asyncio.get_running_loop()
            start = quiet_from = loop.time()
            written = -1
            while turn not in self._ended_turns and self._turn <= turn:
                await asyncio.sleep(0.05)
                now = loop.time()
                if self._turn < turn:  # its audio has not arrived (yet)
                    if now - start > give_up_s:
                        return
                    continue
                if self._buffer.written != written or self._played_position() < self._buffer.written:
                    written, quiet_from = self._buffer.written, now
                elif now - quiet_from >= quiet_s:
                    self._update_heard()
                    await self._end_turn(turn, self._heard.text)
                    await self.push(EndOfTurnFrame(turn_id=turn))
                    return

        task = asyncio.get_running_loop().create_task(finish(), name=f"{self.name}:end-turn-{turn}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _play(self, frame: TTSAudioFrame) -> None:
        if frame.turn_id != self._turn:
            if self._speaking and self._turn not in self._ended_turns:  # the last reply never ended: end it now
                await self._end_turn(self._turn, self._heard.text)
            self._start_turn(frame.turn_id)
        pcm = to_mono(frame.pcm).astype(np.float32, copy=False)
        if frame.sample_rate != self.device_rate:
            if self._resampler is None or self._resample_from != frame.sample_rate:
                import soxr

                self._resampler = soxr.ResampleStream(
                    frame.sample_rate, self.device_rate, 1, dtype="float32", quality="HQ"
                )
                self._resample_from = frame.sample_rate
            pcm = self._resampler.resample_chunk(pcm)
        if not self._speaking:
            self._speaking = True
            await self.push(BotSpeakingFrame(speaking=True, turn_id=self._turn), Direction.UPSTREAM)
        self._buffer.append(np.ascontiguousarray(pcm, dtype=np.float32))
        self._pending.append(_Pending(self._buffer.written, frame))
        limit = int(self.config.buffer_s * self.device_rate)
        await self._wait_until(lambda: self._buffer.queued <= limit)

    def _start_turn(self, turn_id: int) -> None:
        self._turn = turn_id
        self._reported = ""
        self._heard.reset(turn_id)
        self._pending.clear()
        self._resampler = None

    async def _finish_turn(self, frame: LLMResponseEndFrame) -> None:
        """The reply is complete: once its audio has played, report it heard and end the turn."""
        turn = frame.turn_id
        if turn <= 0 or turn in self._ended_turns:
            await self.push(frame)  # e.g. the LLM confirming a reply the user interrupted
            return
        text = ""
        if turn == self._turn:
            if self._resampler is not None:  # the resampler's last few samples
                tail = self._resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                self._resampler = None
                if len(tail):
                    self._buffer.append(np.ascontiguousarray(tail, dtype=np.float32))
            end = self._buffer.written
            await self._wait_until(lambda: self._played_position() >= end)
            self._update_heard()
            while self._pending:  # everything was played (or the device is gone)
                self._heard.played(self._pending.popleft().frame)
            text = self._heard.text
        await self._end_turn(turn, text)
        await self.push(frame)
        await self.push(EndOfTurnFrame(turn_id=turn, interrupted=frame.interrupted))

    async def _end_turn(self, turn: int, heard: str) -> None:
        self._ended_turns.add(turn)
        self.samples_played = self._played_position()
        await self.push(PlaybackFrame(text=heard, finished=True, turn_id=turn), Direction.UPSTREAM)
        if self._speaking and turn == self._turn:
            self._speaking = False
            await self.push(BotSpeakingFrame(speaking=False, turn_id=turn), Direction.UPSTREAM)

    async def _interrupt(self) -> None:
        """Stop playback now; report what was heard of the interrupted reply."""
        turn = self._turn
        stop_at = self._buffer.clear()
        self._resampler = None
        if turn == 0 or turn in self._ended_turns:
            return
        # what is already inside the device still plays out: wait for it so "heard" is exact
        await self._wait_until(lambda: self._played_position() >= stop_at, poll=0.005)
        self._update_heard()
        self._pending.clear()
        await self._end_turn(turn, self._heard.text)
        await self.push(EndOfTurnFrame(turn_id=turn, interrupted=True))


# -- native library chatter --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def capture_native_stderr(logger: logging.Logger | None = None) -> Iterator[None]:
    """Route what C libraries write to file descriptor 2 (PortAudio's and ALSA's diagnostics) into the debug log.

    PortAudio prints several "Expression ... failed" lines when a device disappears and offers no public hook to
    silence them; the CLI wraps a conversation in this so the user sees one clear line instead. Python's own
    ``sys.stderr`` keeps writing to the real stderr.
    """
    target = logger or log
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, 2)
    os.close(write_fd)
    original = sys.stderr
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8", errors="replace")

    def pump() -> None:
        with os.fdopen(read_fd, "r", encoding="utf-8", errors="replace") as pipe:
            for line in pipe:
                target.debug("native: %s", line.rstrip())

    reader = threading.Thread(target=pump, name="voicepipe-native-stderr", daemon=True)
    reader.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        replaced, sys.stderr = sys.stderr, original
        os.dup2(saved, 2)  # closes the pipe's write end held by fd 2, so the reader sees EOF
        os.close(saved)
        with contextlib.suppress(Exception):
            replaced.close()
        reader.join(timeout=1.0)
