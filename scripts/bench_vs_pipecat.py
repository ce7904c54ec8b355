"""voicepipe against Pipecat 1.14, side by side: the same spoken questions, the same models, each system as shipped.

Both systems hear the same questions (spoken by Piper's joe voice, generated here, 16 kHz) in real time, one question
per fresh process, alternating between the systems question by question. Voice to voice is measured from the true end
of speech (the arrival of the question's last voiced sample) to the first TTS audio the system produces. Also printed:
each system's milestones after the end of speech (its end-of-turn decision, transcript, first LLM token, first audio).

- voicepipe: the default ``pipeline.yaml`` (its VAD, ASR, LLM and chunker settings as a user gets them), with the
  microphone replaced by the scripted question and the speaker by a WAV file; llama.cpp in process.
- Pipecat 1.14 with its defaults (Silero VAD + Smart Turn v3 through ``LLMUserAggregatorParams``), WhisperSTTService,
  OpenAILLMService against ``llama_cpp.server`` serving the same GGUF, PiperTTSService / KokoroTTSService. Pipecat
  lives in its own virtualenv, made on first use (``--pipecat-venv``), since its dependencies are not voicepipe's.

Both use faster-whisper tiny.en and the same Piper/Kokoro voice files (the dev extra's PyPI packages), and the real
chat GGUF (``tests.support.llm_assets``, or ``--gguf``). Run on a quiet machine:

    .venv/bin/python scripts/bench_vs_pipecat.py --tts piper kokoro --questions 6 --json vs_pipecat.json
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

QUESTIONS = [
    "What is the capital of France?",
    "How far away is the moon?",
    "Who wrote Romeo and Juliet?",
    "How many legs does a spider have?",
    "Why is the sky blue?",
    "What is the tallest mountain in the world?",
    "How do I boil an egg?",
    "Can you recommend a good book?",
]
SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one to three short spoken sentences, without markdown or lists."
)
PIPECAT = "pipecat-ai[whisper,silero,piper,kokoro,openai]==1.14.0"
RATE = 16000
BLOCK = RATE // 50  # 20 ms, as a microphone delivers
LEAD_S = 2.0  # silence before the question, after the pipeline has started
REPO = Path(__file__).resolve().parent.parent


# -- the parent: set up, alternate, summarize ---------------------------------------------------------------------


def ensure_pipecat_venv(venv: Path) -> Path:
    """Pipecat's own virtualenv (made once, then reused). torch is pinned so pip takes the local CPU build."""
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('pipecat-ai'))"]
    if python.exists() and subprocess.run(probe, capture_output=True, text=True).stdout.strip() == "1.14.0":
        return python
    print(f"installing {PIPECAT} into {venv} (once) ...", file=sys.stderr, flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", PIPECAT, "torch==2.13.0"], check=True)
    return python


def speak_questions(out_dir: Path, count: int) -> list[Path]:
    """The questions as 16 kHz WAVs in Piper's joe voice (the user's voice for both systems)."""
    import soundfile as sf

    from tests.support.tts_assets import piper_joe_model_path
    from voicepipe.audio.convert import resample
    from voicepipe.tts.piper import PiperEngine

    engine = PiperEngine(PiperEngine.Config(model=str(piper_joe_model_path()), threads=2))
    engine.load()
    paths = []
    for i, question in enumerate(QUESTIONS[:count]):
        pcm = resample(engine.synthesize(question), engine.sample_rate, RATE)
        path = out_dir / f"q{i}.wav"
        sf.write(path, pcm, RATE, subtype="FLOAT")
        paths.append(path)
    engine.unload()
    return paths


@contextlib.contextmanager
def llama_server(gguf: Path, ctx: int) -> Any:
    """``llama_cpp.server`` serving ``gguf`` on a free local port; yields its base URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), "--n_ctx", str(ctx), "--n_threads", str(os.cpu_count() or 2)]
    url = f"http://127.0.0.1:{port}/v1"
    with tempfile.TemporaryFile("w+") as log:  # llama.cpp logs a lot: a pipe nobody reads would block it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"llama_cpp.server exited: {log.read()[-2000:]}")
                with contextlib.suppress(OSError):
                    urllib.request.urlopen(url + "/models", timeout=2).close()
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError("llama_cpp.server did not answer within 300 s")
                time.sleep(0.5)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def run_child(python: str, system: str, args: argparse.Namespace, tts: str, wav: Path, url: str) -> dict[str, Any]:
    cmd = [python, str(Path(__file__).resolve()), "--child", system, "--question-wav", str(wav), "--tts", tts]
    cmd += ["--gguf", str(args.gguf), "--llm-url", url, "--max-tokens", str(args.max_tokens)]
    cmd += ["--voices", json.dumps(voice_files())]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=REPO)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"failed": True, "error": (proc.stderr or proc.stdout)[-1500:]}
    return json.loads(lines[-1])


def voice_files() -> dict[str, str]:
    """Local paths of the speech models both systems use (the dev extra's PyPI packages)."""
    from tests.support.tts_assets import (
        KOKORO_TEST_VOICE,
        kokoro_model_path,
        kokoro_voices_path,
        piper_joe_model_path,
    )
    from tests.support.whisper_assets import whisper_tiny_en_dir

    return {
        "piper": str(piper_joe_model_path()),
        "kokoro_model": str(kokoro_model_path()),
        "kokoro_voices": str(kokoro_voices_path()),
        "kokoro_voice": KOKORO_TEST_VOICE,  # the voices these packages ship; English through it is understood
        "whisper": str(whisper_tiny_en_dir()),
    }


def _pct(values: list[float], q: int) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(sorted(values), n=100, method="inclusive")[q - 1]


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in rows if not r.get("failed") and r.get("voice_to_voice_ms") is not None]
    v2v = [r["voice_to_voice_ms"] for r in ok]
    milestones = sorted({k for r in ok for k in r.get("milestones_ms", {})})
    return {
        "runs": len(rows),
        "failed": len(rows) - len(ok),
        "p50": _pct(v2v, 50),
        "p90": _pct(v2v, 90),
        "milestone_medians_ms": {
            m: statistics.median([r["milestones_ms"][m] for r in ok if m in r["milestones_ms"]]) for m in milestones
        },
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tts", nargs="+", choices=("piper", "kokoro"), default=["piper", "kokoro"])
    parser.add_argument("--questions", type=int, default=6, help=f"questions per TTS (at most {len(QUESTIONS)})")
    parser.add_argument("--gguf", type=Path, help="chat GGUF (default: tests.support.llm_assets' 0.5B)")
    parser.add_argument("--max-tokens", type=int, default=200, help="reply length cap for both (pipeline.yaml's)")
    parser.add_argument(
        "--pipecat-venv", type=Path, default=Path.home() / ".cache" / "voicepipe-bench" / "pipecat-venv"
    )
    parser.add_argument("--timeout", type=float, default=600, help="seconds per child process")
    parser.add_argument("--json", metavar="OUT.json", help="write every run and the summary here")
    parser.add_argument("--child", choices=("voicepipe", "pipecat"), help=argparse.SUPPRESS)
    parser.add_argument("--question-wav", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--llm-url", help=argparse.SUPPRESS)
    parser.add_argument("--voices", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.tts = args.tts[0]
        result = asyncio.run(CHILDREN[args.child](args))
        print(json.dumps(result), flush=True)
        return 0
    if not 1 <= args.questions <= len(QUESTIONS):
        parser.error(f"--questions: 1 to {len(QUESTIONS)}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.gguf is None:
        from tests.support.llm_assets import qwen25_05b_gguf

        args.gguf = qwen25_05b_gguf()
    pipecat_python = str(ensure_pipecat_venv(args.pipecat_venv))
    load_before = os.getloadavg()
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}
    with tempfile.TemporaryDirectory() as tmp, llama_server(args.gguf, 4096) as url:
        wavs = speak_questions(Path(tmp), args.questions)
        for tts in args.tts:
            runs: dict[str, list[dict[str, Any]]] = {"voicepipe": [], "pipecat": []}
            for i, wav in enumerate(wavs):
                order = ("voicepipe", "pipecat") if i % 2 == 0 else ("pipecat", "voicepipe")
                for system in order:
                    python = sys.executable if system == "voicepipe" else pipecat_python
                    row = run_child(python, system, args, tts, wav, url)
                    row["question"] = QUESTIONS[i]
                    runs[system].append(row)
                    print(json.dumps({"tts": tts, "system": system, **row})[:400], file=sys.stderr, flush=True)
            results[tts] = runs
    info = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "gguf": str(args.gguf),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
    }
    summary = {tts: {s: summarize(rows) for s, rows in runs.items()} for tts, runs in results.items()}
    print(json.dumps(info))
    print(markdown(summary))
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "summary": summary, "runs": results}, indent=1))
    return 0


