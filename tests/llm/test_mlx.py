"""Qwen35MLXChat against transformers on random Qwen3.5 checkpoints of the real layout (fp32), and its engine duties:
prompt cache across turns, sampling, cancellation. The shared chat-API suite (test_chat_api.py) runs on this engine
too: greedy parity over 32 tokens, template ids, thinking cap, UTF-8 streaming, unload/reload with resident memory.

Relative error is ``max|got - want| / max|want|`` over all logits compared.
"""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from voicepipe.assets import file_lock  # noqa: E402
from voicepipe.convert.to_mlx import convert_checkpoint  # noqa: E402
from voicepipe.llm import ChatMessage, ChatSamplingConfig  # noqa: E402
from voicepipe.llm.mlx import Qwen35MLXChat  # noqa: E402
from voicepipe.testing import cache_dir  # noqa: E402
from voicepipe.testing.checkpoints import tiny_checkpoint  # noqa: E402

GREEDY = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=32, disable_thinking=True)
SHORT = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=12, disable_thinking=True)


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def converted(hf_dir, name: str, **kwargs):
    """Convert once per test cache (file-locked: other test processes may convert the same checkpoint)."""
    root = cache_dir("mlx")
    out = root / f"{hf_dir.name}-{name}"
    with file_lock(root / f"{out.name}.lock"):
        if not (out / "config.json").exists():
            convert_checkpoint(hf_dir, out, progress=False, **kwargs)
    return out


@pytest.fixture(scope="module")
def real_dir():
    """Tiny random checkpoint with the real 248,320-token vocabulary and the real tokenizer (fp32)."""
    return tiny_checkpoint("real")


@pytest.fixture(scope="module")
def small_dir():
    """The same tiny model with a 4,096-rank slice of the real BPE: its 248k-wide output layer is what makes the real
    vocabulary slow on CPU, and most engine checks do not need it."""
    return tiny_checkpoint("small")


def load_reference(hf_dir):
    return transformers.Qwen3_5ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def real_chat(real_dir):
    model = Qwen35MLXChat.from_pretrained(converted(real_dir, "fp32"))
    yield model
    model.close()


@pytest.fixture(scope="module")
def chat(small_dir):
    model = Qwen35MLXChat.from_pretrained(converted(small_dir, "fp32"))
    yield model
    model.close()


@pytest.fixture(scope="module")
def small_reference(small_dir):
    return load_reference(small_dir)


def hf_logits(reference, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return reference(torch.tensor([ids])).logits[0].float().numpy()


def hf_greedy(reference, ids: list[int], n: int) -> list[int]:
    """transformers' greedy continuation (it stops after the first stop token, like the engine)."""
    with torch.no_grad():
        out = reference.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids) :].tolist()


def conversation(*turns: str) -> list[ChatMessage]:
    return [ChatMessage("system", "You answer briefly."), *(ChatMessage("user", t) for t in turns)]


def test_prefill_and_cached_decode_logits_match_transformers(real_chat, real_dir):
    chat, reference = real_chat, load_reference(real_dir)
    prompt = chat.encode_chat(conversation("What is the capital of France?"))
    decode = [int(t) for t in np.random.default_rng(0).integers(0, 240_000, 16)]
    want = hf_logits(reference, prompt + decode)

    def run():
        model = chat._model
        cache = model.make_cache()
        rows = [np.array(model(mx.array([prompt]), cache=cache)[0].astype(mx.float32))]
        for token in decode:  # one token at a time through the cache
            rows.append(np.array(model(mx.array([[token]]), cache=cache)[0].astype(mx.float32)))
        return np.concatenate(rows)

    got = chat._call(run)
    assert got.shape == want.shape
    assert rel_err(got[: len(prompt)], want[: len(prompt)]) <= 1e-3
    assert rel_err(got[len(prompt) :], want[len(prompt) :]) <= 1e-3
    # The engine's own hooks (token by token from an empty state) give the same logits.
    assert rel_err(chat.logits_for(prompt[:8]), want[:8]) <= 1e-3


def test_turn_three_from_prompt_cache_equals_cold_run(chat, small_reference):
    reference = small_reference
    chat.reset_state()
    messages = conversation("Hello there.")
    for question in ("And then?", "Why?"):
        reply = chat.generate(messages, SHORT)
        messages += [ChatMessage("assistant", reply), ChatMessage("user", question)]
    cached = chat.generate(messages, SHORT)
    stats, cached_tokens = chat.last_stats, list(chat.last_tokens)
    assert stats.cached_tokens > 0 and stats.prefill_tokens < stats.prompt_tokens, stats
    assert len(set(cached_tokens)) > 4, "a degenerate reply would make the comparison weak"

    prompt = chat.encode_chat(messages, disable_thinking=True)
    assert cached_tokens == hf_greedy(reference, prompt, len(cached_tokens))
    chat.reset_state()
    cold = chat.generate(messages, SHORT)
    assert chat.last_stats.cached_tokens == 0
    assert (cold, chat.last_tokens) == (cached, cached_tokens)


