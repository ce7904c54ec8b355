"""Qwen3.5 chat on MLX: ``Qwen35MLXChat``.

The model code is mlx-lm's ``qwen3_5``; weights are found by ``convert.to_mlx``, loaded by ``llm.mlx_model``. This
file implements only the token-level hooks of ``ChatModel`` (see ``voicepipe.llm.base``): a forward pass over mlx-lm's
cache objects, sampling through mlx-lm's ``make_sampler`` / ``make_logits_processors``, and snapshots of the cache for
the multi-turn prompt cache (the DeltaNet state of the linear-attention layers cannot be trimmed, so the base class
snapshots at turn boundaries and this engine copies the cache arrays).

On Apple Silicon MLX runs on Metal. On Linux it runs on the CPU, slowly: mlx-lm's gated-delta recurrence is a token
loop without Metal kernels, MLX's CPU quantized matmul has no matrix-matrix kernel (prompts therefore go through
dequantized fp32 weights, see ``mlx_model.cpu_prefill_linear_class``), and only fp32 matmuls use BLAS, which gets
~20x faster when Debian's OpenBLAS is preloaded (apt ``libopenblas0-pthread``):
``LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3`` (``OPENBLAS``; ``scripts/bench_llm.py`` does it).

Decode keeps the GPU busy the way mlx-lm's ``generate_step`` does: one-token forwards go through
``compiled_decode_step`` (fused, compiled layers), the sampler runs on the device, and ``_sample`` queues the forward
of the token it draws before reading that token's value, betting that the base class feeds it next (it does, unless
the reply stops or the thinking cap forces other tokens). The next ``_forward`` takes the queued step when the bet
holds and undoes it otherwise (KV offsets and the replaced state arrays; nothing is copied), so the Python loop never
waits on the GPU for bookkeeping and the engine's state always equals the tokens the base class fed.

Using an unloaded model reloads it transparently (the base class's policy); the prompt-cache snapshots survive.
"""

from __future__ import annotations

import atexit
import gc
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from voicepipe._optional import require
from voicepipe.convert.to_mlx import resolve_model_dir
from voicepipe.errors import ModelLoadError
from voicepipe.llm.chat_model import ChatModel, ChatModelConfig
from voicepipe.llm.mlx_model import load_mlx_model, weights_nbytes
from voicepipe.llm.sampling import ChatSamplingConfig

__all__ = ["Qwen35MLXChat", "OPENBLAS"]

#: Debian's OpenBLAS (apt ``libopenblas0-pthread``); preload it to make MLX's fp32 CPU matmuls fast on Linux.
OPENBLAS = "/usr/lib/x86_64-linux-gnu/openblas-pthread/libblas.so.3"
#: Prompt tokens per forward pass during prefill (bounds the activation memory of long prompts).
PREFILL_STEP = 512


_model_threads: set[int] = set()  # native ids of threads that ran MLX for a chat model
_WAIT_AT_EXIT_S = 2.0


def _note_model_thread() -> None:
    """Remember the calling (model) thread so that interpreter exit waits for it to be gone (``_await_model_threads``)."""
    if not _model_threads:
        atexit.register(_await_model_threads)
    _model_threads.add(threading.get_native_id())


def _await_model_threads() -> None:
    """At exit, wait until the model threads have fully terminated before the interpreter finalizes.

    MLX's Python bindings keep thread-local objects whose destructors take the GIL when a thread ends. Python joins the
    model thread before atexit, but the join returns before those destructors run; if the interpreter is finalizing by
    then, taking the GIL ends the thread from inside a destructor and the process aborts ("terminate called without
    an active exception"). Polling /proc (Linux) until the thread is gone closes that window. Bounded, so a thread that
    never ends cannot hang the exit.
    """
    deadline = time.monotonic() + _WAIT_AT_EXIT_S
    for tid in _model_threads:
        while os.path.exists(f"/proc/self/task/{tid}") and time.monotonic() < deadline:
            time.sleep(0.005)


