"""Chat models on llama.cpp (llama-cpp-python): the portable fast engine (~29 tok/s for Qwen3.5 Q4_K_M on 2 x86 cores).

Any chat model llama.cpp loads runs here: Qwen3.5 (arch ``qwen35``) gets its own template and thinking control, every
other model the Jinja chat template stored in its GGUF (``tokenizer.chat_template``), or the one ``chat_format`` names.
Only the token-level hooks of ``ChatModel`` live here. The prompt cache uses llama.cpp's sequence-state API
(``llama_state_seq_get_data``/``set_data``): like MLX, llama.cpp cannot trim Qwen3.5's recurrent DeltaNet state, so
whole states are snapshotted at turn boundaries. Sampling uses llama.cpp's own sampler chain.
"""

from __future__ import annotations

import ctypes
import gc
import os
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field, field_validator

from voicepipe._optional import require
from voicepipe.cores import schedule
from voicepipe.errors import ModelLoadError, UserError
from voicepipe.llm.chat_format import CHATML_TEMPLATE, ChatTemplate, JinjaChatTemplate, Qwen35ChatTemplate
from voicepipe.llm.chat_model import ChatModel, ChatModelConfig
from voicepipe.llm.sampling import ChatSamplingConfig

__all__ = ["Qwen35LlamaCppChat", "LlamaCppConfig", "DEFAULT_REPO", "CHAT_FORMATS", "resolve_gguf"]

DEFAULT_REPO = "Qwen/Qwen3.5-0.8B"
_DEFAULT = "default"
#: Tokens the repetition penalty looks back over (llama.cpp's default).
PENALTY_LAST_N = 64
#: What a checkpoint repo needs for conversion: config, weights, tokenizer and chat template (no other formats).
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.jinja", "tokenizer*"]
#: ``chat_format`` values besides a path to a Jinja template file: ``auto`` = Qwen3.5's own for a ``qwen35`` GGUF,
#: else the template stored in the GGUF.
CHAT_FORMATS = ("auto", "qwen3.5", "chatml", "gguf")


def _llama_cpp() -> Any:
    return require("llama_cpp", extra="llamacpp", purpose="the llama.cpp LLM engine")


def resolve_gguf(
    source: str | Path | None = None,
    *,
    quantization: str | None = _DEFAULT,
    revision: str | None = None,
    filename: str | None = None,
    progress: bool = True,
) -> Path:
    """Find or build the GGUF file for ``source``.

    ``source``: a local ``.gguf`` file; a local Hugging Face checkpoint directory or a Hugging Face repo id
    (converted and cached on first use; default ``Qwen/Qwen3.5-0.8B``); or a repo id with ``filename`` naming a
    ``.gguf`` in it. ``quantization``: ``q4_k_m``, ``q4_0``, ``q8_0``, ``bf16``, ``f32``, or ``None`` to keep the
    source's precision; by default checkpoints become ``q4_k_m`` and ``.gguf`` files are used as they are.
    """
    from voicepipe.assets import fetch_file, locate
    from voicepipe.convert import to_gguf as gguf_convert

    source = str(source or DEFAULT_REPO)
    if filename is not None:
        path = fetch_file(source, filename, revision=revision, field="llm.model", progress=progress)
    else:
        path = locate(source, field="llm.model", allow_patterns=_HUB_PATTERNS, revision=revision, progress=progress)
    if path.is_file():
        if path.suffix != ".gguf":
            raise ModelLoadError(f"{path}: not a .gguf file; pass a .gguf file or a Hugging Face checkpoint directory")
        if quantization in (_DEFAULT, None):
            return path
        target = gguf_convert.cache_root() / "requantized" / f"{path.stem}-{quantization}.gguf"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            gguf_convert.quantize_gguf(path, target, quantization)
        return target
    if not (path / "config.json").exists():
        raise ModelLoadError(f"{path}: no config.json; pass a .gguf file or a Hugging Face checkpoint directory")
    quant = "q4_k_m" if quantization == _DEFAULT else quantization
    return gguf_convert.gguf_for_checkpoint(path, quant, progress=progress)


