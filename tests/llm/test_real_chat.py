"""A real chat model (Qwen2.5-Coder-0.5B-Instruct, shipped on PyPI) on the llama.cpp engine, with its own template.

These tests hear the truth at the text level: the engine renders the GGUF's own chat template, stops at its end of
turn, keeps a two-turn conversation in the prompt cache (also across unload/reload, as the memory governor does), and
a GGUF without a template gets one clear error. Assertions are keywords a 0.5B model reliably gets, not exact strings.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from voicepipe.errors import UserError
from voicepipe.llm import ChatMessage, ChatSamplingConfig
from voicepipe.llm.chat_format import CHATML_TEMPLATE, JinjaChatTemplate

pytest.importorskip("llama_cpp")

SYSTEM = ChatMessage("system", "You are a helpful voice assistant. Answer in one to three short spoken sentences.")
GREEDY = ChatSamplingConfig(temperature=0.0, max_tokens=48, disable_thinking=True)


@pytest.fixture(scope="module")
def real_gguf() -> Path:
    from tests.support.llm_assets import qwen25_05b_gguf

    return qwen25_05b_gguf()


@pytest.fixture(scope="module")
def model(real_gguf: Path):  # noqa: ANN201
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    chat = Qwen35LlamaCppChat.from_pretrained(real_gguf, n_ctx=2048, progress=False)
    yield chat
    chat.close()


def test_the_gguf_template_is_used_and_the_answer_is_true(model) -> None:  # noqa: ANN001
    model.reset_state()
    assert model.chat_template.name.endswith("'s own")
    prompt = model.chat_template.render_prompt([SYSTEM, ChatMessage("user", "Hi")], disable_thinking=True)
    assert prompt.endswith("<|im_start|>assistant\n") and "<think>" not in prompt  # ChatML, no Qwen3.5 think block
    tokens = model.encode_chat([SYSTEM, ChatMessage("user", "Hi")], disable_thinking=True)
    assert tokens.count(model.tokenize("<|im_start|>")[0]) == 3  # special tokens parsed, not spelled out
    reply = model.generate([SYSTEM, ChatMessage("user", "What is the capital of France?")], GREEDY)
    assert "paris" in reply.lower(), reply
    assert model.last_stats.stop_reason == "eos"  # stopped at <|im_end|>, not at max_tokens
    assert "<" not in reply and "im_end" not in reply


@pytest.mark.parametrize("unload_between", [False, True], ids=["loaded", "unloaded-between-turns"])
def test_second_turn_uses_the_first_and_comes_from_the_prompt_cache(model, unload_between: bool) -> None:  # noqa: ANN001
    model.reset_state()
    history = [SYSTEM, ChatMessage("user", "I live in Berlin.")]
    history.append(ChatMessage("assistant", model.generate(history, GREEDY)))
    first_prompt = model.last_stats.prompt_tokens
    if unload_between:
        model.unload()  # what the memory governor does before the TTS speaks
        assert not model.is_loaded
    history.append(ChatMessage("user", "Which city do I live in?"))
    reply = model.generate(history, GREEDY)
    assert "berlin" in reply.lower(), reply
    stats = model.last_stats
    # the first turn's prompt came from a snapshot; only its reply and the new question were prefilled
    assert stats.cached_tokens >= first_prompt - 4, (stats.cached_tokens, first_prompt)
    assert stats.prefill_tokens < stats.prompt_tokens - first_prompt + 8, stats


def test_jinja_history_is_a_prefix_of_the_prompt() -> None:
    pytest.importorskip("jinja2")
    template = JinjaChatTemplate(CHATML_TEMPLATE, name="chatml")
    messages = [SYSTEM, ChatMessage("user", "One?"), ChatMessage("assistant", "Two."), ChatMessage("user", "Three?")]
    history = template.render_history(messages)
    prompt = template.render_prompt(messages)
    assert prompt == history + "<|im_start|>assistant\n"
    # a trailing assistant message is continued, not closed
    assert template.render_prompt([*messages, ChatMessage("assistant", "Fo")]).endswith("<|im_start|>assistant\nFo")


def test_a_gguf_without_a_chat_template_says_how_to_give_one(real_gguf: Path, tmp_path: Path) -> None:
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    bare = tmp_path / "no-template.gguf"
    subprocess.run(
        [sys.executable, "-m", "gguf.scripts.gguf_new_metadata", "--remove-metadata", "tokenizer.chat_template",
         str(real_gguf), str(bare), "--force"],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    chat = Qwen35LlamaCppChat.from_pretrained(bare, load=False, n_ctx=512)
    try:
        with pytest.raises(UserError, match=r"has no chat template: .*chat_format: chatml"):
            chat.load()
        assert not chat.is_loaded
    finally:
        chat.close()
    chatml = Qwen35LlamaCppChat.from_pretrained(
        bare, load=False, n_ctx=512, chat_format="chatml"
    )  # the fix the message names works
    try:
        reply = chatml.generate([SYSTEM, ChatMessage("user", "What is the capital of France?")], GREEDY)
        assert "paris" in reply.lower(), reply
    finally:
        chatml.close()


def test_an_unknown_chat_format_is_a_user_error(real_gguf: Path) -> None:
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    with pytest.raises(UserError, match="chat_format='llama9'"):
        Qwen35LlamaCppChat.from_pretrained(real_gguf, load=False, chat_format="llama9")


def test_the_first_reply_does_not_scan_the_vocabulary(real_gguf: Path, monkeypatch) -> None:  # noqa: ANN001
    """The end-of-generation tokens are found while loading: the first reply of a fresh model, which the user waits
    for, asks llama.cpp about no token of the vocabulary (the scan took ~40 ms of its time to first token)."""
    import llama_cpp

    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    chat = Qwen35LlamaCppChat.from_pretrained(real_gguf, n_ctx=1024, progress=False)
    try:
        chat.load()
        scanned: list[int] = []
        real_is_eog = llama_cpp.llama_vocab_is_eog
        monkeypatch.setattr(
            llama_cpp, "llama_vocab_is_eog", lambda vocab, t: scanned.append(t) or real_is_eog(vocab, t)
        )
        reply = chat.generate([SYSTEM, ChatMessage("user", "What is the capital of France?")], GREEDY)
        assert "paris" in reply.lower(), reply
        assert chat.last_stats.stop_reason == "eos"  # the end of turn was still recognised
        assert scanned == []
    finally:
        chat.close()


@pytest.mark.parametrize(
    ("chat_format", "disable_thinking", "passes"),
    [("gguf", True, 1), ("qwen3.5", True, 2), ("qwen3.5", False, 1)],
    ids=["chatml", "qwen3.5-no-thinking", "qwen3.5"],
)
def test_a_reply_prefills_in_one_pass_where_its_snapshot_serves_the_next_turn(
    real_gguf: Path, chat_format: str, disable_thinking: bool, passes: int
) -> None:
    """Each prefill pass reads every weight, so a reply's new message and header go in one pass, snapshotted whole,
    where that snapshot is a prefix of the next turn (ChatML; Qwen3.5 with thinking). Qwen3.5 without thinking opens
    its reply with an empty think block that the next turn's history leaves out: there the message is snapshotted on
    its own first (two passes). Either way the next turn, after an unload, prefills only what is new."""
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    chat = Qwen35LlamaCppChat.from_pretrained(real_gguf, n_ctx=2048, chat_format=chat_format, progress=False)
    sampling = ChatSamplingConfig(temperature=0.0, max_tokens=24, disable_thinking=disable_thinking)
    events: list[str] = []
    forward, sample = chat._forward, chat._sample
    chat._forward = lambda tokens: events.append(f"pass {len(tokens)}") or forward(tokens)
    chat._sample = lambda: events.append("sample") or sample()
    try:
        chat.warm([SYSTEM])
        events.clear()
        history = [SYSTEM, ChatMessage("user", "I live in Berlin.")]
        first_message = len(chat.tokenize(chat.chat_template.render_history(history)))
        history.append(ChatMessage("assistant", chat.generate(history, sampling)))
        assert len(events[: events.index("sample")]) == passes, events
        chat.unload()  # as the memory governor does between turns: only the prompt cache is left
        chat.generate([*history, ChatMessage("user", "Which country is that in?")], sampling)
        assert chat.last_stats.cached_tokens >= first_message  # the first turn's message came from the cache
    finally:
        chat.close()
