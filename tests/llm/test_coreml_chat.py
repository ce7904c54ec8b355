"""Qwen35CoreMLChat: the chat API over a converted package.

CoreML prediction cannot run off macOS, so on Linux the engine runs with ``TorchRuntime``: a stand-in for the CoreML
runtime that executes the very TorchScript functions coremltools converts (same inputs, same four states), so the
engine's own logic is tested for real: chunked prefill with padding, decode positions, state snapshots for the prompt
cache, unload/reload, the fixed context, sampling. The package itself is checked in ``test_coreml.py``.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("coremltools")
transformers = pytest.importorskip("transformers")

from voicepipe.convert.coreml_torch import STATE_NAMES, load_checkpoint  # noqa: E402
from voicepipe.convert.to_coreml import MANIFEST, PACKAGE, _manifest, trace_function  # noqa: E402
from voicepipe.errors import UserError  # noqa: E402
from voicepipe.llm import ChatMessage, ChatSamplingConfig  # noqa: E402
from voicepipe.llm.coreml import Qwen35CoreMLChat, _FunctionStates, sample_token  # noqa: E402
from voicepipe.testing.checkpoints import tiny_checkpoint  # noqa: E402

SEQ_LEN = 16
MAX_CONTEXT = 256
GREEDY = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, max_tokens=12)


@functools.cache
def _traced(checkpoint: Path):
    model = load_checkpoint(checkpoint, max_context=MAX_CONTEXT)
    return model, {"prefill": trace_function(model, SEQ_LEN), "decode": trace_function(model, 1)}


class TorchRuntime:
    """Fake of the CoreML runtime (which needs macOS): runs the traced prefill/decode functions that coremltools
    converts, with each state object a dict of the four state tensors."""

    instances = 0

    def __init__(self, checkpoint: Path, model_dir: Path, compute_units: str, state_names: tuple[str, ...]) -> None:
        self.model, functions = _traced(checkpoint)  # every predict loads the whole state, so sharing is safe
        self.functions = dict(functions)
        self.state_names = state_names
        TorchRuntime.instances += 1

    def new_state(self) -> dict[str, torch.Tensor]:
        return {name: torch.zeros_like(getattr(self.model, name)) for name in self.state_names}

    def predict(self, function: str, inputs: dict[str, np.ndarray], state: dict[str, torch.Tensor]) -> np.ndarray:
        for name, value in state.items():
            getattr(self.model, name).copy_(value)
        args = [torch.from_numpy(inputs[k]) for k in ("input_ids", "attention_mask", "position")]
        with torch.no_grad():
            logits = self.functions[function](*args)
        for name in state:
            state[name] = getattr(self.model, name).clone()
        return logits.numpy().astype(np.float16)  # CoreML returns fp16 logits

    def read_state(self, state, name):
        return state[name].numpy().astype(np.float16)  # CoreML states are fp16

    def write_state(self, state, name, value):
        state[name] = torch.from_numpy(np.asarray(value, dtype=np.float32))

    def nbytes(self) -> int:
        return sum(p.numel() * 2 for p in self.model.parameters())

    def close(self) -> None:
        self.functions.clear()


@pytest.fixture(scope="module")
def checkpoint() -> Path:
    return tiny_checkpoint("real")


@pytest.fixture(scope="module")
def model_dir(checkpoint, tmp_path_factory) -> Path:
    """A converted-model directory (manifest + tokenizer); the package directory is a placeholder, since the fake
    runtime runs the traced functions instead."""
    import json
    import shutil

    out = tmp_path_factory.mktemp("coreml-chat")
    (out / PACKAGE).mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "config.json"):
        shutil.copy2(checkpoint / name, out / name)
    shape = load_checkpoint(checkpoint, max_context=8).shape
    (out / MANIFEST).write_text(json.dumps(_manifest(checkpoint, shape, MAX_CONTEXT, SEQ_LEN, "int8")))
    return out


@pytest.fixture()
def chat(checkpoint, model_dir):
    def runtime(*args):
        return TorchRuntime(checkpoint, *args)

    model = Qwen35CoreMLChat.from_pretrained(model_dir, runtime=runtime)
    yield model
    model.close()


@pytest.fixture(scope="module")
def reference(checkpoint):
    return transformers.Qwen3_5ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()


def _greedy_reference(reference, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    with torch.no_grad():
        for _ in range(steps):
            tokens.append(int(reference(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt) :]


@pytest.mark.skipif(sys.platform == "darwin", reason="checks the error raised off macOS")
def test_off_macos_one_clear_error(model_dir):
    with pytest.raises(UserError, match=r"CoreML prediction needs macOS.*llamacpp"):
        Qwen35CoreMLChat.from_pretrained(model_dir)
    with pytest.raises(UserError, match="macOS"):
        Qwen35CoreMLChat(Qwen35CoreMLChat.Config(model=str(model_dir)))


def test_options_are_checked(model_dir):
    with pytest.raises(UserError, match="--quantize none"):
        Qwen35CoreMLChat.from_pretrained(model_dir, quantization="none", runtime=TorchRuntime)
    with pytest.raises(UserError, match="needs model"):
        Qwen35CoreMLChat.from_pretrained(None, runtime=TorchRuntime)


def test_rejects_a_directory_that_is_not_converted(tmp_path):
    with pytest.raises(UserError, match="convert_coreml.py"):
        Qwen35CoreMLChat.from_pretrained(tmp_path, runtime=TorchRuntime)
    with pytest.raises(UserError, match="compute_units"):
        Qwen35CoreMLChat.from_pretrained(tmp_path, compute_units="GPU", runtime=TorchRuntime, load=False)


def test_greedy_tokens_match_transformers(chat, reference):
    """A chat prompt longer than two prefill chunks, then greedy decoding: the same tokens as transformers."""
    messages = [
        ChatMessage("system", "You are a helpful voice assistant. Answer in one short sentence."),
        ChatMessage("user", "Name three rivers in Europe, and say which one is the longest, please."),
    ]
    prompt = chat.encode_chat(messages)
    assert len(prompt) > 2 * SEQ_LEN
    got = chat.generate_tokens(prompt, GREEDY)
    want = _greedy_reference(reference, prompt, len(got) + 1)
    assert got == want[: len(got)] and len(got) >= 1
    stop = want[len(got)] if len(got) < GREEDY.max_tokens else None
    assert stop is None or stop in chat._stop_ids()


def test_prefill_positions_and_padding(chat, reference):
    """Logits after every prompt length from 1 to 2 chunks + 3 agree with transformers (every padding amount and the
    prefill/decode split are exercised)."""
    tokens = list(range(2000, 2000 + 2 * SEQ_LEN + 3))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0].numpy()
    for n in (1, 2, SEQ_LEN - 1, SEQ_LEN, SEQ_LEN + 1, 2 * SEQ_LEN + 3):
        chat._call(chat._reset_engine)
        chat._call(chat._forward, tokens[:n])
        got = chat._call(chat._logits)
        rel = np.abs(got - expected[n - 1]).max() / np.abs(expected[n - 1]).max()
        assert rel <= 2e-3, (n, rel)  # fp16 logits, as CoreML returns them


def test_prompt_cache_turns_match_a_cold_start(chat, checkpoint, model_dir):
    """The second turn restores the snapshot of the first (fp16 states, as CoreML keeps them) and prefills only the
    new message; its reply equals a cold start's."""
    first = [ChatMessage("user", "Hello there, how are you today?")]
    reply = chat.generate(first, GREEDY)
    second = first + [ChatMessage("assistant", reply), ChatMessage("user", "And tomorrow?")]
    warm = chat.generate(second, GREEDY)
    assert chat.last_stats.cached_tokens > 0 and chat.last_stats.prefill_tokens < chat.last_stats.prompt_tokens
    chat.reset_state()
    assert len(chat.prompt_cache) == 0
    cold = chat.generate(second, GREEDY)
    assert chat.last_stats.cached_tokens == 0
    assert warm == cold


