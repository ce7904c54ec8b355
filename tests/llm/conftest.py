"""Shared LLM fixtures: random Qwen3.5 checkpoints of the real architecture and one loaded model per engine.

Engines register in ``ENGINES`` (name -> builder taking the tiny real-vocab checkpoint directory). Tests that take
the ``chat`` fixture run once per engine whose backend is installed.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from voicepipe.assets import file_lock
from voicepipe.llm import ChatModel
from voicepipe.testing import cache_dir
from voicepipe.testing.checkpoints import tiny_checkpoint

os.environ.setdefault("VOICEPIPE_CACHE", str(cache_dir("voicepipe-home")))  # conversions land in the test cache


def _gguf_f32(checkpoint: Path) -> Path:
    from voicepipe.convert.to_gguf import convert_hf_to_gguf

    out = cache_dir("gguf") / f"{checkpoint.name}-f32.gguf"
    with file_lock(cache_dir("gguf") / f"{checkpoint.name}.lock"):
        if not out.exists():
            convert_hf_to_gguf(checkpoint, out, outtype="f32")
    return out


def _llamacpp(checkpoint: Path) -> ChatModel:
    pytest.importorskip("llama_cpp")
    from voicepipe.llm.llamacpp import Qwen35LlamaCppChat

    return Qwen35LlamaCppChat.from_pretrained(_gguf_f32(checkpoint), n_ctx=4096, progress=False)


def _mlx(checkpoint: Path) -> ChatModel:
    pytest.importorskip("mlx.core")
    pytest.importorskip("mlx_lm")
    from voicepipe.llm.mlx import Qwen35MLXChat

    return Qwen35MLXChat.from_pretrained(checkpoint, progress=False)  # converted to fp32 MLX weights on first use


#: engine name -> builder(tiny real-vocab checkpoint dir) -> loaded fp32 ChatModel
ENGINES: dict[str, Callable[[Path], ChatModel]] = {"llamacpp": _llamacpp, "mlx": _mlx}


@pytest.fixture(scope="session")
def tiny_real_checkpoint() -> Path:
    return tiny_checkpoint("real")


@pytest.fixture(scope="session")
def tiny_gguf(tiny_real_checkpoint: Path) -> Path:
    pytest.importorskip("llama_cpp")
    return _gguf_f32(tiny_real_checkpoint)


_models: dict[str, ChatModel] = {}


@pytest.fixture(params=sorted(ENGINES))
def chat(request: pytest.FixtureRequest, tiny_real_checkpoint: Path) -> Iterator[ChatModel]:
    """A loaded fp32 engine on the tiny real-vocab checkpoint, with an empty conversation state."""
    name = request.param
    if name not in _models:
        _models[name] = ENGINES[name](tiny_real_checkpoint)
    model = _models[name]
    model.reset_state()
    yield model


@pytest.fixture(scope="session")
def hf_model(tiny_real_checkpoint: Path):  # noqa: ANN201 - torch types are optional here
    """The same checkpoint in transformers: the reference implementation."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model = transformers.Qwen3_5ForCausalLM.from_pretrained(tiny_real_checkpoint, dtype=torch.float32)
    model.eval()
    return model


@pytest.fixture(scope="session")
def hf_tokenizer(tiny_real_checkpoint: Path):  # noqa: ANN201
    transformers = pytest.importorskip("transformers")
    return transformers.AutoTokenizer.from_pretrained(tiny_real_checkpoint)


@pytest.fixture(scope="session")
def hf_greedy(hf_model) -> Callable[[list[int], int], list[int]]:  # noqa: ANN001
    """Greedy continuation by transformers (with its own cache): the reference for parity tests."""
    import torch

    def run(prompt: list[int], n: int) -> list[int]:
        with torch.no_grad():
            out = hf_model.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False)
        return out[0, len(prompt) :].tolist()

    return run


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    for model in _models.values():
        model.close()
    _models.clear()