def markdown(summary: dict[str, dict[str, dict[str, Any]]]) -> str:
    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value / 1000:.2f}"

    lines = [
        "| TTS | voicepipe p50 / p90 (s) | Pipecat p50 / p90 (s) | ratio of p50 | failed runs |",
        "|---|---|---|---|---|",
    ]
    for tts, systems in summary.items():
        vp, pc = systems["voicepipe"], systems["pipecat"]
        ratio = f"{vp['p50'] / pc['p50']:.2f}" if vp["p50"] and pc["p50"] else "-"
        lines.append(
            f"| {tts} | {ms(vp['p50'])} / {ms(vp['p90'])} | {ms(pc['p50'])} / {ms(pc['p90'])} | {ratio} | "
            f"{vp['failed']} + {pc['failed']} |"
        )
    lines.append("\nMilestone medians after the true end of speech (s):")
    for tts, systems in summary.items():
        for system, s in systems.items():
            parts = ", ".join(
                f"{k} {ms(v)}" for k, v in sorted(s["milestone_medians_ms"].items(), key=lambda kv: kv[1])
            )
            lines.append(f"- {tts}, {system}: {parts}")
    return "\n".join(lines)


# -- a child: one question through one system ---------------------------------------------------------------------


def _question(path: Path) -> tuple[np.ndarray, int]:
    """The question's samples and the index of its last voiced sample."""
    import soundfile as sf

    pcm, rate = sf.read(path, dtype="float32")
    if rate != RATE:
        raise SystemExit(f"{path}: expected {RATE} Hz, got {rate}")
    return pcm, int(np.flatnonzero(np.abs(pcm) > 0.01)[-1])