class LlamaCppConfig(ChatModelConfig):
    """Settings of the llama.cpp engine (``engine: llamacpp``)."""

    model: str | None = Field(
        None,
        description=f"A .gguf file, a Hugging Face checkpoint directory or repo (converted on first use; default "
        f"{DEFAULT_REPO}), or a repo holding .gguf files (with filename).",
    )
    filename: str | None = Field(None, description="The .gguf file to take from the repo 'model' names.")
    revision: str | None = Field(None, description="The repo's branch, tag or commit.")
    quantization: str | None = Field(
        _DEFAULT,
        description="q4_k_m, q4_0, q8_0, bf16, f32, or null for the source's precision; by default checkpoints "
        "become q4_k_m and .gguf files are used as they are.",
    )
    n_ctx: int = Field(8192, ge=64, description="Context length in tokens (the whole conversation must fit).")
    n_threads: int | None = Field(None, ge=1, description="CPU threads; default: every core.")
    n_batch: int = Field(512, ge=1, description="Prompt tokens evaluated per llama.cpp call.")
    shared_threads: int | None = Field(
        1,
        ge=1,
        description="Decode threads while another stage computes (the TTS speaking an earlier sentence); fewer "
        "threads than cores then keep llama.cpp from waiting on the TTS (voicepipe.cores). None: always n_threads.",
    )
    chat_format: str = Field(
        "auto",
        description="auto (Qwen3.5's template for a Qwen3.5 GGUF, else the one stored in the GGUF), qwen3.5, chatml, "
        "gguf, or the path of a Jinja chat template file.",
    )
    progress: bool = Field(True, description="Show download and conversion progress.")

    @field_validator("chat_format")
    @classmethod
    def _known_format(cls, value: str) -> str:
        if value not in CHAT_FORMATS and not Path(value).expanduser().is_file():
            raise ValueError(
                f"chat_format={value!r}: use one of {', '.join(CHAT_FORMATS)} or the path of a Jinja chat template file"
            )
        return value


