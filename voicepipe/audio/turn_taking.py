"""Turn taking between the microphone and the VAD: echo guard and barge-in (entry point ``turn-taking``).

It sits right after the audio source and listens to the ``BotSpeakingFrame``s the speaker sends upstream.

- ``mode: echo-guard`` (default, for loudspeakers without echo cancellation): while the reply plays, and for
  ``echo_tail_ms`` after it, the microphone audio is replaced by silence of the same length, so the assistant never
  hears, and answers, itself. The user cannot interrupt in this mode.
- ``mode: barge-in`` (for headsets or a microphone with acoustic echo cancellation): while the reply plays, the
  microphone audio is held back here and checked with webrtcvad. Once ``barge_in_ms`` of voiced audio has come in
  (pauses shorter than ``max_gap_ms`` do not reset the count) an ``InterruptionFrame`` goes downstream, followed by
  the held audio, so the VAD sees the whole utterance and every stage after it sees the interruption first (the
  pipeline drops data queued before an interruption, which must not be the user's new words). A shorter sound (a
  "mhmm") is let through as silence: it neither interrupts nor starts a turn.

Hand-written: the field's libraries detect speech, not whose turn it is.
"""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from pydantic import Field

from voicepipe.audio.convert import SPEECH_SAMPLE_RATE, resample, to_mono
from voicepipe.frames import AudioFrame, BotSpeakingFrame, EndFrame, Frame, InterruptionFrame
from voicepipe.stage import Direction, Stage, StageConfig

__all__ = ["TurnTakingConfig", "TurnTaking"]


class TurnTakingConfig(StageConfig):
    """``turn-taking`` stage settings (pipeline.yaml)."""

    mode: Literal["echo-guard", "barge-in"] = Field(
        "echo-guard", description="echo-guard: mute the mic while the reply plays; barge-in: let the user interrupt"
    )
    echo_tail_ms: int = Field(300, ge=0, le=5000, description="echo-guard: keep the mic muted this long after a reply")
    barge_in_ms: int = Field(500, ge=60, le=5000, description="barge-in: voiced speech over the reply that interrupts")
    max_gap_ms: int = Field(250, ge=30, le=2000, description="barge-in: a longer pause restarts the count")
    aggressiveness: int = Field(3, ge=0, le=3, description="barge-in: webrtcvad mode for speech over the reply")


class TurnTaking(Stage):
    """Echo guard or barge-in detection, before the VAD (see the module docstring)."""

    Config = TurnTakingConfig
    config: TurnTakingConfig

    def __init__(self, config: TurnTakingConfig | None = None, *, name: str | None = None) -> None:
        super().__init__(config, name=name)
        self._vad = None
        self._bot_turn = 0  # turn whose reply is playing (0: none)
        self._muted_until = 0.0
        self._held: list[AudioFrame] = []
        self._voiced_s = 0.0
        self._gap_s = 0.0
        self._rest = np.zeros(0, dtype=np.float32)  # 16 kHz samples not yet a whole VAD frame
        self._interrupted_turn = 0
        self.interruptions = 0
        self.backchannels = 0  # short sounds over the reply that did not interrupt

    async def setup(self) -> None:
        if self.config.mode == "barge-in":
            from voicepipe.vad.webrtc import WebRTCVAD

            # 10 ms: two verdicts per 20 ms mic block
            self._vad = WebRTCVAD(WebRTCVAD.Config(aggressiveness=self.config.aggressiveness, frame_ms=10))
            self._vad.load()

    @property
    def bot_speaking(self) -> bool:
        return self._bot_turn > 0

    # -- upstream: what the speaker says -------------------------------------------------------------------------

    async def process_upstream(self, frame: Frame) -> None:
        if isinstance(frame, BotSpeakingFrame):
            if frame.speaking:
                self._bot_turn = frame.turn_id or -1
            elif not frame.turn_id or frame.turn_id >= self._bot_turn:
                self._bot_turn = 0
                self._muted_until = time.monotonic() + self.config.echo_tail_ms / 1000
                if self._held:  # the reply ended while the user was starting to speak: that is a normal turn
                    await self._release(keep=True)
        await self.push(frame, Direction.UPSTREAM)

    # -- downstream: the microphone ------------------------------------------------------------------------------

    async def process(self, frame: Frame) -> None:
        if not isinstance(frame, AudioFrame):
            if isinstance(frame, EndFrame) and self._held:
                await self._release(keep=False)
            await self.push(frame)
            return
        if self.config.mode == "echo-guard":
            if self.bot_speaking or frame.timestamp < self._muted_until:
                frame = AudioFrame(
                    pcm=np.zeros_like(frame.pcm),
                    sample_rate=frame.sample_rate,
                    turn_id=frame.turn_id,
                    timestamp=frame.timestamp,
                )
            await self.push(frame)
            return
        await self._barge_in(frame)

    async def _barge_in(self, frame: AudioFrame) -> None:
        if not self.bot_speaking or self._bot_turn <= self._interrupted_turn:
            await self.push(frame)
            return
        voiced = self._voiced_fraction(frame)
        seconds = frame.duration
        if voiced > 0.5:
            self._voiced_s += seconds * voiced
            self._gap_s = 0.0
            self._held.append(frame)
        elif self._held:
            self._gap_s += seconds
            self._held.append(frame)
            if self._gap_s * 1000 >= self.config.max_gap_ms:
                self.backchannels += 1
                await self._release(keep=False)  # too short to be an interruption: a backchannel
                return
        else:
            await self.push(frame)
            return
        if self._voiced_s * 1000 >= self.config.barge_in_ms:
            self._interrupted_turn = self._bot_turn
            self.interruptions += 1
            await self.push(InterruptionFrame(reason="user speech", turn_id=self._bot_turn))
            await self._release(keep=True)

    def _voiced_fraction(self, frame: AudioFrame) -> float:
        """Share of the 10 ms webrtcvad frames in this block that hold speech (0 when too short to judge yet)."""
        if self._vad is None:
            return 0.0
        pcm = resample(to_mono(frame.pcm), frame.sample_rate, SPEECH_SAMPLE_RATE)
        samples = np.concatenate([self._rest, pcm])
        size = self._vad.frame_samples
        whole = len(samples) // size
        self._rest = samples[whole * size :]
        if whole == 0:
            return 1.0 if self._held and self._gap_s == 0.0 else 0.0  # undecided: keep the current state
        votes = [self._vad.speech_probability(samples[i * size : (i + 1) * size]) for i in range(whole)]
        return float(np.mean(votes))

    async def _release(self, *, keep: bool) -> None:
        """Send the held audio on: as it is (a real turn), or as silence of the same length (a backchannel)."""
        held, self._held = self._held, []
        self._voiced_s = self._gap_s = 0.0
        for frame in held:
            if not keep:
                frame = AudioFrame(
                    pcm=np.zeros_like(frame.pcm),
                    sample_rate=frame.sample_rate,
                    turn_id=frame.turn_id,
                    timestamp=frame.timestamp,
                )
            await self.push(frame)
