"""Chunked gated delta rule (voicepipe.llm.mlx_gated_delta) against mlx-lm's recurrence and transformers' torch code.

Relative error here is ``max|got - want| / max|want|`` over the whole tensor.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from mlx_lm.models.gated_delta import gated_delta_ops, gated_delta_update  # noqa: E402
from transformers.models.qwen3_5.modeling_qwen3_5 import (  # noqa: E402
    torch_chunk_gated_delta_rule,
    torch_recurrent_gated_delta_rule,
)

from voicepipe.assets import file_lock  # noqa: E402
from voicepipe.llm.mlx_gated_delta import (  # noqa: E402
    chunked_gated_delta,
    chunked_gated_delta_update,
    compiled_decode_step,
    disable_chunked_prefill,
    enable_chunked_prefill,
)
from voicepipe.testing import cache_dir  # noqa: E402

LENGTHS = [1, 7, 63, 64, 65, 1000]
# Small heads (CPU MLX is slow), but with GQA: 4 value heads read 2 key heads.
B, HK, HV, DK, DV = 2, 2, 4, 32, 16


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def make_inputs(length: int, seed: int):
    """Random normalised q/k (scale not folded), v, log decay spanning slow to fast heads, beta, a state, a mask."""
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((B, length, HK, DK)).astype(np.float32)
    k = rng.standard_normal((B, length, HK, DK)).astype(np.float32)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    k /= np.linalg.norm(k, axis=-1, keepdims=True)
    v = rng.standard_normal((B, length, HV, DV)).astype(np.float32)
    rate = np.exp(rng.uniform(-3, 1.5, HV)).astype(np.float32)
    log_decay = (-rate * np.log1p(np.exp(rng.standard_normal((B, length, HV))))).astype(np.float32)
    beta = (1 / (1 + np.exp(-rng.standard_normal((B, length, HV))))).astype(np.float32)
    state = (0.5 * rng.standard_normal((B, HV, DV, DK))).astype(np.float32)  # mlx-lm layout [B, Hv, Dv, Dk]
    # Left padding as mlx-lm's batched prompts make it, plus one hole in the middle of the second row.
    mask = np.ones((B, length), dtype=bool)
    mask[1, : min(5, length - 1)] = False
    if length > 40:
        mask[1, 33] = False
    return q, k, v, log_decay, beta, state, mask


def mlx_inputs(q, k, v, log_decay, beta, dtype=None):
    dtype = dtype or mx.float32
    scaled_q = mx.array(q * DK**-0.5).astype(dtype)  # mlx-lm's contract: the readout scale is folded into q
    return scaled_q, mx.array(k).astype(dtype), mx.array(v).astype(dtype), mx.array(log_decay), mx.array(beta)


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
@pytest.mark.parametrize("with_mask", [False, True])
def test_matches_mlx_lm_recurrence_fp32(length: int, with_state: bool, with_mask: bool) -> None:
    q, k, v, log_decay, beta, state, mask = make_inputs(length, seed=length)
    mq, mk, mv, mg, mb = mlx_inputs(q, k, v, log_decay, beta)
    s0 = mx.array(state) if with_state else None
    m = mx.array(mask) if with_mask else None

    y_ref, s_ref = gated_delta_ops(mq, mk, mv, mx.exp(mg), mb, s0, m)
    y, s = chunked_gated_delta(mq, mk, mv, mg, mb, s0, m)
    y_ref, y = np.array(y_ref), np.array(y)
    if with_mask:  # mlx-lm's ops path still writes y at masked tokens; its kernels write 0, as we do
        y_ref = np.where(mask[..., None, None], y_ref, 0.0)
        assert np.all(y[~mask] == 0)
    assert y.shape == (B, length, HV, DV) and y.dtype == np.float32
    assert s.shape == (B, HV, DV, DK) and s.dtype == mx.float32
    assert rel_err(y, y_ref) <= 1e-4
    assert rel_err(s, s_ref) <= 1e-4


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("with_state", [False, True])
def test_matches_transformers_fp32(length: int, with_state: bool) -> None:
    q, k, v, log_decay, beta, state, _ = make_inputs(length, seed=100 + length)
    init = torch.from_numpy(state.swapaxes(-1, -2).copy()) if with_state else None  # torch layout [B, H, Dk, Dv]
    args = [torch.from_numpy(x) for x in (q, k, v, log_decay, beta)]
    y_chunk, s_chunk = torch_chunk_gated_delta_rule(*args, initial_state=init, output_final_state=True)
    y_rec, s_rec = torch_recurrent_gated_delta_rule(*args, initial_state=init, output_final_state=True)

    mq, mk, mv, mg, mb = mlx_inputs(q, k, v, log_decay, beta)
    y, s = chunked_gated_delta(mq, mk, mv, mg, mb, mx.array(state) if with_state else None)
    s = np.array(s).swapaxes(-1, -2)
    for y_ref, s_ref in ((y_rec, s_rec), (y_chunk, s_chunk)):
        assert rel_err(y, y_ref.numpy()) <= 1e-4
        assert rel_err(s, s_ref.numpy()) <= 1e-4


@pytest.mark.parametrize("chunk_size", [32, 64, 128])
@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_aligned_keys_slow_decay(chunk_size: int, spread: float) -> None:
    """The hard case for the UT transform: keys that all point one way (as silu'd keys do), beta near 1, almost no
    decay. The powers of the intra-chunk matrix then grow like binomials, so a naive Neumann-series inverse cancels
    to garbage (it did: errors of 1e34); the result must still match the recurrence."""
    q, k, v, log_decay, beta, state, _ = make_inputs(1000, seed=11)
    direction = np.random.default_rng(12).standard_normal((1, 1, HK, DK)).astype(np.float32)
    k = direction + spread * k * np.sqrt(DK)
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)
    mq, mk, mv, mg, mb = mlx_inputs(q, k, v, 0.01 * log_decay, np.full_like(beta, 0.99))
    y_ref, s_ref = gated_delta_ops(mq, mk, mv, mx.exp(mg), mb, mx.array(state))
    y, s = chunked_gated_delta(mq, mk, mv, mg, mb, mx.array(state), chunk_size=chunk_size)
    assert rel_err(y, y_ref) <= 1e-4
    assert rel_err(s, s_ref) <= 1e-4


@pytest.mark.parametrize("length", [64, 65, 1000])
@pytest.mark.parametrize("with_state", [False, True])
def test_bf16_inputs(length: int, with_state: bool) -> None:
    """bf16 activations (the model's dtype), fp32 state: within 2e-2 of the fp32 recurrence on the same inputs."""
    q, k, v, log_decay, beta, state, mask = make_inputs(length, seed=200 + length)
    mq, mk, mv, mg, mb = mlx_inputs(q, k, v, log_decay, beta, dtype=mx.bfloat16)
    s0 = mx.array(state) if with_state else None
    y, s = chunked_gated_delta(mq, mk, mv, mg.astype(mx.bfloat16), mb.astype(mx.bfloat16), s0, mx.array(mask))
    assert y.dtype == mx.bfloat16 and s.dtype == mx.float32

    as32 = [x.astype(mx.float32) for x in (mq, mk, mv, mg.astype(mx.bfloat16), mb.astype(mx.bfloat16))]
    y_ref, s_ref = gated_delta_ops(as32[0], as32[1], as32[2], mx.exp(as32[3]), as32[4], s0, mx.array(mask))
    y_ref = np.where(mask[..., None, None], np.array(y_ref), 0.0)
    assert rel_err(y.astype(mx.float32), y_ref) <= 2e-2
    assert rel_err(s, s_ref) <= 2e-2


def test_decode_continues_from_chunked_state() -> None:
    """Prefill 130 tokens chunked, then decode 5 with mlx-lm's recurrent update: same as 135 recurrent steps."""
    q, k, v, log_decay, beta, _, _ = make_inputs(135, seed=7)
    rng = np.random.default_rng(8)
    a = mx.array(rng.standard_normal((B, 135, HV)).astype(np.float32))
    b = mx.array(rng.standard_normal((B, 135, HV)).astype(np.float32))
    a_log = mx.array(np.log(rng.uniform(1, 16, HV)).astype(np.float32))
    dt_bias = mx.array(rng.standard_normal(HV).astype(np.float32))
    mq, mk, mv, _, _ = mlx_inputs(q, k, v, log_decay, beta)

    y_all, s_all = gated_delta_update(mq, mk, mv, a, b, a_log, dt_bias, use_kernel=False)
    y_pre, state = chunked_gated_delta_update(
        mq[:, :130], mk[:, :130], mv[:, :130], a[:, :130], b[:, :130], a_log, dt_bias
    )
    ys = [y_pre]
    for t in range(130, 135):
        sl = slice(t, t + 1)
        y_t, state = gated_delta_update(mq[:, sl], mk[:, sl], mv[:, sl], a[:, sl], b[:, sl], a_log, dt_bias, state)
        ys.append(y_t)
    assert rel_err(mx.concatenate(ys, axis=1), y_all) <= 1e-4
    assert rel_err(state, s_all) <= 1e-4


def test_rejects_bad_arguments() -> None:
    q, k, v, log_decay, beta, _, _ = make_inputs(8, seed=1)
    mq, mk, mv, mg, mb = mlx_inputs(q, k, v, log_decay, beta)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_gated_delta(mq, mk, mv, mg, mb, chunk_size=48)
    with pytest.raises(ValueError, match="value heads"):
        chunked_gated_delta(mq, mk, mv[:, :, :3], mg[:, :, :3], mb[:, :, :3])


# --- the hook on a real mlx-lm model, loaded from a tiny random checkpoint that transformers writes ---------------

TINY_CONFIG = {
    "vocab_size": 512,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 4,
    "layer_types": ["linear_attention"] * 3 + ["full_attention"],
    "full_attention_interval": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    "linear_key_head_dim": 32,
    "linear_value_head_dim": 16,
    "linear_conv_kernel_dim": 4,
    "tie_word_embeddings": True,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
}


@pytest.fixture(scope="session")
def tiny_checkpoint():
    """A random fp32 Qwen3.5 text checkpoint saved by transformers, with the model_type mlx-lm reads.

    Weights are drawn 10x wider than transformers' default (std 0.2) so that greedy decoding wanders over the
    vocabulary instead of repeating one token, which would hide a broken state hand-over.
    """
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    path = cache_dir("mlx-gated-delta", "tiny-qwen3_5-std0.2")
    with file_lock(path.parent / "tiny-qwen3_5.lock"):
        if not (path / "config.json").exists():
            torch.manual_seed(0)
            model = Qwen3_5ForCausalLM(Qwen3_5TextConfig(**TINY_CONFIG, initializer_range=0.2)).float().eval()
            with torch.no_grad():  # random A_log/dt_bias like trained ones: some heads forget fast, some slowly
                for layer in model.model.layers:
                    if hasattr(layer, "linear_attn"):
                        layer.linear_attn.A_log.uniform_(-2.0, 2.5)
                        layer.linear_attn.dt_bias.normal_()
            model.save_pretrained(path)
            config = json.loads((path / "config.json").read_text())
            config["model_type"] = "qwen3_5"  # transformers writes qwen3_5_text, which mlx-lm does not resolve
            (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.fixture()
def tiny_model(tiny_checkpoint):
    from mlx_lm.utils import load_model

    model, _ = load_model(tiny_checkpoint)
    return model


def greedy(model, prompt: list[int], steps: int):
    """Prefill ``prompt`` in one call, then decode ``steps`` tokens greedily; returns tokens and all last logits."""
    cache = model.make_cache()
    logits = model(mx.array([prompt]), cache=cache)[:, -1]
    tokens, all_logits = [], [logits]
    for _ in range(steps):
        token = mx.argmax(logits, axis=-1)
        tokens.append(token.item())
        logits = model(token[:, None], cache=cache)[:, -1]
        all_logits.append(logits)
    return tokens, np.array(mx.concatenate(all_logits))


def count_chunked_calls(monkeypatch) -> list[int]:
    """Record the length of every input that the hook sends to the chunked rule."""
    import voicepipe.llm.mlx_gated_delta as gdn

    calls: list[int] = []
    real = gdn.chunked_gated_delta_update

    def spy(*args, **kwargs):
        calls.append(args[0].shape[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(gdn, "chunked_gated_delta_update", spy)
    return calls


def test_hook_keeps_greedy_tokens(tiny_model, monkeypatch) -> None:
    prompt = np.random.default_rng(3).integers(0, TINY_CONFIG["vocab_size"], 150).tolist()
    tokens_ref, logits_ref = greedy(tiny_model, prompt, steps=24)
    assert len(set(tokens_ref)) > 12  # a model that wanders, so a broken state would change the tokens

    calls = count_chunked_calls(monkeypatch)
    assert enable_chunked_prefill(tiny_model, threshold=16) == 3
    tokens, logits = greedy(tiny_model, prompt, steps=24)
    assert calls == [150, 150, 150]  # the prompt took the chunked rule in each linear layer; decode steps did not
    assert tokens == tokens_ref
    assert rel_err(logits, logits_ref) <= 1e-4

    assert disable_chunked_prefill(tiny_model) == 3
    calls.clear()
    assert greedy(tiny_model, prompt, steps=4)[0] == tokens_ref[:4]
    assert calls == []


def test_hook_leaves_short_prompts_and_other_models_alone(tiny_checkpoint, monkeypatch) -> None:
    from mlx_lm.utils import load_model

    hooked, _ = load_model(tiny_checkpoint)
    plain, _ = load_model(tiny_checkpoint)
    calls = count_chunked_calls(monkeypatch)
    assert enable_chunked_prefill(hooked, threshold=200) == 3
    mx.eval(hooked(mx.array([list(range(150))]), cache=hooked.make_cache()))  # below the threshold
    mx.eval(plain(mx.array([list(range(300))]), cache=plain.make_cache()))  # a model without the hook
    assert calls == []
    mx.eval(hooked(mx.array([list(range(300))]), cache=hooked.make_cache()))
    assert calls == [300, 300, 300]
    assert enable_chunked_prefill(plain.language_model.model.norm) == 0  # nothing to hook there


@pytest.mark.parametrize("segments", [True, False])
def test_compiled_decode_step_matches_model(tiny_model, segments: bool) -> None:
    prompt = np.random.default_rng(5).integers(0, TINY_CONFIG["vocab_size"], 40).tolist()
    tokens_ref, logits_ref = greedy(tiny_model, prompt, steps=20)

    step = compiled_decode_step(tiny_model, segments=segments)
    cache = tiny_model.make_cache()
    assert step(mx.array([prompt]), cache) is not None  # a whole prompt falls back to the model itself
    cache = tiny_model.make_cache()
    logits = tiny_model(mx.array([prompt]), cache=cache)[:, -1]
    tokens, all_logits = [], [logits]
    for _ in range(20):
        token = mx.argmax(logits, axis=-1)
        tokens.append(token.item())
        logits = step(token[:, None], cache)[:, -1]
        all_logits.append(logits)
    assert tokens == tokens_ref
    assert rel_err(np.array(mx.concatenate(all_logits)), logits_ref) <= 1e-5
    assert cache[-1].offset == len(prompt) + 20  # the attention layer's KV cache grew one token per step
