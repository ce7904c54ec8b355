"""Qwen3.5 chat on CoreML (Neural Engine on Mac and iPhone): ``Qwen35CoreMLChat``.

The model is a package made by ``scripts/convert_coreml.py`` (``voicepipe.convert.to_coreml``): one mlprogram with
a ``prefill`` function (chunks of ``seq_len`` tokens, the last one right-padded) and a ``decode`` function (one
token), sharing the KV cache and the DeltaNet conv/recurrent state as CoreML states. This file implements only the
token-level hooks of ``ChatModel`` (see ``voicepipe.llm.chat_model``):

- ``_forward`` feeds whole chunks through ``prefill`` while they fit in the fixed context and the rest through
  ``decode``; the position of each call is the number of tokens the state holds;
- prompt-cache snapshots copy the four states with ``MLState.read_state`` / ``write_state``;
- sampling is numpy on the fp16 logits CoreML returns (mlx-lm's samplers need MLX, llama.cpp's need its context).

CoreML prediction needs macOS: elsewhere constructing the model raises one ``UserError`` (conversion works on Linux).
"""

from __future__ import annotations

import gc
import json
import sys
from pathlib import Path
from typing import Any, Literal, Protocol, get_args

import numpy as np
from pydantic import Field, field_validator

from voicepipe._optional import require
from voicepipe.convert.to_coreml import MANIFEST, PACKAGE
from voicepipe.errors import ModelLoadError, UserError
from voicepipe.llm.chat_model import ChatModel, ChatModelConfig
from voicepipe.llm.sampling import ChatSamplingConfig

__all__ = ["Qwen35CoreMLChat", "CoreMLChatConfig", "COMPUTE_UNITS"]

ComputeUnits = Literal["CPU_AND_NE", "ALL", "CPU_AND_GPU", "CPU_ONLY"]
COMPUTE_UNITS: tuple[str, ...] = get_args(ComputeUnits)


class Runtime(Protocol):
    """What the engine needs from a loaded package (``_CoreMLRuntime`` on macOS)."""

    state_names: tuple[str, ...]

    def new_state(self) -> Any: ...

    def predict(self, function: str, inputs: dict[str, np.ndarray], state: Any) -> np.ndarray: ...

    def read_state(self, state: Any, name: str) -> np.ndarray: ...

    def write_state(self, state: Any, name: str, value: np.ndarray) -> None: ...

    def nbytes(self) -> int: ...

    def close(self) -> None: ...


class _FunctionStates:
    """One conversation's state for both functions of the package.

    CoreML makes an ``MLState`` per loaded function and does not document passing one function's state to another, so
    each function keeps its own and the four arrays are copied across when the engine switches between prefill and
    decode (about once per turn; 35 MB at a 2,048-token context).
    """

    def __init__(self, functions: dict[str, Any], names: tuple[str, ...]) -> None:
        self._functions, self._names = functions, names
        self._states: dict[str, Any] = {}
        self.current: str | None = None

    def for_function(self, function: str) -> Any:
        if function not in self._states:
            self._states[function] = self._functions[function].make_state()
        if self.current is not None and self.current != function:
            source, target = self._states[self.current], self._states[function]
            for name in self._names:
                target.write_state(name, source.read_state(name))
        self.current = function
        return self._states[function]

    def read(self, name: str) -> np.ndarray:
        if self.current is None:
            return np.array(self.for_function("decode").read_state(name), copy=True)
        return np.array(self._states[self.current].read_state(name), copy=True)

    def write(self, name: str, value: np.ndarray) -> None:
        self.for_function(self.current or "decode").write_state(name, value)


class _CoreMLRuntime:
    """The package's two functions loaded with coremltools."""

    def __init__(self, model_dir: Path, compute_units: str, state_names: tuple[str, ...]) -> None:
        ct = require("coremltools", extra="coreml", purpose="The CoreML engine")
        package = model_dir / PACKAGE
        units = getattr(ct.ComputeUnit, compute_units)
        try:
            self._functions = {
                name: ct.models.MLModel(str(package), compute_units=units, function_name=name)
                for name in ("prefill", "decode")
            }
        except Exception as exc:  # coremltools raises bare Exceptions from the CoreML framework
            raise ModelLoadError(f"{package}: CoreML cannot load it ({exc}); convert it again") from exc
        self.state_names = state_names
        self._nbytes = sum(f.stat().st_size for f in package.rglob("*.bin"))

    def new_state(self) -> _FunctionStates:
        return _FunctionStates(self._functions, self.state_names)

    def predict(self, function: str, inputs: dict[str, np.ndarray], state: _FunctionStates) -> np.ndarray:
        return self._functions[function].predict(inputs, state=state.for_function(function))["logits"]

    def read_state(self, state: _FunctionStates, name: str) -> np.ndarray:
        return state.read(name)

    def write_state(self, state: _FunctionStates, name: str, value: np.ndarray) -> None:
        state.write(name, value)

    def nbytes(self) -> int:
        return self._nbytes

    def close(self) -> None:
        self._functions.clear()


