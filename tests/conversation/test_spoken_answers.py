"""A spoken question through the whole pipeline and ``voicepipe run``: the spoken answer is true, heard back.

voice question (Piper) -> VAD -> Whisper tiny.en -> real chat LLM -> chunker -> Piper / Kokoro -> reply WAV ->
Whisper base must hear the right answer. Two turns: the second answer needs the first turn, comes from the prompt
cache (no full re-prefill), also when the memory governor unloads the LLM for the TTS and reloads it in between.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import soundfile as sf

from .conftest import run_cli, spoken, tts_stage, write_pipeline

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("tts", ["piper", "kokoro"])
def test_the_spoken_answer_is_true(tmp_path: Path, tts: str, piper_model, tiny_en, chat_gguf, listener) -> None:
    question = tmp_path / "question.wav"
    sf.write(question, spoken(piper_model, "What is the capital of France?"), 16000)
    pipeline = write_pipeline(
        tmp_path / "pipeline.yaml", tiny_en=tiny_en, chat_gguf=chat_gguf, tts=tts_stage(tts, piper_model)
    )
    turns = run_cli(pipeline, question, tmp_path / "reply.wav", tmp_path / "metrics.jsonl")

    assert len(turns) == 1, turns
    assert "capital" in turns[0]["transcript"].lower(), turns[0]
    assert "paris" in turns[0]["reply"].lower(), turns[0]
    heard = listener(tmp_path / "reply.wav")
    assert "paris" in heard.lower(), heard


@pytest.mark.parametrize("governed", [False, True], ids=["everything-loaded", "governor-unloads-the-llm"])
def test_the_second_answer_needs_the_first(tmp_path: Path, governed: bool, piper_model, tiny_en, chat_gguf) -> None:
    question = tmp_path / "question.wav"
    sf.write(question, spoken(piper_model, "I live in Berlin.", "Which city do I live in?"), 16000)
    memory = {"budget_mb": 10000, "policy": "sequential"} if governed else None
    pipeline = write_pipeline(
        tmp_path / "pipeline.yaml", tiny_en=tiny_en, chat_gguf=chat_gguf, tts=tts_stage("piper", piper_model),
        memory=memory,
    )  # fmt: skip
    turns = run_cli(pipeline, question, tmp_path / "reply.wav", tmp_path / "metrics.jsonl")

    assert len(turns) == 2, [(t.get("transcript"), t.get("reply")) for t in turns]
    first, second = turns
    assert "berlin" in first["transcript"].lower() and "city" in second["transcript"].lower(), turns
    assert "berlin" in second["reply"].lower(), second["reply"]
    # served from the prompt cache: the first turn was not prefilled again, only the new messages were
    assert second["llm_cached_tokens"] >= first["llm_prompt_tokens"] - 4, (first, second)
    assert second["llm_prefill_tokens"] < second["llm_prompt_tokens"] / 2, second
    if governed:  # the LLM really went out of memory for the TTS and came back between the turns
        assert first.get("llm_unload_ms") is not None and first.get("llm_reload_ms") is not None, first
