"""Microphone source and speaker sink on sounddevice (PortAudio): entry points ``mic`` and ``speaker``.

Each opens its own stream (separate input and output streams: a duplex stream garbled audio under CPU load here) at
a rate the device supports (``voicepipe.audio.portaudio``) and resamples with soxr streams to and from the pipeline's
rates. PortAudio calls back on its own thread; the callbacks only copy samples and hand them to the event loop with
``loop.call_soon_threadsafe`` (the speaker's through ``OutputBuffer``). Streams are opened in ``setup()``.

A device that disappears (unplugged, sound server gone) ends its stream: the stage then sends a fatal ``ErrorFrame``
with one line saying which device and what to do, and the pipeline stops cleanly.

The speaker keeps the sink's turn protocol (``voicepipe.audio.sink``) with what the device actually played (from
PortAudio's DAC times): its ``PlaybackFrame``s (progress while a reply plays, and a final one) hold only the text the
user heard, also after a barge-in. It also sends ``BotSpeakingFrame`` upstream when a reply starts and stops playing
(the turn-taking stage gates the mic on it).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import StreamResampler, to_mono
from voicepipe.audio.output_buffer import OutputBuffer
from voicepipe.audio.portaudio import (
    DeviceLostError,
    Latency,
    close_stream,
    lost_message,
    pick_rate,
    resolve_device,
    sounddevice,
)
from voicepipe.audio.sink import AudioSink
from voicepipe.errors import UserError
from voicepipe.frames import (
    AudioFrame,
    BotSpeakingFrame,
    CancelFrame,
    EndOfTurnFrame,
    ErrorFrame,
    Frame,
    PlaybackFrame,
    TTSAudioFrame,
)
from voicepipe.stage import Direction, Source, StageConfig

__all__ = ["MicConfig", "MicSource", "SpeakerConfig", "SpeakerSink"]

log = logging.getLogger("voicepipe.audio.device")


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
        sd = sounddevice()
        device = resolve_device(sd, self.config.device, "input", f"{self.name}.device")
        self.device_rate = pick_rate(sd, device, "input", self.config.device_rate, f"{self.name}.device_rate")
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
        rate = self.config.sample_rate
        block = max(1, rate * self.config.block_ms // 1000)
        resampler = StreamResampler(rate)
        pending: list[np.ndarray] = []
        pending_len = 0
        self._stream.start()
        while True:
            item = await self._queue.get()
            if item is None:
                raise DeviceLostError(lost_message("input", self.device_name))  # the pipeline names the stage
            pcm, arrived = item
            pcm = resampler(pcm, self.device_rate)
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
            await asyncio.to_thread(close_stream, stream)


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


class SpeakerSink(AudioSink):
    """Plays ``TTSAudioFrame``s on an output device and reports what was heard (see the module docstring)."""

    Config = SpeakerConfig
    config: SpeakerConfig

    def __init__(self, config: SpeakerConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._stream: Any = None
        self._buffer = OutputBuffer()
        self._pending: collections.deque[_Pending] = collections.deque()
        self._resampler: StreamResampler | None = None  # made in setup, once the device's rate is known
        self._speaking = False
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
        sd = sounddevice()
        device = resolve_device(sd, self.config.device, "output", f"{self.name}.device")
        self.device_rate = pick_rate(sd, device, "output", self.config.device_rate, f"{self.name}.device_rate")
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
            await asyncio.to_thread(close_stream, stream)

    async def _report_progress(self, every: float = 0.04) -> None:
        """While a reply plays, tell upstream what has been heard so far (``PlaybackFrame(finished=False)``).

        The LLM stage applies the latest report when an interruption reaches it, which happens before the
        interruption reaches this sink, so the report must already be there.
        """
        while True:
            await asyncio.sleep(every)
            if self._pending:
                self._update_heard()
            turn = self.turn
            if not turn or turn in self.ended_turns or self.heard.turn_id != turn:
                continue
            text = self.heard.text
            if text != self._reported:
                self._reported = text
                await self.push(PlaybackFrame(text=text, finished=False, turn_id=turn), Direction.UPSTREAM)

    def _device_lost(self) -> None:
        if self._lost is not None:
            self._lost.set()
        if not self._lost_reported:
            self._lost_reported = True
            message = f"{self.name}: {lost_message('output', self.device_name)}"
            error = ErrorFrame(message=message, stage=self.name, fatal=True, turn_id=self.turn)
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
            self.heard.played(self._pending.popleft().frame)

    async def _wait_until(self, condition: Any, poll: float = 0.01) -> None:
        """Wait (polling the play position) until ``condition()``; stop waiting if the device is lost."""
        while not condition():
            if self._lost is not None and self._lost.is_set():
                return
            await asyncio.sleep(poll)
            self._update_heard()

    # -- the output (the turn protocol is AudioSink's) -------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if isinstance(frame, CancelFrame):
            self._buffer.clear()
        elif isinstance(frame, ErrorFrame) and not frame.fatal and frame.turn_id > 0 and frame.turn_id >= self.turn:
            self._end_when_played(frame.turn_id)  # a failed reply may never send its end: do not stay "speaking"
        await super().process(frame)

    async def play(self, frame: TTSAudioFrame) -> None:
        pcm = to_mono(frame.pcm).astype(np.float32, copy=False)
        if self._resampler is None or self._resampler.rate_out != self.device_rate:
            self._resampler = StreamResampler(self.device_rate)
        pcm = self._resampler(pcm, frame.sample_rate)
        if not self._speaking:
            self._speaking = True
            await self.push(BotSpeakingFrame(speaking=True, turn_id=self.turn), Direction.UPSTREAM)
        self._buffer.append(np.ascontiguousarray(pcm, dtype=np.float32))
        self._pending.append(_Pending(self._buffer.written, frame))
        limit = int(self.config.buffer_s * self.device_rate)
        await self._wait_until(lambda: self._buffer.queued <= limit)

    async def drain(self) -> None:
        """Play the resampler's last samples and wait until the device has played everything."""
        if self._resampler is not None:
            tail = self._resampler.flush()
            if len(tail):
                self._buffer.append(np.ascontiguousarray(tail, dtype=np.float32))
        end = self._buffer.written
        await self._wait_until(lambda: self._played_position() >= end)
        self._update_heard()
        while self._pending:  # everything was played (or the device is gone)
            self.heard.played(self._pending.popleft().frame)

    async def stop(self) -> None:
        """Drop what the device has not taken yet; what is already inside it still plays out, and counts as heard."""
        stop_at = self._buffer.clear()
        if self._resampler is not None:
            self._resampler.reset()
        if self.turn == 0 or self.turn in self.ended_turns:
            return
        await self._wait_until(lambda: self._played_position() >= stop_at, poll=0.005)
        self._update_heard()
        self._pending.clear()

    def _start_turn(self, turn: int) -> None:
        super()._start_turn(turn)
        self._reported = ""
        self._pending.clear()
        if self._resampler is not None:
            self._resampler.reset()

    async def _end_turn(self, turn: int, heard: str) -> None:
        self.samples_played = self._played_position()
        await super()._end_turn(turn, heard)
        if self._speaking and turn == self.turn:
            self._speaking = False
            await self.push(BotSpeakingFrame(speaking=False, turn_id=turn), Direction.UPSTREAM)

    def _end_when_played(self, turn: int, *, quiet_s: float = 1.0, give_up_s: float = 10.0) -> None:
        """In the background: end ``turn`` once its audio has played and no more came for ``quiet_s``.

        For replies that failed: their end of reply may never come. (The error, a system frame, can overtake the
        reply's queued audio, so the turn may not have started playing yet; ``give_up_s`` bounds that wait.)
        """

        async def finish() -> None:
            loop = asyncio.get_running_loop()
            start = quiet_from = loop.time()
            written = -1
            while turn not in self.ended_turns and self.turn <= turn:
                await asyncio.sleep(0.05)
                now = loop.time()
                if self.turn < turn:  # its audio has not arrived (yet)
                    if now - start > give_up_s:
                        return
                    continue
                if self._buffer.written != written or self._played_position() < self._buffer.written:
                    written, quiet_from = self._buffer.written, now
                elif now - quiet_from >= quiet_s:
                    self._update_heard()
                    await self._end_turn(turn, self.heard.text)
                    await self.push(EndOfTurnFrame(turn_id=turn))
                    return

        task = asyncio.get_running_loop().create_task(finish(), name=f"{self.name}:end-turn-{turn}")
        self._background.add(task)
        task.add_done_callback(self._background.discard)