def test_unload_really_releases_and_reload_answers_the_same(chat):
    messages = [ChatMessage("user", "Count to three.")]
    before = chat.generate(messages, GREEDY)
    assert chat.is_loaded and chat.memory_footprint > 0
    runtimes = TorchRuntime.instances
    chat.unload()
    assert not chat.is_loaded and chat.memory_footprint == 0 and chat._runtime is None
    assert chat.generate(messages, GREEDY) == before  # reloads by itself
    assert TorchRuntime.instances == runtimes + 1 and chat.is_loaded


def test_async_stream_equals_sync(chat):
    messages = [ChatMessage("user", "Say something short.")]
    sync = chat.generate(messages, GREEDY)
    chat.reset_state()

    async def collect():
        return [d async for d in chat.agenerate_stream(messages, GREEDY)]

    assert "".join(asyncio.run(collect())) == sync


def test_context_limit_is_a_user_error(chat):
    with pytest.raises(UserError, match="max-context"):
        chat.generate_tokens(list(range(100, 100 + MAX_CONTEXT + 1)), GREEDY)


def test_state_names_match_the_model():
    assert list(STATE_NAMES) == ["key_cache", "value_cache", "conv_state", "recurrent_state"]


def test_sampler():
    rng = np.random.default_rng(0)
    logits = np.array([0.0, 3.0, 2.9, -1.0], dtype=np.float32)
    assert sample_token(logits, ChatSamplingConfig(temperature=0, repetition_penalty=1.0), [], rng) == 1
    # the penalty makes the repeated best token lose to the runner-up
    assert sample_token(logits, ChatSamplingConfig(temperature=0, repetition_penalty=1.5), [1], rng) == 2
    assert sample_token(logits, ChatSamplingConfig(top_k=1, repetition_penalty=1.0), [], rng) == 1
    draws = [sample_token(logits, ChatSamplingConfig(top_p=0.9, repetition_penalty=1.0), [], rng) for _ in range(200)]
    assert set(draws) == {1, 2}  # top-p drops the unlikely tail
    seeded = [
        sample_token(logits, ChatSamplingConfig(temperature=1.0, seed=5), [], np.random.default_rng(5))
        for _ in range(2)
    ]
    assert seeded[0] == seeded[1]


