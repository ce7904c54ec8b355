"""The shared chat API, run against every engine in ``ENGINES`` on a tiny random Qwen3.5 with the real vocabulary."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from voicepipe.llm import ChatMessage, ChatModel, ChatSamplingConfig
from voicepipe.llm.chat_format import Utf8StreamDecoder, render_chat

IM_START, IM_END, THINK, END_THINK, NL, NL2 = 248045, 248046, 248068, 248069, 198, 271
GREEDY = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, disable_thinking=True, max_tokens=24)

HISTORY = [
    ChatMessage("system", "Answer briefly."),
    ChatMessage("user", "What is Swift?"),
    ChatMessage("assistant", "<think>\nThe user asks about Swift.\n</think>\n\nA programming language."),
    ChatMessage("user", "Who made it?"),
]


# -- template ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("disable_thinking", [False, True])
def test_chat_template_token_ids(chat: ChatModel, hf_tokenizer, disable_thinking: bool) -> None:
    ids = chat.encode_chat(HISTORY, disable_thinking=disable_thinking)
    expected_text = (
        "<|im_start|>system\nAnswer briefly.<|im_end|>\n"
        "<|im_start|>user\nWhat is Swift?<|im_end|>\n"
        "<|im_start|>assistant\nA programming language.<|im_end|>\n"  # the earlier turn's think block is dropped
        "<|im_start|>user\nWho made it?<|im_end|>\n"
        "<|im_start|>assistant\n" + ("<think>\n\n</think>\n\n" if disable_thinking else "")
    )
    assert render_chat(HISTORY, disable_thinking=disable_thinking) == expected_text
    assert ids == hf_tokenizer.encode(expected_text, add_special_tokens=False)
    assert ids[0] == IM_START and ids.count(IM_START) == 5 and ids.count(IM_END) == 4
    assert THINK not in ids[:-5]  # no think token in the history
    tail = [IM_START, 74455, NL] + ([THINK, NL2, END_THINK, NL2] if disable_thinking else [])
    assert ids[-len(tail) :] == tail  # 74455 = "assistant"


def test_sampling_config_validation() -> None:
    bad_values = [("temperature", -1), ("top_p", 0.0), ("top_k", -5), ("max_tokens", 0), ("seed", -1), ("top_k", True)]
    for field, bad in bad_values:
        with pytest.raises(ValueError, match=rf"ChatSamplingConfig\n{field}\n  Input should be"):
            ChatSamplingConfig(**{field: bad})
    with pytest.raises(ValueError, match="role must be one of"):
        ChatMessage("robot", "hi")


# -- numerics against transformers ------------------------------------------------------------------------------------


def test_greedy_and_logits_match_transformers(chat: ChatModel, hf_model, hf_greedy, record_property) -> None:
    torch = pytest.importorskip("torch")
    prompt = chat.encode_chat(HISTORY, disable_thinking=True)
    ours = chat.generate_tokens(prompt, ChatSamplingConfig(temperature=0, repetition_penalty=1.0, max_tokens=32))
    ref = hf_greedy(prompt, 32)
    assert len(set(ref)) > 8, "the reference must not be degenerate, or the comparison proves nothing"
    assert ours == ref[: len(ours)] and len(ours) == 32
    # prefill + 16 cached decode steps, token by token, against one full forward pass of transformers
    seq = prompt + ref[:16]
    ours_logits = chat.logits_for(seq)
    with torch.no_grad():
        ref_logits = hf_model(torch.tensor([seq])).logits[0].numpy()
    rel = float(np.abs(ours_logits - ref_logits).max() / np.abs(ref_logits).max())
    record_property("max_relative_logit_error", rel)
    print(f"max relative logit error vs transformers: {rel:.2e}")
    assert rel <= 1e-3


def _turns(chat: ChatModel, users: list[str]) -> tuple[list[ChatMessage], list[str]]:
    messages = [ChatMessage("system", "Answer briefly.")]
    replies = []
    for text in users:
        messages.append(ChatMessage("user", text))
        reply = chat.generate(messages, GREEDY)
        replies.append(reply)
        messages.append(ChatMessage("assistant", reply))
    return messages, replies


def _history_len(chat: ChatModel, messages: list[ChatMessage]) -> int:
    """Tokens of ``messages`` (ending with a user message) without the 3-token generation prompt."""
    return len(chat.encode_chat(messages, disable_thinking=False)) - 3


def test_turn3_from_prompt_cache_equals_cold_run(chat: ChatModel) -> None:
    messages, replies = _turns(chat, ["Hi there.", "What is Swift?", "Who made it?"])
    warm_stats, warm_tokens = chat.last_stats, list(chat.last_tokens)
    # turn 3 restored the snapshot taken at turn 2's boundary and prefilled only the rest
    turn3_prompt = chat.encode_chat(messages[:-1], disable_thinking=True)
    assert warm_stats.cached_tokens == _history_len(chat, messages[:4])
    assert warm_stats.prefill_tokens == len(turn3_prompt) - warm_stats.cached_tokens
    chat.reset_state()
    cold = chat.generate(messages[:-1], GREEDY)
    assert chat.last_stats.cached_tokens == 0
    assert cold == replies[-1] and chat.last_tokens == warm_tokens


def test_edited_history_falls_back_to_an_older_snapshot(chat: ChatModel) -> None:
    messages, _ = _turns(chat, ["Hi there.", "What is Swift?"])
    # a barge-in cut the first reply short: the turn-2 snapshot no longer matches, the turn-1 one still does
    messages[2] = ChatMessage("assistant", messages[2].content[:5])
    messages.append(ChatMessage("user", "Go on."))
    edited = chat.generate(messages, GREEDY)
    assert chat.last_stats.cached_tokens == _history_len(chat, messages[:2])
    chat.reset_state()
    assert chat.generate(messages, GREEDY) == edited


def test_warm_prefills_the_finished_turn(chat: ChatModel) -> None:
    messages, _ = _turns(chat, ["Hi there."])
    chat.warm(messages)
    messages.append(ChatMessage("user", "And then?"))
    warm = chat.generate(messages, GREEDY)
    new_user = len(chat.encode_chat([ChatMessage("user", "And then?")], disable_thinking=True))
    assert chat.last_stats.prefill_tokens == new_user  # only the new user message + generation prompt
    chat.reset_state()
    assert chat.generate(messages, GREEDY) == warm


# -- thinking ---------------------------------------------------------------------------------------------------------


def test_thinking_cap_forces_end_of_think(chat: ChatModel) -> None:
    # a reply that has begun thinking (continued from an open assistant message): the model is inside <think>
    messages = [ChatMessage("user", "Think about it."), ChatMessage("assistant", "<think>\n")]
    sampling = ChatSamplingConfig(
        temperature=0, repetition_penalty=1.0, max_thinking_tokens=5, max_tokens=20, disable_thinking=False
    )
    text = chat.generate(messages, sampling)
    stats = chat.last_stats
    assert stats.thinking_tokens == 5 and stats.forced_think_close
    assert chat.last_tokens[5:7] == [END_THINK, NL2]  # forced right after the 5th thinking token
    assert chat.last_thinking == chat.detokenize(chat.last_tokens[:5])
    assert text and text == chat.detokenize(chat.last_tokens[7:]).lstrip()  # the answer went on after the cap
    assert chat.last_thinking not in text


def test_no_thinking_cap_when_disabled(chat: ChatModel) -> None:
    chat.generate([ChatMessage("user", "Hi")], GREEDY)
    assert chat.last_stats.thinking_tokens == 0 and chat.last_thinking == ""


# -- streaming --------------------------------------------------------------------------------------------------------


def test_utf8_decoder_never_splits_a_character(chat: ChatModel) -> None:
    text = "naïve 🎉 世界 ok"
    tokens = chat.tokenize(text)
    pieces = [chat._call(chat._token_bytes, t) for t in tokens]
    assert any(_invalid_utf8(p) for p in pieces), "the text must contain a character split across tokens"
    decoder = Utf8StreamDecoder()
    deltas = [decoder.feed(p) for p in pieces] + [decoder.flush()]
    assert "".join(deltas) == text and not any("\ufffd" in d for d in deltas)


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


def test_stream_deltas_join_to_the_reply(chat: ChatModel) -> None:
    sampling = ChatSamplingConfig(temperature=1.0, seed=3, disable_thinking=True, max_tokens=40)
    deltas = list(chat.generate_stream([ChatMessage("user", "Say something in Japanese.")], sampling))
    assert deltas and all(deltas)
    assert "".join(deltas) == chat.detokenize(chat.last_tokens).lstrip()
    again = chat.generate([ChatMessage("user", "Say something in Japanese.")], sampling)
    assert again == "".join(deltas)  # the seed makes sampling reproducible


async def test_async_stream_matches_sync(chat: ChatModel) -> None:
    messages = [ChatMessage("user", "Hello")]
    sync_text = chat.generate(messages, GREEDY)
    chat.reset_state()
    async_text = "".join([d async for d in chat.agenerate_stream(messages, GREEDY)])
    assert async_text == sync_text


async def test_cancel_stops_within_one_token_and_keeps_the_cache_consistent(chat: ChatModel) -> None:
    messages = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "Tell me a story.")]
    long = ChatSamplingConfig(temperature=0, repetition_penalty=1.0, disable_thinking=True, max_tokens=400)
    received: list[str] = []
    ticks = 0

    async def consume() -> None:
        async for delta in chat.agenerate_stream(messages, long):
            received.append(delta)

    async def ticker() -> None:  # proves the event loop stays free while tokens are computed
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.001)

    tick_task = asyncio.create_task(ticker())
    task = asyncio.create_task(consume())
    while len(received) < 3:
        await asyncio.sleep(0.001)
    at_cancel = chat.last_stats.generated_tokens
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await chat.arun(lambda: None)  # wait until the model thread is idle
    tick_task.cancel()
    stats = chat.last_stats
    assert stats.stop_reason == "cancelled"
    assert stats.generated_tokens <= at_cancel + 1  # stopped within one token of the cancel
    assert ticks > 3
    # the conversation goes on from the cache and still equals a cold run
    follow = messages + [ChatMessage("assistant", "".join(received)), ChatMessage("user", "Go on.")]
    warm = chat.generate(follow, GREEDY)
    assert chat.last_stats.cached_tokens > 0
    chat.reset_state()
    assert chat.generate(follow, GREEDY) == warm


async def test_closing_the_stream_early_stops_generation(chat: ChatModel) -> None:
    long = ChatSamplingConfig(temperature=0, repetition_penalty=1.0, disable_thinking=True, max_tokens=400)
    async with contextlib.aclosing(chat.agenerate_stream([ChatMessage("user", "Count.")], long)) as stream:
        async for _ in stream:
            break
    assert chat.last_stats.stop_reason == "cancelled" and chat.last_stats.generated_tokens <= 3


# -- state and memory -------------------------------------------------------------------------------------------------


def test_reset_state_forgets_the_conversation(chat: ChatModel) -> None:
    _turns(chat, ["Hi there.", "What is Swift?"])
    assert len(chat.prompt_cache) > 0
    chat.reset_state()
    assert len(chat.prompt_cache) == 0
    chat.generate([ChatMessage("system", "Answer briefly."), ChatMessage("user", "Hi there.")], GREEDY)
    assert chat.last_stats.cached_tokens == 0


def test_unload_then_use_reloads_and_keeps_the_prompt_cache(chat: ChatModel) -> None:
    psutil = pytest.importorskip("psutil")
    messages, replies = _turns(chat, ["Hi there.", "What is Swift?"])
    footprint = chat.memory_footprint
    assert footprint > 50_000_000  # the tiny model's 248k-token embedding alone is ~127 MB in fp32
    rss_loaded = psutil.Process().memory_info().rss
    chat.unload()
    rss_unloaded = psutil.Process().memory_info().rss
    assert not chat.is_loaded and chat.memory_footprint == 0
    assert rss_loaded - rss_unloaded > footprint // 2, "unload must give the weights' memory back"
    assert len(chat.prompt_cache) > 0
    messages.append(ChatMessage("user", "Who made it?"))
    after = chat.generate(messages, GREEDY)  # using an unloaded model reloads it
    assert chat.is_loaded and chat.memory_footprint == footprint
    assert chat.last_stats.cached_tokens > 0  # a snapshot from before the unload was restored
    chat.reset_state()
    assert chat.generate(messages, GREEDY) == after


def test_engine_cancel_ends_the_reply_after_the_current_token(chat: ChatModel) -> None:
    """``cancel()`` (the Engine contract) comes from another thread than the model's: the reply ends at the next step."""
    messages = [ChatMessage("user", "Tell me a long story.")]
    long = ChatSamplingConfig(temperature=0, repetition_penalty=1.0, max_tokens=400)
    deltas = []
    for delta in chat.generate_stream(messages, long):
        deltas.append(delta)
        if len(deltas) == 3:
            chat.cancel()  # this thread is not the model's
    stats = chat.last_stats
    assert stats.stop_reason == "cancelled" and len(deltas) == 3
    assert chat.generate(messages, GREEDY)  # the next reply runs normally