def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's byte-to-unicode table, which byte-level BPE vocabularies (Qwen's included) are written in.

    Hand-written because ``tokenizers`` decodes whole sequences to ``str`` (replacing split UTF-8 characters) and
    exposes no per-token bytes; the base class needs raw bytes to stream without splitting characters.
    """
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars, strict=True)}


class _Tokenizer:
    """The checkpoint's ``tokenizer.json`` through Hugging Face ``tokenizers``, with per-token raw bytes."""

    def __init__(self, model_dir: Path) -> None:
        tokenizers = require("tokenizers", extra="mlx", purpose="The MLX engine's tokenizer")
        file = model_dir / "tokenizer.json"
        if not file.is_file():
            raise ModelLoadError(f"{file}: missing; the model directory needs the Qwen3.5 tokenizer.json")
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed files
            raise ModelLoadError(f"{file}: unreadable ({exc}); download or convert the model again") from exc
        added = self._tok.get_added_tokens_decoder()
        self._special = {i for i, t in added.items() if t.special}
        self._added = {i: t.content for i, t in added.items()}
        self._decoder = _byte_decoder()
        self._cache: dict[int, bytes] = {}

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def token_bytes(self, token: int) -> bytes:
        if (cached := self._cache.get(token)) is not None:
            return cached
        if token in self._special:
            data = b""
        elif token in self._added:
            data = self._added[token].encode()
        else:
            piece = self._tok.id_to_token(token)
            data = b"" if piece is None else bytes(self._decoder.get(ch, 0x3F) for ch in piece)
        self._cache[token] = data
        return data


def _copy_tree(value: Any) -> Any:
    """New array objects (and lists) for a cache state, so later in-place cache updates never reach a snapshot."""
    mx = require("mlx.core", extra="mlx")
    if isinstance(value, mx.array):
        return mx.array(value)
    if isinstance(value, list):
        return [_copy_tree(v) for v in value]
    if isinstance(value, tuple):
        return tuple(_copy_tree(v) for v in value)
    return value