async def _play(pcm: np.ndarray, last_voiced: int, send: Any, done: asyncio.Event, times: dict[str, float]) -> None:
    """Send silence, the question, then silence until ``done``, in real time; ``times["voice_end"]`` is set when the
    question's last voiced sample has been sent (its arrival, as from a microphone)."""
    start, sent = time.monotonic(), 0
    silence = np.zeros(BLOCK, dtype=np.float32)
    stream = [silence] * int(LEAD_S * RATE / BLOCK) + [pcm[i : i + BLOCK] for i in range(0, len(pcm), BLOCK)]
    question_from = int(LEAD_S * RATE / BLOCK) * BLOCK
    for block in stream:
        delay = start + sent / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(block)
        if sent <= question_from + last_voiced < sent + len(block):
            times["voice_end"] = time.monotonic()
        sent += len(block)
    while not done.is_set():
        delay = start + sent / RATE - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        await send(silence)
        sent += BLOCK


async def child_voicepipe(args: argparse.Namespace) -> dict[str, Any]:
    """The default pipeline.yaml with the question for a microphone and a WAV file for a speaker."""
    from voicepipe.audio.wav import WavSink, WavSinkConfig
    from voicepipe.config import load_pipeline
    from voicepipe.frames import (
        AudioFrame,
        Frame,
        LLMTokenFrame,
        SpeculationConfirmFrame,
        SpeechEndedFrame,
        TextChunkFrame,
        TranscriptFrame,
        TTSAudioFrame,
    )
    from voicepipe.pipeline import build_pipeline
    from voicepipe.stage import Direction, Source, Stage
    from voicepipe.tts.stage import TTSStage

    voices = json.loads(args.voices)
    pcm, last_voiced = _question(args.question_wav)
    done = asyncio.Event()
    times: dict[str, float] = {}

    class Question(Source):
        async def frames(self):  # noqa: ANN202
            queue: asyncio.Queue[np.ndarray] = asyncio.Queue()
            player = asyncio.create_task(_play(pcm, last_voiced, queue.put, done, times))
            while not (player.done() and queue.empty()):
                with contextlib.suppress(asyncio.TimeoutError):
                    yield AudioFrame(pcm=await asyncio.wait_for(queue.get(), 0.1), sample_rate=RATE)

    class Milestones:
        def on_frame(self, frame: Frame, source: Stage | None, direction: Direction) -> None:
            if direction is not Direction.DOWNSTREAM or source is None:
                return
            names = {SpeechEndedFrame: "vad_end", LLMTokenFrame: "first_token", TextChunkFrame: "first_chunk"}
            if type(frame) in names:
                times.setdefault(names[type(frame)], time.monotonic())
            elif isinstance(frame, TranscriptFrame):
                times.setdefault("transcript" if frame.final else "provisional_transcript", time.monotonic())
            elif isinstance(frame, SpeculationConfirmFrame):
                times.setdefault("speculation_confirmed", time.monotonic())
            elif isinstance(frame, TTSAudioFrame) and pipeline.stages.index(source) == len(pipeline.stages) - 2:
                times.setdefault("first_audio", time.monotonic())  # what reaches the speaker
                done.set()

    loaded = load_pipeline(REPO / "pipeline.yaml")
    stages: list[Stage] = [Question(name="question")]
    tmp = tempfile.TemporaryDirectory()
    for spec in loaded.stages[1:-1]:
        config = spec.config
        if spec.type_name == "asr":
            config = config.replace(model=voices["whisper"])
        elif spec.type_name == "llm":
            config = config.replace(engine="llamacpp", model=str(args.gguf), max_tokens=args.max_tokens)
        elif issubclass(spec.stage_class, TTSStage):
            own, _ = config.split(config.model_dump())  # the stage's settings; the engine's come from this run
            tts = {"engine": args.tts}
            if args.tts == "piper":
                tts["model"] = voices["piper"]
            else:
                tts.update(model=voices["kokoro_model"], voices=voices["kokoro_voices"], voice=voices["kokoro_voice"])
            stages.append(TTSStage(type(config).model_validate({**own, **tts}), name=spec.name))
            continue
        stages.append(spec.stage_class(config, name=spec.name))
    stages.append(WavSink(WavSinkConfig(path=str(Path(tmp.name) / "reply.wav")), name="speaker"))
    built = build_pipeline(stages, observers=[Milestones()])
    pipeline = built.pipeline
    await built.setup()
    run = asyncio.create_task(built.run(setup=False))
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
        await asyncio.sleep(0.2)
    finally:
        run.cancel()
        with contextlib.suppress(BaseException):
            await run
        tmp.cleanup()
    return _result(times)


