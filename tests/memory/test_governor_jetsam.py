"""The proof: a full-size Qwen3.5-0.8B (random weights, Q4_K_M on llama.cpp) and real Kokoro under a jetsam limit that
lies below "everything loaded and working" and above the largest single model.

Three runs of the same five-turn conversation, each in its own process:
1. everything loaded, no limit: the reference replies, and the sizes the limit is derived from (measured, not assumed):
   halfway between the RSS with both models loaded and idle, and the lowest peak of a turn with both loaded and the
   TTS synthesizing (Kokoro's synthesis needs far more than its loaded size);
2. governor on (``budget_mb`` = the limit, policy auto) under the jetsam limit: all five turns complete, every chunk is
   spoken to its last character, the replies equal the reference (greedy: the conversation survived each
   unload/reload), each unload frees >= 80 % of the LLM's footprint, the peak stays under the limit;
3. no governor under the same limit: the simulator kills the run (SIGKILL, one line on stderr).
"""

from __future__ import annotations

import pytest

from voicepipe.tts.normalize import normalize_text

from .conftest import drive

PROMPTS = [
    "Hello, who are you?",
    "What is the weather like today?",
    "Tell me a short joke.",
    "How far away is the moon?",
    "Thank you, goodbye.",
]
MAX_TOKENS = 3


def pipeline(gguf, kokoro: tuple[str, str, str], out, memory: str = "") -> str:
    model, voices, voice = kokoro
    # repetition_penalty 10: greedy decoding of random weights otherwise repeats one whitespace token (nothing to say);
    # one snapshot is all a linear conversation needs and keeps the floor flat.
    return f"""stages:
  - type: llm
    engine: llamacpp
    model: {gguf}
    temperature: 0
    max_tokens: {MAX_TOKENS}
    repetition_penalty: 10
    n_threads: 1
    n_ctx: 2048
    max_snapshots: 1
  - type: chunker
  - type: kokoro
    model: {model}
    voices: {voices}
    voice: {voice}
    threads: 1
  - type: wav-sink
    path: {out}
{memory}"""


def fully_spoken(turn: dict) -> bool:
    """Every chunk with something to say was played to its last character."""
    for index, text in turn["chunks"].items():
        if normalize_text(text, "en-us") and turn["spoken"].get(index) != len(text):
            return False
    return True


@pytest.mark.slow
def test_governor_keeps_the_conversation_alive_where_jetsam_kills_it_without(tmp_path, full_q4_gguf, kokoro_files):
    # 1. Everything loaded together: reference replies and measured sizes.
    everything = pipeline(full_q4_gguf, kokoro_files, tmp_path / "reference.wav", "memory:\n  policy: concurrent\n")
    proc, reference, summary = drive(tmp_path, "reference", everything, PROMPTS)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(reference) == len(PROMPTS) and summary is not None
    sizes = summary["governor"]
    base = sizes["baseline_mb"]
    llm = max(sizes["llm"]["reported_mb"], sizes["llm"]["measured_mb"])
    tts = max(sizes["tts"]["reported_mb"], sizes["tts"]["measured_mb"])
    assert llm > 400, "a Q4_K_M 0.8B model is about 500 MB"
    # Everything loaded and working: each turn's peak while the TTS synthesizes next to the resident LLM. The limit
    # lies halfway between the idle both-loaded RSS and the lowest of those peaks, far above the largest single model.
    loaded = base + llm + tts
    everything_peak = min(t["metrics"]["peak_rss_mb"] for t in reference)
    limit = round(loaded + 0.5 * (everything_peak - loaded))
    assert base + max(llm, tts) < limit < everything_peak, (base, llm, tts, everything_peak, limit)
    assert limit - loaded > 40, f"inconclusive: synthesis added only {everything_peak - loaded:.0f} MB"

    # 2. Governor on, under the limit: five complete turns, all spoken, same replies.
    governed = pipeline(
        full_q4_gguf, kokoro_files, tmp_path / "governed.wav", f"memory:\n  budget_mb: {limit}\n  policy: auto\n"
    )
    proc, turns, summary = drive(tmp_path, "governed", governed, PROMPTS, jetsam_mb=limit)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert summary is not None and summary["governor"]["mode"] == "sequential"
    assert len(turns) == len(PROMPTS)
    for turn in turns:
        assert turn["audio_s"] > 0 and fully_spoken(turn), turn
    assert [t["reply"] for t in turns] == [t["reply"] for t in reference]
    # The prompt cache outlived every unload: each later turn prefilled only its new message, as without unloads.
    cached = [t["metrics"]["llm_cached_tokens"] for t in turns]
    assert cached == [t["metrics"]["llm_cached_tokens"] for t in reference] and all(c > 0 for c in cached[1:])
    assert summary["peak_rss_mb"] < limit
    assert summary["sample_rate_hz"] >= 50
    for turn in turns:
        m = turn["metrics"]
        assert m["sequential"] == 1
        assert m["llm_rss_drop_mb"] >= 0.8 * m["llm_footprint_mb"], m
        assert m["peak_rss_mb"] < limit
        assert {"llm_unload_ms", "tts_load_ms", "tts_unload_ms", "llm_reload_ms", "reload_hidden_ms"} <= m.keys()

    # 3. No governor, same limit: killed like iOS would.
    proc, turns, summary = drive(
        tmp_path, "ungoverned", pipeline(full_q4_gguf, kokoro_files, tmp_path / "off.wav"), PROMPTS, jetsam_mb=limit
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert summary is None and len(turns) < len(PROMPTS)
    killed = [line for line in proc.stderr.splitlines() if line.startswith("jetsam: killed")]
    assert len(killed) == 1 and f"limit of {limit} MB" in killed[0]