class _FakeMLState:
    """Stand-in for CoreML's ``MLState`` (macOS only): named arrays behind read_state / write_state."""

    def __init__(self) -> None:
        self.arrays = {name: np.zeros(2, dtype=np.float16) for name in STATE_NAMES}

    def read_state(self, name):
        return self.arrays[name]

    def write_state(self, name, value):
        self.arrays[name] = np.array(value, dtype=np.float16)


class _FakeFunction:
    def make_state(self):
        return _FakeMLState()


def test_function_states_follow_the_active_function():
    """Each function has its own MLState; switching copies the four arrays over, snapshots read the active one."""
    states = _FunctionStates({"prefill": _FakeFunction(), "decode": _FakeFunction()}, STATE_NAMES)
    prefill_state = states.for_function("prefill")
    prefill_state.write_state("recurrent_state", np.array([1.0, 2.0]))
    decode_state = states.for_function("decode")
    assert decode_state is not prefill_state
    np.testing.assert_array_equal(decode_state.read_state("recurrent_state"), [1.0, 2.0])
    decode_state.write_state("key_cache", np.array([3.0, 4.0]))
    np.testing.assert_array_equal(states.read("key_cache"), [3.0, 4.0])
    assert states.for_function("prefill") is prefill_state
    np.testing.assert_array_equal(prefill_state.read_state("key_cache"), [3.0, 4.0])
    states.write("conv_state", np.array([5.0, 6.0]))
    np.testing.assert_array_equal(prefill_state.read_state("conv_state"), [5.0, 6.0])