async def child_pipecat(args: argparse.Namespace) -> dict[str, Any]:
    """Pipecat 1.14 as its examples build it: STT, user aggregator (Silero + Smart Turn), LLM, TTS, output."""
    from pipecat.audio.vad.silero import SileroVADAnalyzer
    from pipecat.frames.frames import (
        InputAudioRawFrame,
        LLMTextFrame,
        StartFrame,
        TranscriptionFrame,
        TTSAudioRawFrame,
        TTSStartedFrame,
        UserStoppedSpeakingFrame,
        VADUserStoppedSpeakingFrame,
    )
    from pipecat.observers.base_observer import BaseObserver
    from pipecat.pipeline.pipeline import Pipeline
    from pipecat.pipeline.worker import PipelineParams, PipelineWorker
    from pipecat.processors.aggregators.llm_context import LLMContext
    from pipecat.processors.aggregators.llm_response_universal import (
        LLMContextAggregatorPair,
        LLMUserAggregatorParams,
    )
    from pipecat.processors.frame_processor import FrameDirection, FrameProcessor
    from pipecat.services.openai.llm import OpenAILLMService
    from pipecat.services.whisper.stt import WhisperSTTService
    from pipecat.workers.runner import WorkerRunner

    voices = json.loads(args.voices)
    pcm, last_voiced = _question(args.question_wav)
    done = asyncio.Event()
    times: dict[str, float] = {}

    class Microphone(FrameProcessor):
        """Stands in for the transport input: plays the question in real time once the pipeline has started."""

        def __init__(self) -> None:
            super().__init__()
            self._player: asyncio.Task[None] | None = None

        async def process_frame(self, frame: Any, direction: FrameDirection) -> None:
            await super().process_frame(frame, direction)
            await self.push_frame(frame, direction)
            if isinstance(frame, StartFrame) and self._player is None:
                self._player = asyncio.create_task(self._play())

        async def _play(self) -> None:
            async def send(block: np.ndarray) -> None:
                audio = (np.clip(block, -1, 1) * 32767).astype(np.int16).tobytes()
                await self.push_frame(InputAudioRawFrame(audio=audio, sample_rate=RATE, num_channels=1))

            await _play(pcm, last_voiced, send, done, times)

    names = {
        VADUserStoppedSpeakingFrame: "vad_end",
        UserStoppedSpeakingFrame: "turn_end",
        TranscriptionFrame: "transcript",
        LLMTextFrame: "first_token",
        TTSStartedFrame: "tts_started",
        TTSAudioRawFrame: "first_audio",
    }

    class Milestones(BaseObserver):
        async def on_push_frame(self, data: Any) -> None:
            name = names.get(type(data.frame))
            if name is not None and name not in times:
                times[name] = time.monotonic()
                if name == "first_audio":
                    done.set()

    if args.tts == "piper":
        from pipecat.services.piper.tts import PiperTTSService

        model = Path(voices["piper"])
        tts = PiperTTSService(settings=PiperTTSService.Settings(voice=model.stem), download_dir=model.parent)
    else:
        from pipecat.services.kokoro.tts import KokoroTTSService

        tts = KokoroTTSService(
            model_path=voices["kokoro_model"],
            voices_path=voices["kokoro_voices"],
            settings=KokoroTTSService.Settings(voice=voices["kokoro_voice"]),
        )
    stt = WhisperSTTService(settings=WhisperSTTService.Settings(model=voices["whisper"]), device="cpu")
    llm = OpenAILLMService(
        api_key="none",
        base_url=args.llm_url,
        settings=OpenAILLMService.Settings(model="local", system_instruction=SYSTEM_PROMPT, max_tokens=args.max_tokens),
    )
    llm.supports_developer_role = False  # llama_cpp.server accepts only system/user/assistant/tool messages
    user, assistant = LLMContextAggregatorPair(
        LLMContext(), user_params=LLMUserAggregatorParams(vad_analyzer=SileroVADAnalyzer())
    )
    pipeline = Pipeline([Microphone(), stt, user, llm, tts, assistant])
    worker = PipelineWorker(
        pipeline, params=PipelineParams(audio_in_sample_rate=RATE), observers=[Milestones()], idle_timeout_secs=None
    )
    runner = WorkerRunner(handle_sigint=False)
    await runner.add_workers(worker)
    running = asyncio.create_task(runner.run())
    try:
        await asyncio.wait_for(done.wait(), args.timeout)
        await asyncio.sleep(0.2)
    finally:
        await worker.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(running, 10)
    return _result(times)


def _result(times: dict[str, float]) -> dict[str, Any]:
    voice_end = times.pop("voice_end", None)
    if voice_end is None or "first_audio" not in times:
        return {"failed": True, "error": "no reply audio", "seen": sorted(times)}
    return {
        "voice_to_voice_ms": (times["first_audio"] - voice_end) * 1000,
        "milestones_ms": {k: (t - voice_end) * 1000 for k, t in times.items()},
    }


CHILDREN = {"voicepipe": child_voicepipe, "pipecat": child_pipecat}

if __name__ == "__main__":
    sys.exit(main())