def _state_arrays(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [a for v in value for a in _state_arrays(v)]
    return [] if value is None or isinstance(value, int | float | str) else [value]


def _output_layer(text_model: Any, hidden: Any) -> Any:
    """mlx-lm's qwen3_5 output layer (tied embedding or lm_head) applied to ``hidden``."""
    if text_model.args.tie_word_embeddings:
        return text_model.model.embed_tokens.as_linear(hidden)
    return text_model.lm_head(hidden)


def _snapshot_layer(cache: Any) -> tuple[type, Any]:
    """(cache class, copied state) for one layer; a KV cache keeps only its filled part, not its spare capacity."""
    mx = require("mlx.core", extra="mlx")
    kv_cache = require("mlx_lm.models.cache", extra="mlx").KVCache
    if type(cache) is kv_cache:
        if cache.keys is None:
            return kv_cache, None
        n = cache.offset
        return kv_cache, (mx.contiguous(cache.keys[..., :n, :]), mx.contiguous(cache.values[..., :n, :]), n)
    return type(cache), _copy_tree(cache.state)


class MLXChatConfig(ChatModelConfig):
    """Settings of the MLX engine (``engine: mlx``)."""

    model: str | None = Field(
        None,
        description="A directory of MLX weights, a Hugging Face checkpoint directory or repo (converted and cached on "
        "first use; default aufklarer/Qwen3.5-0.8B-Chat-MLX).",
    )
    revision: str | None = Field(None, description="The repo's branch, tag or commit.")
    quantization: str | None = Field(
        None, description="int4 or int8 (group size 64), or null to keep the checkpoint's precision."
    )
    progress: bool = Field(True, description="Show download and conversion progress.")


class Qwen35MLXChat(ChatModel):
    """Qwen3.5 chat with mlx-lm's model code (see ``MLXChatConfig``; ``ChatModel`` for the API). The weights are
    found (downloaded and converted on first use: ``resolve_model_dir``) when the model loads."""

    Config = MLXChatConfig
    config: MLXChatConfig

    def __init__(self, config: MLXChatConfig | None = None) -> None:
        super().__init__(config)
        self._model_dir: Path | None = None
        #: The loaded model's ``config.json``.
        self.hf_config: dict[str, Any] = {}
        self._model: Any = None
        self._nbytes = 0
        self._tokenizer: _Tokenizer | None = None
        self._cache: list[Any] | None = None
        self._last_logits: Any = None
        self._sampler: Any = None
        self._processors: list[Any] = []
        self._context: list[int] = []
        self._step: Any = None  # compiled one-token forward, built per loaded model
        self._ahead: tuple[Any, Any, list[Any]] | None = None  # queued step: (token array, its logits, undo record)

    @property
    def model_dir(self) -> Path:
        """The MLX weights directory (found, and converted on first use, the first time it is asked for)."""
        if self._model_dir is None:
            c = self.config
            self._model_dir = resolve_model_dir(
                c.model, revision=c.revision, quantization=c.quantization, progress=c.progress
            )
        return self._model_dir

    @property
    def quantization(self) -> str | None:
        return self.config.quantization

    # -- weights -----------------------------------------------------------------------------------------------------

    def _load_weights(self) -> None:
        _note_model_thread()
        if self._tokenizer is None:
            self._tokenizer = _Tokenizer(self.model_dir)
        self._model, self.hf_config = load_mlx_model(self.model_dir, quantization=self.quantization)
        if not require("mlx.core", extra="mlx").metal.is_available():
            # Off Metal, mlx-lm runs the gated delta rule token by token; prefill it in chunks instead.
            require("voicepipe.llm.mlx_gated_delta", extra="mlx").enable_chunked_prefill(self._model)
        # With the CUDA kernels on (opt-in) the whole token is one compiled call, its attention over a masked
        # fixed-capacity cache (equal to the segmented step within rounding); else the segmented step.
        one_call = require("voicepipe.llm.mlx_decode_kernel", extra="mlx").decode_kernel_available()
        step = require("voicepipe.llm.mlx_gated_delta", extra="mlx").compiled_decode_step
        self._step = step(self._model, one_call=one_call)
        self._nbytes = weights_nbytes(self._model)
        self._reset_engine()

    def _unload_weights(self) -> None:
        mx = require("mlx.core", extra="mlx")
        self._model = None
        self._step = None
        self._ahead = None
        self._cache = None
        self._last_logits = None
        self._nbytes = 0
        gc.collect()
        mx.clear_cache()

    def _weights_nbytes(self) -> int:
        return self._nbytes

    # -- tokens ------------------------------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        if self._tokenizer is None:
            self._tokenizer = _Tokenizer(self.model_dir)
        return self._tokenizer.encode(text)

    def _token_bytes(self, token: int) -> bytes:
        assert self._tokenizer is not None  # noqa: S101 - internal invariant: set on load
        return self._tokenizer.token_bytes(token)

    def _extra_stop_ids(self) -> set[int]:
        ids: set[int] = set()
        # mlx-lm's load_config already merged generation_config.json's eos_token_id into the config.
        sources = [self.hf_config.get("eos_token_id"), self.hf_config.get("text_config", {}).get("eos_token_id")]
        for value in sources:
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
        return ids

    # -- state -------------------------------------------------------------------------------------------------------

    def _reset_engine(self) -> None:
        self._cache = self._model.make_cache()
        self._last_logits = None
        self._ahead = None
        self._context = []

    def _take_ahead(self, tokens: list[int]) -> list[int]:
        """Settle the step queued by ``_sample``: keep it when ``tokens`` starts with its token (returns the rest),
        else undo it (returns ``tokens``)."""
        if self._ahead is None:
            return tokens
        token, logits, undo = self._ahead
        self._ahead = None
        if tokens and tokens[0] == int(token.item()):
            self._last_logits = logits
            self._context.append(tokens[0])
            return tokens[1:]
        for cache, record in zip(self._cache, undo, strict=True):
            if isinstance(record, int):
                cache.offset = record
            else:
                cache.cache, cache.lengths, cache.left_padding = record
        return tokens

    def _undo_record(self) -> list[Any]:
        """What a one-token step changes in each layer's cache: a KV cache's offset (the written slot is overwritten
        later, never read before), or the list of state arrays a linear-attention cache replaces."""
        kv_cache = require("mlx_lm.models.cache", extra="mlx").KVCache
        return [c.offset if type(c) is kv_cache else (list(c.cache), c.lengths, c.left_padding) for c in self._cache]

    def _forward(self, tokens: list[int]) -> None:
        mx = require("mlx.core", extra="mlx")
        tokens = self._take_ahead([int(t) for t in tokens])
        if not tokens:
            return
        if len(tokens) == 1 and self._context and self._step is not None:
            # A decode step: compiled, and left lazy (``_sample`` evaluates it, one step ahead).
            self._last_logits = self._step(mx.array([tokens]), self._cache)[:, -1, :]
            self._context.extend(tokens)
            return
        text_model = self._model.language_model
        for start in range(0, len(tokens), PREFILL_STEP):
            hidden = text_model.model(mx.array([tokens[start : start + PREFILL_STEP]]), cache=self._cache)
            if start + PREFILL_STEP < len(tokens):
                mx.eval([c.state for c in self._cache])
                continue
            # Logits of the last position only (mlx-lm's Model.__call__ computes them for every position, and the
            # 248k-wide output layer is the largest matmul of the model), and lazily: a conversation's history is fed
            # up to a turn boundary to be snapshotted, and nothing is sampled there.
            self._last_logits = _output_layer(text_model, hidden[:, -1:, :])[:, -1, :]
            mx.eval([c.state for c in self._cache])
        self._context.extend(tokens)

    def _save_state(self) -> Any:
        mx = require("mlx.core", extra="mlx")
        self._take_ahead([])
        layers = tuple(_snapshot_layer(c) for c in self._cache)
        mx.eval(_state_arrays([s for _, s in layers]))
        # No logits: the base class feeds at least one token after restoring a snapshot, and a lazy logits graph
        # would keep this turn's activations alive for as long as the snapshot lives.
        return layers

    def _restore_state(self, state: Any) -> None:
        self._cache = [cls() if s is None else cls.from_state(_copy_tree(s)) for cls, s in state]
        self._last_logits = None
        self._ahead = None
        self._context = []

    def _state_nbytes(self, state: Any) -> int:
        return sum(a.nbytes for a in _state_arrays([s for _, s in state]))

    # -- sampling ----------------------------------------------------------------------------------------------------

    def _start_sampling(self, sampling: ChatSamplingConfig, context: list[int]) -> None:
        mx = require("mlx.core", extra="mlx")
        samplers = require("mlx_lm.sample_utils", extra="mlx")
        if sampling.seed is not None:
            mx.random.seed(sampling.seed)
        self._sampler = samplers.make_sampler(
            temp=sampling.temperature,
            top_p=sampling.top_p if sampling.top_p < 1.0 else 0.0,
            top_k=sampling.top_k,
        )
        penalty = sampling.repetition_penalty if sampling.repetition_penalty != 1.0 else None
        self._processors = samplers.make_logits_processors(repetition_penalty=penalty)
        self._context = [int(t) for t in context]

    def _sample(self) -> int:
        mx = require("mlx.core", extra="mlx")
        self._take_ahead([])  # a second draw from the same logits: the queued step was for the first
        logits = self._last_logits.astype(mx.float32)
        if self._processors and self._context:
            history = mx.array(self._context)
            for processor in self._processors:
                logits = processor(history, logits)
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        token = self._sampler(logprobs)
        if self._step is None or not self._context:
            return int(token.item())
        # Queue the forward of this token before reading it (see the module docstring); ``_forward`` settles it.
        # Two evaluations, as mlx-lm's generate_step: reading the token waits for its own, not for the step after.
        mx.async_eval(token)
        undo = self._undo_record()
        ahead = self._step(token[:, None], self._cache)[:, -1, :]
        self._ahead = (token, ahead, undo)
        mx.async_eval(ahead)
        return int(token.item())

    def _logits(self) -> np.ndarray:
        mx = require("mlx.core", extra="mlx")
        return np.array(self._last_logits.astype(mx.float32)).reshape(-1)