def _require_macos() -> None:
    if sys.platform != "darwin":
        raise UserError(
            f"Qwen35CoreMLChat: CoreML prediction needs macOS (this host is {sys.platform}); "
            "use the llm engine 'llamacpp' here (conversion with scripts/convert_coreml.py does work on Linux)"
        )


class CoreMLChatConfig(ChatModelConfig):
    """Settings of the CoreML engine (``engine: coreml``)."""

    model: str | None = Field(
        None, validate_default=True, description="The directory made by scripts/convert_coreml.py (no default)."
    )
    compute_units: ComputeUnits = Field(
        "CPU_AND_NE", description="Where CoreML runs the model (CPU_AND_NE: CPU and ANE)."
    )
    quantization: str | None = Field(
        None, description="Fixed when converting; if given, it must match the package's (a check, not a choice)."
    )

    @field_validator("model")
    @classmethod
    def _given(cls, value: str | None) -> str:
        if value is None:
            raise ValueError(
                "the coreml engine needs model: the directory made by scripts/convert_coreml.py (there is no default)"
            )
        return value


class Qwen35CoreMLChat(ChatModel):
    """Qwen3.5 chat on a converted CoreML package (see ``CoreMLChatConfig``; ``ChatModel`` for the API).

    ``runtime`` replaces the coremltools runtime (a callable ``(model_dir, compute_units, state_names) -> Runtime``);
    tests on Linux pass one that runs the same traced torch functions.
    """

    Config = CoreMLChatConfig
    config: CoreMLChatConfig

    def __init__(self, config: CoreMLChatConfig | None = None, *, runtime: Any = None) -> None:
        if runtime is None:
            _require_macos()
        super().__init__(config)
        self.model_dir = Path(self.config.model or "").expanduser()
        self.compute_units = self.config.compute_units
        self._manifest: dict[str, Any] | None = None
        self._runtime_factory = runtime or _CoreMLRuntime
        self._runtime: Runtime | None = None
        self._tokenizer: Any = None
        self._state: Any = None
        self._position = 0
        self._last_logits: np.ndarray | None = None
        self._context: list[int] = []
        self._sampling = ChatSamplingConfig()
        self._rng = np.random.default_rng()

    @property
    def manifest(self) -> dict[str, Any]:
        """The package's manifest (read, and checked against ``quantization``, the first time it is asked for)."""
        if self._manifest is None:
            file = self.model_dir / MANIFEST
            if not file.is_file() or not (self.model_dir / PACKAGE).is_dir():
                raise ModelLoadError(
                    f"{self.model_dir}: not a converted CoreML model (no {MANIFEST} / {PACKAGE}); "
                    "make one with: python scripts/convert_coreml.py CHECKPOINT_DIR OUT_DIR"
                )
            manifest = json.loads(file.read_text())
            built, wanted = manifest.get("quantization"), self.config.quantization
            if wanted is not None and wanted != built:
                raise UserError(
                    f"quantization={wanted!r} but {self.model_dir} was converted with {built!r}: "
                    f"remove the setting or convert again with --quantize {wanted}"
                )
            self._manifest = manifest
        return self._manifest

    @property
    def max_context(self) -> int:
        return int(self.manifest["max_context"])

    @property
    def seq_len(self) -> int:
        return int(self.manifest["seq_len"])

    # -- weights -----------------------------------------------------------------------------------------------------

    def _load_weights(self) -> None:
        names = tuple(self.manifest["states"])  # first: a directory that is not a converted model says so
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        self._runtime = self._runtime_factory(self.model_dir, self.compute_units, names)
        self._reset_engine()

    def _make_tokenizer(self) -> Any:
        from voicepipe.llm.mlx import _Tokenizer  # the same tokenizer.json reader (no MLX import involved)

        return _Tokenizer(self.model_dir)

    def _unload_weights(self) -> None:
        if self._runtime is not None:
            self._runtime.close()
        self._runtime = None
        self._state = None
        self._last_logits = None
        gc.collect()

    def _weights_nbytes(self) -> int:
        return self._runtime.nbytes() if self._runtime is not None else 0

    # -- tokens ------------------------------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        if self._tokenizer is None:
            self._tokenizer = self._make_tokenizer()
        return self._tokenizer.encode(text)

    def _token_bytes(self, token: int) -> bytes:
        return self._tokenizer.token_bytes(token)

    def _extra_stop_ids(self) -> set[int]:
        return {int(i) for i in self.manifest.get("eos_token_ids", [])}

    # -- state -------------------------------------------------------------------------------------------------------

    def _reset_engine(self) -> None:
        self._state = self._runtime.new_state()
        self._position = 0
        self._last_logits = None

    def _forward(self, tokens: list[int]) -> None:
        if self._position + len(tokens) > self.max_context:
            raise UserError(
                f"the conversation needs {self._position + len(tokens)} tokens but the CoreML model's fixed context "
                f"is {self.max_context}: convert with a larger --max-context or keep less history"
            )
        i = 0
        # Whole prefill chunks while one fits in the context (its padding is written past the real tokens too).
        while len(tokens) - i > 1 and self._position + self.seq_len <= self.max_context:
            part = tokens[i : i + self.seq_len]
            ids = np.zeros((1, self.seq_len), dtype=np.int32)
            mask = np.zeros((1, self.seq_len), dtype=np.int32)
            ids[0, : len(part)] = part
            mask[0, : len(part)] = 1
            self._run("prefill", ids, mask)
            self._position += len(part)
            i += len(part)
        for token in tokens[i:]:
            self._run("decode", np.array([[token]], dtype=np.int32), np.ones((1, 1), dtype=np.int32))
            self._position += 1
        self._context.extend(tokens)

    def _run(self, function: str, ids: np.ndarray, mask: np.ndarray) -> None:
        inputs = {"input_ids": ids, "attention_mask": mask, "position": np.array([self._position], dtype=np.int32)}
        logits = self._runtime.predict(function, inputs, self._state)
        self._last_logits = np.asarray(logits, dtype=np.float32).reshape(-1)

    def _save_state(self) -> Any:
        arrays = {name: self._runtime.read_state(self._state, name) for name in self._runtime.state_names}
        return self._position, arrays, None if self._last_logits is None else self._last_logits.copy()

    def _restore_state(self, state: Any) -> None:
        position, arrays, logits = state
        self._state = self._runtime.new_state()
        for name, value in arrays.items():
            self._runtime.write_state(self._state, name, value)
        self._position = position
        self._last_logits = None if logits is None else logits.copy()
        self._context = []

    def _state_nbytes(self, state: Any) -> int:
        return sum(a.nbytes for a in state[1].values())

    # -- sampling ----------------------------------------------------------------------------------------------------

    def _start_sampling(self, sampling: ChatSamplingConfig, context: list[int]) -> None:
        self._sampling = sampling
        self._rng = np.random.default_rng(sampling.seed)
        self._context = [int(t) for t in context]

    def _sample(self) -> int:
        return sample_token(self._last_logits, self._sampling, self._context, self._rng)

    def _logits(self) -> np.ndarray:
        return self._last_logits.copy()


def sample_token(logits: np.ndarray, sampling: ChatSamplingConfig, context: list[int], rng: np.random.Generator) -> int:
    """Repetition penalty (CTRL-style, as mlx-lm and llama.cpp apply it), then greedy or top-k -> top-p ->
    temperature draw. Hand-written: CoreML returns numpy logits and the field's samplers are tied to their runtimes."""
    logits = np.array(logits, dtype=np.float32)
    if sampling.repetition_penalty != 1.0 and context:
        seen = np.unique(np.asarray(context[-64:], dtype=np.int64))
        values = logits[seen]
        logits[seen] = np.where(values < 0, values * sampling.repetition_penalty, values / sampling.repetition_penalty)
    if sampling.greedy:
        return int(np.argmax(logits))
    order = np.argsort(-logits, kind="stable")
    if sampling.top_k > 0:
        order = order[: sampling.top_k]
    scaled = logits[order] / sampling.temperature
    probs = np.exp(scaled - scaled.max())
    probs /= probs.sum()
    if sampling.top_p < 1.0:
        keep = int(np.searchsorted(np.cumsum(probs), sampling.top_p) + 1)
        order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
    return int(rng.choice(order, p=probs))
