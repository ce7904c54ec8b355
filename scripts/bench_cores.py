"""Two cores, shared: llama.cpp decode speed while the TTS speaks vs alone, and the TTS's first chunk with and without
the core schedule (``voicepipe.cores``: the LLM waits while the first chunk is synthesized).

Cases, each timed over ``--repeat`` rounds in one process:
  decode alone          llama.cpp generates ``--tokens`` tokens, nothing else runs
  decode + TTS          the same while the TTS engine synthesizes reply sentences back to back on its own thread,
                        llama.cpp on all its threads ("all threads") or, as in the pipeline, on ``shared_threads``
                        while the TTS marks itself busy (voicepipe.cores); the TTS's own speed (seconds of audio
                        per second) beside it is printed too
  first chunk alone     the TTS synthesizes a short first chunk, nothing else runs
  first chunk + decode  the same while llama.cpp decodes (schedule off: both share the cores)
  first chunk, sched.   the same with the schedule on: the LLM waits during the chunk (as in the pipeline)

    .venv/bin/python scripts/bench_cores.py --tts kokoro piper                       # real 0.5B chat GGUF
    .venv/bin/python scripts/bench_cores.py --tts piper --repeat 1 --tokens 16     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.support: the real weights the tests use

FIRST_CHUNK = "Sure, I can help you with that."
SENTENCES = [
    "The museum opens at nine in the morning and closes at six, except on public holidays.",
    "Tickets can be bought online or at the front desk, and children under twelve get in for free.",
]
PROMPT = "Tell me a long story about a lighthouse keeper and his cat."


def load_tts(name: str, threads: int | None):  # noqa: ANN201 - a loaded TTSEngine
    from tests.support import tts_assets
    from voicepipe.tts.kokoro import KokoroEngine
    from voicepipe.tts.piper import PiperEngine

    levers = {} if threads is None else {"threads": threads}
    if name == "kokoro":
        files = {"model": str(tts_assets.kokoro_model_path()), "voices": str(tts_assets.kokoro_voices_path())}
        engine = KokoroEngine(KokoroEngine.Config(**files, voice=tts_assets.KOKORO_TEST_VOICE, **levers))
    else:
        engine = PiperEngine(PiperEngine.Config(model=str(tts_assets.piper_joe_model_path()), **levers))
    engine.load()
    engine.synthesize("Hello, this is a test.")  # as the stage's warm-up does
    return engine


def decode_rate(model, tokens: int) -> float:  # noqa: ANN001
    """Tokens per second of one greedy reply of ``tokens`` tokens (after its prefill)."""
    from voicepipe.llm import ChatMessage, ChatSamplingConfig

    sampling = ChatSamplingConfig(temperature=0.0, max_tokens=tokens, disable_thinking=True, repetition_penalty=1.0)
    model.reset_state()
    first, count = None, 0
    for _ in model.generate_stream([ChatMessage("user", PROMPT)], sampling):
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return (count - 1) / (end - first) if first is not None and count > 1 and end > first else float("nan")


def tts_loop(engine, stop: threading.Event, *, busy: bool, spoken: list[float]) -> None:  # noqa: ANN001
    """Synthesize SENTENCES until ``stop``; ``busy`` marks each synthesis as the TTS stage does; appends seconds of
    audio per second of synthesis to ``spoken``."""
    import contextlib

    from voicepipe.cores import schedule

    while not stop.is_set():
        for sentence in SENTENCES:
            if stop.is_set():
                return
            start = time.perf_counter()
            with schedule.busy("tts") if busy else contextlib.nullcontext():
                audio = engine.synthesize(sentence)
            spoken.append(len(audio) / engine.sample_rate / (time.perf_counter() - start))


def first_chunk_s(engine, model, *, decode: bool, scheduled: bool) -> float:  # noqa: ANN001
    """Seconds to synthesize FIRST_CHUNK, optionally while the LLM decodes, with or without the schedule."""
    from voicepipe.cores import schedule

    stop = threading.Event()
    worker = None
    if decode:

        def keep_decoding() -> None:
            while not stop.is_set():
                decode_rate(model, 24)

        worker = threading.Thread(target=keep_decoding)
        worker.start()
        time.sleep(0.5)  # let the decode get going (past its prefill)
    schedule.enabled = scheduled
    try:
        start = time.perf_counter()
        with schedule.critical("tts"):
            engine.synthesize(FIRST_CHUNK)
        return time.perf_counter() - start
    finally:
        schedule.enabled = True
        stop.set()
        if worker is not None:
            worker.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tts", nargs="+", choices=("kokoro", "piper"), default=["kokoro", "piper"])
    parser.add_argument("--gguf", help="GGUF chat model (default: the real Qwen2.5-Coder-0.5B Q4_K_M of the dev extra)")
    parser.add_argument("--llm-threads", type=int, default=os.cpu_count())
    parser.add_argument("--tts-threads", type=int, help="TTS onnxruntime threads (default: the engine's)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    gguf = args.gguf
    if gguf is None:
        from tests.support.llm_assets import qwen25_05b_gguf

        gguf = str(qwen25_05b_gguf())
    model = Qwen35LlamaCppChat.from_pretrained(gguf, n_ctx=2048, n_threads=args.llm_threads, progress=False)
    print(
        f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; llm threads {args.llm_threads}, "
        f"tts threads {args.tts_threads or 'the engine default'}; {os.path.basename(gguf)}"
    )
    alone = [decode_rate(model, args.tokens) for _ in range(args.repeat)]
    print(f"decode alone:          {statistics.median(alone):6.1f} tok/s")
    for name in args.tts:
        engine = load_tts(name, args.tts_threads)
        for label, busy in (("all threads", False), (f"shared_threads={model.config.shared_threads}", True)):
            rates: list[float] = []
            spoken: list[float] = []
            for _ in range(args.repeat):
                stop = threading.Event()
                speaker = threading.Thread(
                    target=tts_loop, args=(engine, stop), kwargs={"busy": busy, "spoken": spoken}
                )
                speaker.start()
                try:
                    rates.append(decode_rate(model, args.tokens))
                finally:
                    stop.set()
                    speaker.join()
            print(
                f"decode + {name:6s} TTS, {label:16s} {statistics.median(rates):6.1f} tok/s; "
                f"TTS {statistics.median(spoken):5.1f}x real time"
            )
        for label, decode, scheduled in (
            ("alone", False, False),
            ("+ decode", True, False),
            ("+ decode, scheduled", True, True),
        ):
            times = [first_chunk_s(engine, model, decode=decode, scheduled=scheduled) for _ in range(args.repeat)]
            print(f"{name} first chunk {label:20s} {statistics.median(times) * 1000:6.0f} ms")
        engine.unload()
    model.close()


if __name__ == "__main__":
    main()