class Qwen35LlamaCppChat(ChatModel):
    """Chat on llama.cpp: Qwen3.5 or any GGUF chat model (see ``LlamaCppConfig``; ``ChatModel`` for the API).

    The GGUF file is found (downloaded, converted, quantized on first use: ``resolve_gguf``) when the model loads.
    """

    Config = LlamaCppConfig
    config: LlamaCppConfig

    def __init__(self, config: LlamaCppConfig | None = None) -> None:
        super().__init__(config)
        self._model_path: Path | None = None
        self._eog_ids: set[int] | None = None  # the model's end-of-generation tokens, found once
        self._llm: Any = None
        self._sampler: Any = None
        self._nbytes = 0
        self._threads_now = 0  # decode threads llama.cpp uses now (voicepipe.cores)

    @property
    def model_path(self) -> Path:
        """The GGUF file (found, and converted or quantized on first use, the first time it is asked for)."""
        if self._model_path is None:
            c = self.config
            path = resolve_gguf(
                c.model, quantization=c.quantization, revision=c.revision, filename=c.filename, progress=c.progress
            )
            if not path.is_file():
                raise ModelLoadError(f"{path}: no such GGUF file")
            self._model_path = path
        return self._model_path

    @property
    def n_ctx(self) -> int:
        return self.config.n_ctx

    @property
    def n_threads(self) -> int:
        return self.config.n_threads or os.cpu_count() or 1

    # -- weights -----------------------------------------------------------------------------------------------------

    def _load_weights(self) -> None:
        llama_cpp = _llama_cpp()
        model_path = self.model_path
        try:
            self._llm = llama_cpp.Llama(
                model_path=str(model_path),
                n_ctx=self.n_ctx,
                n_batch=self.config.n_batch,
                n_ubatch=self.config.n_batch,
                n_threads=self.n_threads,
                n_threads_batch=self.n_threads,
                logits_all=False,
                verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise ModelLoadError(
                f"{self.model_path}: llama.cpp cannot load it ({exc}); is it a whole GGUF file of a model llama.cpp "
                "supports?"
            ) from exc
        self._nbytes = int(llama_cpp.llama_model_size(self._llm.model))
        self._threads_now = self.n_threads
        self._extra_stop_ids()  # the vocabulary scan now, not in the first reply's time to first token

    def _chat_template(self) -> ChatTemplate:
        metadata = self._llm.metadata
        chosen = self.config.chat_format
        if chosen == "auto":
            chosen = "qwen3.5" if metadata.get("general.architecture") == "qwen35" else "gguf"
        if chosen == "qwen3.5":
            return Qwen35ChatTemplate()
        if chosen == "chatml":
            return self._jinja(CHATML_TEMPLATE, "chatml")
        if chosen == "gguf":
            source = metadata.get("tokenizer.chat_template")
            if not source:
                raise UserError(
                    f"{self.model_path.name} has no chat template: give one with the llm stage's "
                    "chat_format: chatml (or qwen3.5, or the path of a Jinja chat template file)"
                )
            return self._jinja(source, f"{self.model_path.name}'s own")
        path = Path(chosen).expanduser()
        return self._jinja(path.read_text(encoding="utf-8"), str(path))

    def _jinja(self, source: str, name: str) -> JinjaChatTemplate:
        def text(token: int) -> str:
            return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace") if token >= 0 else ""

        return JinjaChatTemplate(
            source, bos_token=text(self._llm.token_bos()), eos_token=text(self._llm.token_eos()), name=name
        )

    def _unload_weights(self) -> None:
        self._free_sampler()
        if self._llm is not None:
            self._llm.close()
            self._llm = None
        gc.collect()

    def _weights_nbytes(self) -> int:
        return self._nbytes

    # -- tokens ------------------------------------------------------------------------------------------------------

    def _tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def _token_bytes(self, token: int) -> bytes:
        return self._llm.detokenize([token], special=False)

    def _extra_stop_ids(self) -> set[int]:
        # Every end-of-generation token the GGUF marks (EOS, <|im_end|>, <|eot_id|>, ...): a chat model ends its turn
        # with one that is not always its EOS. Scanning the vocabulary once takes ~40 ms (151k tokens), so loading
        # does it (a fresh process's first reply was that much later to its first token); reloads reuse the result.
        if self._eog_ids is None:
            lc = _llama_cpp()
            vocab = lc.llama_model_get_vocab(self._llm.model)
            self._eog_ids = {t for t in range(self._llm.n_vocab()) if lc.llama_vocab_is_eog(vocab, t)}
        return set(self._eog_ids)

    # -- state -------------------------------------------------------------------------------------------------------

    def _reset_engine(self) -> None:
        self._llm.reset()

    def _forward(self, tokens: list[int]) -> None:
        if self._llm.n_tokens + len(tokens) > self.n_ctx:
            raise UserError(
                f"the conversation needs {self._llm.n_tokens + len(tokens)} tokens but n_ctx is {self.n_ctx}: "
                "raise n_ctx or keep less history (the LLM stage's max_history)"
            )
        schedule.wait_for_critical("llm")  # e.g. the TTS speaking the first chunk: it needs the cores more
        if len(tokens) == 1:
            self._decode_threads(self.n_threads if not schedule.others_busy("llm") else self.config.shared_threads)
        self._llm.eval(tokens)

    def _decode_threads(self, wanted: int | None) -> None:
        """Decode with ``wanted`` threads (at most n_threads; None: n_threads); prefill keeps n_threads."""
        threads = min(wanted or self.n_threads, self.n_threads)
        if threads != self._threads_now:
            _llama_cpp().llama_set_n_threads(self._llm.ctx, threads, self.n_threads)
            self._threads_now = threads

    def _save_state(self) -> Any:
        llama_cpp = _llama_cpp()
        ctx = self._llm.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        buf = (ctypes.c_uint8 * size)()
        written = llama_cpp.llama_state_seq_get_data(ctx, buf, size, 0)
        if written == 0:
            raise RuntimeError("llama.cpp could not save the sequence state")
        return (self._llm.n_tokens, bytes(memoryview(buf)[:written]))

    def _restore_state(self, state: Any) -> None:
        llama_cpp = _llama_cpp()
        n_tokens, data = state
        self._llm.reset()
        buf = (ctypes.c_uint8 * len(data)).from_buffer_copy(data)
        if llama_cpp.llama_state_seq_set_data(self._llm.ctx, buf, len(data), 0) == 0:
            raise RuntimeError("llama.cpp could not restore a saved sequence state")
        self._llm.n_tokens = n_tokens

    def _state_nbytes(self, state: Any) -> int:
        return len(state[1])

    # -- sampling ----------------------------------------------------------------------------------------------------

    def _free_sampler(self) -> None:
        if self._sampler is not None:
            _llama_cpp().llama_sampler_free(self._sampler)
            self._sampler = None

    def _start_sampling(self, sampling: ChatSamplingConfig, context: list[int]) -> None:
        """A llama.cpp sampler chain: penalties -> greedy, or top-k -> top-p -> temperature -> seeded draw."""
        lc = _llama_cpp()
        self._free_sampler()
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        if sampling.repetition_penalty != 1.0:
            # The first argument is n_vocab in this binding's llama.h; the penalty window is the second.
            penalties = lc.llama_sampler_init_penalties(
                self._llm.n_vocab(), PENALTY_LAST_N, sampling.repetition_penalty, 0.0, 0.0
            )
            lc.llama_sampler_chain_add(chain, penalties)
        if sampling.greedy:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
        else:
            if sampling.top_k > 0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(sampling.top_k))
            if sampling.top_p < 1.0:
                lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(sampling.top_p, 1))
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(sampling.temperature))
            seed = lc.LLAMA_DEFAULT_SEED if sampling.seed is None else sampling.seed
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed))
        for token in context[-PENALTY_LAST_N:]:
            lc.llama_sampler_accept(chain, token)
        self._sampler = chain

    def _sample(self) -> int:
        # llama_sampler_sample also accepts the drawn token into the chain (the penalty window).
        return int(_llama_cpp().llama_sampler_sample(self._sampler, self._llm.ctx, -1))

    def _logits(self) -> np.ndarray:
        lc = _llama_cpp()
        ptr = lc.llama_get_logits_ith(self._llm.ctx, -1)
        return np.ctypeslib.as_array(ptr, shape=(self._llm.n_vocab(),)).copy()
