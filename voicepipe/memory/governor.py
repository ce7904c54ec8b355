"""The memory governor: keep the LLM and the TTS out of memory at the same time when both do not fit the budget.

How it sits in the pipeline: ``MemoryGovernor.install(stages)`` finds the LLM and the TTS stage (by name from the
``memory:`` section, else the last two model-holding stages) and inserts three small pass-through stages (taps,
``voicepipe.memory.taps``) at the points where the governor must act; they call only its public methods. The stages
themselves only need the memory hooks every stage has (``memory_footprint``, ``is_loaded``, ``unload()``,
``load()``)::

    ... ASR -> [before-llm] -> LLM -> [after-llm] -> chunker -> TTS -> [after-tts] -> sink

- Startup (each tap's ``setup`` runs between its neighbours' ``setup``): the process RSS is measured before and after
  the LLM and the TTS load, so each stage's footprint is known two ways: what it reports and what loading it added to
  the process. When a budget is set and the LLM plus a TTS of the same size would not fit, the LLM is unloaded
  before the TTS loads, so the two never overlap even once. Then the policy is decided and logged with its numbers.
- Policy ``auto`` with a budget (the decisions are ``voicepipe.memory.policy``): unless the budget is generous, turns
  start sequential; each sequential turn measures each model's working set (the peak RSS of its phase over the floor
  with neither loaded), and once both are known the governor switches to concurrent if they fit the budget.
- Concurrent turns: the taps only measure (per-turn peak RSS).
- Sequential turns: ``before-llm`` makes sure the LLM is loaded and the TTS is not before a transcript reaches the
  LLM; ``after-llm`` holds the reply until the LLM has finished, unloads the LLM (its conversation state stays in its
  prompt cache in RAM, so the next turn does not prefill the history again), loads the TTS, then releases the reply;
  ``after-tts`` sees the end of the reply once the TTS has synthesized all of it, unloads the TTS and reloads the LLM
  while the sink is still playing the last audio, and reports how much of the reload was hidden behind that playback.

Sequential turns never overlap, whatever the arrival pattern: when the next question arrives while the last reply is
still being spoken (a WAV fed faster than real time, a user who talks on), ``before-llm`` holds it until that reply is
synthesized and the TTS unloaded; a turn gives up its place when its reply is synthesized, when it is interrupted, or
when the LLM fails on it. Reloading a model costs more than its loaded size for a moment (file reads, buffers); that
transient is part of the LLM's measured working set, so policy ``auto`` counts it against the budget.

Every load and unload, and every change of the two models' state the taps notice (a model that loaded itself), goes
into ``events`` with both models' state after it: the record that proves "never both at once".

A model that cannot be loaded again (its file removed or corrupted while it was unloaded) is tried once more; then the
run stops with one line (a fatal ``ErrorFrame``), instead of failing every later turn.

Playback is modelled as a speaker would play the audio: each block starts when it arrives or when the one before
ended, whichever is later; so "hidden" means hidden behind audio a speaker would still be playing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Sequence

from voicepipe.errors import ConfigError
from voicepipe.frames import TTSAudioFrame
from voicepipe.memory import policy
from voicepipe.memory.config import MemoryConfig
from voicepipe.memory.jetsam import RssWatchdog
from voicepipe.memory.policy import Mode
from voicepipe.memory.records import ModelEvent, ReloadFailed, StageMemory, TurnRecord
from voicepipe.memory.rss import MB, release_freed_memory, rss_bytes
from voicepipe.memory.swap import ModelSwap
from voicepipe.memory.taps import AfterLLMTap, AfterTTSTap, BeforeLLMTap, GovernorTap
from voicepipe.stage import Stage

__all__ = ["MemoryGovernor", "StageMemory", "GovernorTap", "ModelEvent", "ReloadFailed"]

log = logging.getLogger("voicepipe.memory")


class MemoryGovernor:
    """Decides per pipeline whether the LLM and the TTS may stay loaded together, and enforces it per turn."""

    def __init__(self, config: MemoryConfig | None = None, *, monitor: RssWatchdog | None = None) -> None:
        self.config = config or MemoryConfig()
        self.monitor = monitor
        self._own_monitor = monitor is None
        self.llm: Stage | None = None
        self.tts: Stage | None = None
        self.mode: Mode = "concurrent"
        self.baseline = 0
        self.floor = 0  # RSS with neither model loaded (last measured)
        self.llm_memory = StageMemory("llm")
        self.tts_memory = StageMemory("tts")
        self.decisions: list[str] = []
        self.turns: dict[int, TurnRecord] = {}
        self.finished_turns: list[dict[str, float]] = []
        self._lock: asyncio.Lock | None = None
        self._rss_mark = 0
        self._llm_parked = False  # unloaded by the governor (upstream frames for it wait)
        self._tasks: set[asyncio.Task[None]] = set()
        self._after_llm: AfterLLMTap | None = None
        self._models: ModelSwap | None = None
        self._idle: asyncio.Event | None = None  # set while no turn holds the models (sequential turns wait for it)
        self._active: int | None = None  # the turn holding them
        self._phase = "idle"  # of the active turn: "llm" (writing) or "tts" (speaking)
        self._failed: ReloadFailed | None = None  # a reload that failed in a background swap

    # -- wiring ----------------------------------------------------------------------------------------------------

    def install(self, stages: Sequence[Stage]) -> list[Stage]:
        """Return ``stages`` with the governor's three taps inserted around the LLM and the TTS."""
        chain = list(stages)
        self.llm, self.tts = self._find(chain)
        i_llm, i_tts = chain.index(self.llm), chain.index(self.tts)
        if i_llm >= i_tts:
            raise ConfigError(f"memory: the LLM stage '{self.llm.name}' must come before the TTS '{self.tts.name}'")
        self.llm_memory.name, self.tts_memory.name = self.llm.name, self.tts.name
        self._models = ModelSwap(self.llm, self.tts, self._decide)
        self._after_llm = AfterLLMTap(self)
        chain.insert(i_tts + 1, AfterTTSTap(self))
        chain.insert(i_llm + 1, self._after_llm)
        chain.insert(i_llm, BeforeLLMTap(self))
        self._decide(f"stages: llm={self.llm.name}, tts={self.tts.name}")
        return chain

    def _find(self, chain: list[Stage]) -> tuple[Stage, Stage]:
        by_name = {s.name: s for s in chain}
        for role, name in (("llm", self.config.llm), ("tts", self.config.tts)):
            if name is not None and name not in by_name:
                raise ConfigError(f"memory.{role}: no stage named '{name}'; use one of: {', '.join(by_name)}")
        models = [s for s in chain if s.holds_model]
        tts = by_name[self.config.tts] if self.config.tts else (models[-1] if models else None)
        if self.config.llm:
            llm = by_name[self.config.llm]
        else:
            before = [s for s in models if tts is not None and chain.index(s) < chain.index(tts)]
            llm = before[-1] if before else None
        if llm is None or tts is None:
            raise ConfigError(
                "memory: the governor needs an LLM stage and a TTS stage that hold models; "
                "name them with 'memory.llm' and 'memory.tts'"
            )
        return llm, tts

    def _decide(self, message: str) -> None:
        self.decisions.append(message)
        log.info("memory governor: %s", message)

    @property
    def budget(self) -> int | None:
        return self.config.budget_bytes

    @property
    def llm_name(self) -> str:
        """The LLM stage's name ("" before ``install``): the taps recognise its errors by it."""
        return self.llm.name if self.llm is not None else ""

    @property
    def llm_parked(self) -> bool:
        """True while the governor has the LLM unloaded (frames going up to it wait until it is loaded again)."""
        return self._llm_parked

    # -- startup ---------------------------------------------------------------------------------------------------

    async def before_llm_loads(self) -> None:
        """Startup, before the LLM's ``setup``: start sampling and measure the baseline."""
        self._lock = asyncio.Lock()
        if self.monitor is None:
            self.monitor = RssWatchdog(hz=self.config.sample_hz)
        if not self.monitor.running:
            self.monitor.start()
        release_freed_memory()
        self.baseline = self.floor = self._rss_mark = rss_bytes()
        self._idle = asyncio.Event()
        self._idle.set()

    async def after_llm_loaded(self) -> None:
        """Startup, after the LLM's ``setup``: measure it; unload it when a TTS as big might not fit beside it."""
        llm = self._swap().llm
        now = rss_bytes()
        self.llm_memory.measured = max(0, now - self._rss_mark)
        self.llm_memory.reported = llm.memory_footprint
        self._decide(
            f"{llm.name} loaded: reports {self.llm_memory.reported / MB:.0f} MB, RSS grew "
            f"{self.llm_memory.measured / MB:.0f} MB (baseline {self.baseline / MB:.0f} MB)"
        )
        reason = policy.unload_llm_before_tts(self.config.policy, self.budget, now, self.llm_memory)
        if reason is not None:
            await self._unload_llm(reason=f"while the TTS loads ({reason})")
        self._rss_mark = rss_bytes()

    async def after_tts_loaded(self) -> None:
        """Startup, after the TTS's ``setup``: measure it and decide how the turns run."""
        tts, llm = self._swap().tts, self._swap().llm
        now = rss_bytes()
        self.tts_memory.measured = max(0, now - self._rss_mark)
        self.tts_memory.reported = tts.memory_footprint
        need_all = self.baseline + self.llm_memory.size + self.tts_memory.size
        budget = self.budget
        self.mode, why = policy.startup_mode(
            self.config.policy, budget, self.baseline, self.llm_memory, self.tts_memory
        )
        budget_text = f"{budget / MB:.0f} MB" if budget is not None else "none"
        self._decide(
            f"{tts.name} loaded: reports {self.tts_memory.reported / MB:.0f} MB, RSS grew "
            f"{self.tts_memory.measured / MB:.0f} MB; baseline {self.baseline / MB:.0f} + "
            f"{llm.name} {self.llm_memory.size / MB:.0f} + {tts.name} {self.tts_memory.size / MB:.0f} = "
            f"{need_all / MB:.0f} MB loaded vs budget {budget_text}: turns run {self.mode} ({why})"
        )
        if self.mode == "sequential":
            await self._unload_tts(reason="until the first reply is written")
        await self._load_llm(reason="ready for the first turn")

    def _rethink(self, turn: TurnRecord) -> None:
        """Policy auto: revisit the mode with the working sets measured so far (logged with its numbers)."""
        decision = policy.after_turn(
            self.config.policy,
            self.budget,
            self.mode,
            turn_id=turn.turn_id,
            turn_peak=turn.peak,
            floor=self.floor,
            llm=self.llm_memory,
            tts=self.tts_memory,
        )
        if decision.message is not None:
            self._decide(decision.message)
        if decision.warning is not None:
            log.warning("memory governor: %s", decision.warning)
        self.mode = decision.mode

    # -- transitions (each under the lock) -------------------------------------------------------------------------

    def _swap(self) -> ModelSwap:
        if self._models is None:
            raise RuntimeError("MemoryGovernor.install() was not called")
        return self._models

    @property
    def events(self) -> deque[ModelEvent]:
        """Every load and unload, and every change of the two models' state the taps noticed."""
        return self._models.events if self._models is not None else deque()

    async def _unload_llm(self, *, reason: str) -> float:
        swap = self._swap()
        parks = swap.llm.is_loaded  # frames going up to it wait from now on until it is loaded again
        footprint = swap.llm.memory_footprint if parks else None
        ms = await swap.unload(swap.llm, self.llm_memory, reason=reason, footprint=footprint)
        self._llm_parked = self._llm_parked or parks
        return ms

    async def _load_llm(self, *, reason: str) -> float:
        swap = self._swap()
        ms = await swap.load(swap.llm, reason=reason)
        self._llm_parked = False
        if self._after_llm is not None:
            await self._after_llm.flush_upstream()
        return ms

    async def _unload_tts(self, *, reason: str) -> float:
        swap = self._swap()
        return await swap.unload(swap.tts, self.tts_memory, reason=reason)

    async def _load_tts(self, *, reason: str) -> float:
        swap = self._swap()
        return await swap.load(swap.tts, reason=reason)

    def check_state(self, where: str) -> None:
        """Called by the taps on every frame: log a model that loaded or unloaded itself since the last event."""
        self._swap().check_state(where)

    def _release(self, turn_id: int | None = None) -> None:
        """The active turn (or ``turn_id``, if it is the active one) no longer holds the models."""
        if turn_id is not None and turn_id != self._active:
            return
        self._active, self._phase = None, "idle"
        if self._idle is not None:
            self._idle.set()

    def _locked(self) -> asyncio.Lock:
        if self._lock is None:
            self._lock = asyncio.Lock()
        return self._lock

    # -- per turn --------------------------------------------------------------------------------------------------

    def _turn(self, turn_id: int) -> TurnRecord:
        if turn_id not in self.turns:
            self.turns[turn_id] = TurnRecord(turn_id)
        return self.turns[turn_id]

    def _phase_peak(self, turn: TurnRecord) -> int:
        """Peak RSS since the last phase began; starts the next phase."""
        if self.monitor is None:
            return rss_bytes()
        self.monitor.sample()
        peak = self.monitor.window_peak_bytes
        self.monitor.reset_window()
        turn.peak = max(turn.peak, peak)
        return peak

    async def turn_starts(self, turn_id: int) -> None:
        """A final transcript is about to reach the LLM: make sure it can run.

        Sequential turns wait here until the turn before has been spoken and the TTS unloaded (the user may ask the
        next question while the last reply still plays): two turns in flight would put both models in memory.
        """
        if self._failed is not None:
            raise self._failed
        if self._idle is None:
            self._idle = asyncio.Event()
            self._idle.set()
        if self.mode == "sequential" and not self._idle.is_set():
            log.info("memory governor: turn %d waits until turn %s has been spoken", turn_id, self._active)
            await self._idle.wait()
        self._idle.clear()
        self._active, self._phase = turn_id, "llm"
        turn = self._turn(turn_id)
        try:
            async with self._locked():
                if self.mode == "sequential":
                    ms = await self._unload_tts(reason=f"before turn {turn_id} (it was still loaded)")
                    if ms:
                        turn.values["tts_unload_ms"] = turn.values.get("tts_unload_ms", 0.0) + ms
                self._phase_peak(turn)  # the LLM phase starts now, its reload transient included
                waited = await self._load_llm(reason=f"before turn {turn_id} (not reloaded in time)")
                if waited:
                    turn.values["llm_reload_exposed_ms"] = waited
        except BaseException:
            self._release(turn_id)
            raise

    async def reply_written(self, turn_id: int) -> None:
        """The LLM finished this turn's reply (sequential mode): swap the LLM out and the TTS in."""
        turn = self._turn(turn_id)
        async with self._locked():
            llm_peak = self._phase_peak(turn)
            footprint = self._swap().llm.memory_footprint
            turn.values["llm_unload_ms"] = await self._unload_llm(reason=f"after writing turn {turn_id}")
            self.floor = rss_bytes()
            self.llm_memory.working = max(self.llm_memory.working, llm_peak - self.floor)
            turn.values["llm_footprint_mb"] = footprint / MB
            turn.values["llm_rss_drop_mb"] = self.llm_memory.unload_drop / MB
            turn.values["llm_phase_peak_mb"] = llm_peak / MB
            self._phase_peak(turn)  # the TTS phase starts now
            if turn_id == self._active:
                self._phase = "tts"
            turn.values["tts_load_ms"] = await self._load_tts(reason=f"to speak turn {turn_id}")

    def interrupted(self) -> None:
        """Barge-in: the reply is cut, so the turn gives up the models; in a sequential turn swap back to the LLM now,
        not at the next turn.

        Done in a task (system frames must stay quick). The LLM stage may reload its model by itself for the cut
        history (a cache warm-up); unloading the TTS first keeps that overlap short. A reload that fails there stops
        the run at the next turn.
        """
        if self.mode != "sequential" or not self._llm_parked:
            self._release()
            return

        async def swap_back() -> None:
            try:
                async with self._locked():
                    await self._unload_tts(reason="after a barge-in")
                    await self._load_llm(reason="after a barge-in")
            except ReloadFailed as exc:
                self._failed = exc
            finally:
                self._release()

        task = asyncio.get_running_loop().create_task(swap_back())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def turn_failed(self, turn_id: int) -> None:
        """The LLM failed on this turn while writing it: no reply will come, so it gives up the models."""
        if turn_id == self._active and self._phase == "llm":
            self._release(turn_id)

    def audio_out(self, frame: TTSAudioFrame) -> None:
        turn = self._turn(frame.turn_id)
        now = time.monotonic()
        turn.play_end = max(turn.play_end, now) + frame.duration

    async def reply_synthesized(self, turn_id: int) -> dict[str, float]:
        """The TTS has synthesized the whole reply: in sequential mode swap back while the audio plays. Returns the
        turn's values for its ``MetricsFrame``."""
        turn = self._turn(turn_id)
        # a late end of a turn that already gave up the models (interrupted) must not swap them under the next turn
        sequential = self.mode == "sequential" and self._active in (None, turn_id)
        async with self._locked():
            phase_peak = self._phase_peak(turn)
            if sequential:
                self.tts_memory.working = max(self.tts_memory.working, phase_peak - self.floor)
                turn.values["tts_phase_peak_mb"] = phase_peak / MB
                self._rethink(turn)
                started = time.monotonic()
                if self.mode == "sequential":
                    ms = await self._unload_tts(reason=f"after speaking turn {turn_id}")
                    turn.values["tts_unload_ms"] = turn.values.get("tts_unload_ms", 0.0) + ms
                self._phase_peak(turn)
                reload_ms = await self._load_llm(reason=f"after turn {turn_id}, while its audio plays")
                reload_peak = self._phase_peak(turn)
                if self.mode == "sequential":  # the TTS is out: this peak is the LLM's reload transient alone
                    # (file reads, buffers): part of what the LLM needs, so it counts against the budget
                    self.llm_memory.working = max(self.llm_memory.working, reload_peak - self.floor)
                ended = time.monotonic()
                hidden = max(0.0, min(ended, turn.play_end) - started)
                turn.values["llm_reload_ms"] = reload_ms
                turn.values["swap_back_ms"] = (ended - started) * 1000
                turn.values["reload_hidden_ms"] = hidden * 1000
                turn.values["reload_exposed_ms"] = (ended - started - hidden) * 1000
            else:
                self._rethink(turn)
        self._release(turn_id)
        turn.values["peak_rss_mb"] = turn.peak / MB
        turn.values["sequential"] = 1.0 if sequential else 0.0
        values = {k: round(v, 1) for k, v in turn.values.items()}
        self.turns.pop(turn_id, None)
        self.finished_turns.append({"turn": float(turn_id), **values})
        return values

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.monitor is not None and self._own_monitor:
            self.monitor.stop()

    def summary(self) -> dict[str, object]:
        """Footprints, the decision and the peak, for logs and benchmarks."""
        return {
            "mode": self.mode,
            "budget_mb": round(self.budget / MB, 1) if self.budget is not None else None,
            "baseline_mb": round(self.baseline / MB, 1),
            "floor_mb": round(self.floor / MB, 1),
            "llm": self.llm_memory.as_dict(),
            "tts": self.tts_memory.as_dict(),
            "peak_rss_mb": round(self.monitor.peak_bytes / MB, 1) if self.monitor is not None else None,
        }