def test_edited_history_falls_back_to_an_older_snapshot(chat):
    chat.reset_state()
    messages = conversation("Hello there.")
    reply = chat.generate(messages, SHORT)
    messages += [ChatMessage("assistant", reply), ChatMessage("user", "More.")]
    full = chat.generate(messages, SHORT)
    # A barge-in cut the last reply: the history now holds a shorter assistant message.
    edited = [*messages[:2], ChatMessage("assistant", reply[: len(reply) // 2]), messages[3]]
    got = chat.generate(edited, SHORT)
    assert 0 < chat.last_stats.cached_tokens < chat.last_stats.prompt_tokens
    chat.reset_state()
    assert chat.generate(edited, SHORT) == got
    assert full  # the unedited turn produced text


def test_seeded_sampling_is_reproducible(chat):
    messages = conversation("Pick a word.")
    sampling = ChatSamplingConfig(
        temperature=5.0, top_k=50, top_p=0.95, repetition_penalty=3.0, max_tokens=12, seed=7, disable_thinking=True
    )
    first = chat.generate(messages, sampling)
    tokens = list(chat.last_tokens)
    assert chat.generate(messages, sampling) == first and chat.last_tokens == tokens
    other = chat.generate(messages, ChatSamplingConfig(**{**sampling.__dict__, "seed": 8}))
    assert chat.last_tokens != tokens or other != first


def test_sampling_hooks_apply_penalty_and_filters(chat):
    """The sampler and the repetition penalty come from mlx-lm; check they are wired to what the config says."""
    prompt = chat.encode_chat(conversation("Pick a word."))
    logits = chat.logits_for(prompt)[-1]  # leaves the live state at the end of the prompt
    top = [int(t) for t in np.argsort(logits)[::-1][:3]]

    def pick(sampling: ChatSamplingConfig, context: list[int]) -> int:
        chat._start_sampling(sampling, context)
        return chat._sample()

    greedy = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0)
    assert chat._call(pick, greedy, prompt) == top[0]
    # A huge penalty on the two best tokens (in the 20-token window) leaves the third best.
    penalised = ChatSamplingConfig(temperature=0.0, repetition_penalty=10.0)
    assert chat._call(pick, penalised, [*prompt, top[0], top[1]]) == top[2]
    # top_k=1 makes any temperature greedy; a seed makes sampling repeatable.
    assert chat._call(pick, ChatSamplingConfig(temperature=5.0, top_k=1, repetition_penalty=1.0), prompt) == top[0]
    hot = ChatSamplingConfig(temperature=5.0, top_k=0, top_p=1.0, repetition_penalty=1.0, seed=3)
    draws = [chat._call(pick, hot, prompt) for _ in range(2)]
    assert draws[0] == draws[1]


async def test_cancelled_stream_stops_and_keeps_the_cache_consistent(chat):
    chat.reset_state()
    messages = conversation("Count to one hundred.")
    sampling = ChatSamplingConfig(**{**GREEDY.__dict__, "max_tokens": 200})
    deltas = []
    async with contextlib.aclosing(chat.agenerate_stream(messages, sampling)) as stream:
        async for delta in stream:
            deltas.append(delta)
            if len(deltas) == 3:
                break
    assert len(deltas) == 3
    assert chat.last_stats.stop_reason == "cancelled"
    assert len(chat.last_tokens) < 20  # stopped within a token or so of the break, not after 200
    # The next turn reuses what is consistent and equals a cold run.
    await asyncio.sleep(0)
    again = chat.generate(messages, SHORT)
    chat.reset_state()
    assert chat.generate(messages, SHORT) == again


def test_stop_ids_include_the_checkpoint_eos(chat, small_dir):
    import json

    eos = json.loads((small_dir / "config.json").read_text())["eos_token_id"]
    assert chat.tokenize("<|im_end|>") == [eos]
    assert eos in chat._stop_ids()


@pytest.mark.parametrize("one_call", [False, True])
def test_queued_step_is_kept_or_undone_to_match_what_is_fed(chat, one_call):
    """``_sample`` queues the forward of the token it draws; feeding that token keeps the queued step, feeding any
    other undoes it. Either way the logits equal a state that was fed the same tokens plainly. ``one_call``: with the
    step the engine takes when the CUDA kernels are on (the whole token compiled once over fixed-capacity KV
    buffers; here with MLX's ops), whose undone write stays in the buffer past the offset until overwritten."""
    from voicepipe.llm.mlx_gated_delta import compiled_decode_step

    prompt = chat.encode_chat(conversation("Count to three."))

    def engine(fn):
        return chat._call(fn)

    def logits_after(extra: list[int]) -> np.ndarray:
        def run():
            chat._reset_engine()
            chat._forward(prompt)
            for token in extra:
                chat._forward([token])
            return chat._logits()

        return engine(run)

    def queued_then(feed: list[int] | None) -> tuple[int, np.ndarray]:
        def run():
            chat._reset_engine()
            chat._forward(prompt)
            chat._start_sampling(ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0), prompt)
            token = chat._sample()
            assert chat._ahead is not None  # the next step was queued
            chat._forward([token] if feed is None else feed)
            return token, chat._logits()

        return engine(run)

    chat.load()
    segmented = chat._step
    try:
        token, kept = queued_then(None)
        other = (token + 1) % 4096
        want = logits_after([token]), logits_after([other, token])
        if one_call:
            chat._step = engine(lambda: compiled_decode_step(chat._model, one_call=True))
            token, kept = queued_then(None)
            capacities = {c.keys.shape[2] for c in chat._cache if type(c).__name__ == "KVCache"}
            assert capacities == {1024}  # the one-call step's buffers (mlx-lm's prefill leaves 256)
        assert rel_err(kept, logits_after([token])) <= 1e-5
        assert rel_err(kept, want[0]) <= 1e-4
        _, undone = queued_then([other, token])  # another token first: the queued step must not count
        assert rel_err(undone, logits_after([other, token])) <= 1e-5
        assert rel_err(undone, want[1]) <= 1e-4
        assert chat._ahead is None
    finally:
        chat._step = segmented
        chat.reset_state()  # the hooks above bypassed the base class's record of the live state
