"""Qwen3.5 weights for MLX (voicepipe.convert.to_mlx, voicepipe.llm.mlx_model, scripts/convert_mlx.py): conversion, the bf16 norm fix,
INT4/INT8, Hugging Face repos from the hub cache (offline), and clear errors for missing or corrupt files."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
pytest.importorskip("mlx_lm")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.utils import load_model as mlx_lm_load_model  # noqa: E402

from voicepipe.assets import file_lock  # noqa: E402
from voicepipe.convert import to_mlx  # noqa: E402
from voicepipe.convert.to_mlx import convert_checkpoint  # noqa: E402
from voicepipe.errors import ModelLoadError, UserError  # noqa: E402
from voicepipe.llm import ChatMessage, ChatSamplingConfig  # noqa: E402
from voicepipe.llm.mlx import Qwen35MLXChat  # noqa: E402
from voicepipe.llm.mlx_model import checkpoint_kind, cpu_prefill_linear_class, load_mlx_model  # noqa: E402
from voicepipe.testing import cache_dir  # noqa: E402
from voicepipe.testing.checkpoints import TINY_SHAPE, build_checkpoint, tiny_checkpoint  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parents[2]
PROMPT = [int(t) for t in np.random.default_rng(0).integers(0, 4000, 24)]


def rel_err(got, want) -> float:
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def mlx_logits(model, ids=PROMPT) -> np.ndarray:
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def hf_logits(hf_dir, ids=PROMPT) -> np.ndarray:
    model = transformers.Qwen3_5ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].numpy()


@pytest.fixture(scope="module")
def hf_dir() -> Path:
    return tiny_checkpoint("small")


@pytest.fixture(scope="module")
def bf16_dir() -> Path:
    """The tiny model stored in bf16, with random norm weights (std 0.1) whose 1 + w does not fit bf16."""
    root = cache_dir("checkpoints")
    out = root / "qwen35-tiny-small-bf16-mlxtest-v1"
    with file_lock(root / f"{out.name}.lock"):
        if not (out / "config.json").exists():
            build_checkpoint(out, TINY_SHAPE, dtype="bfloat16", tokenizer="small")
    return out


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("VOICEPIPE_CACHE", str(tmp_path / "vp-cache"))
    return tmp_path / "vp-cache" / "mlx"


# -- conversion ------------------------------------------------------------------------------------------------------


def test_fp32_conversion_matches_transformers(hf_dir, tmp_path):
    out = convert_checkpoint(hf_dir, tmp_path / "mlx", progress=False)
    assert checkpoint_kind(hf_dir) == "hf" and checkpoint_kind(out) == "mlx"
    assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
    model, config = load_mlx_model(out)
    assert config["model_type"] == "qwen3_5"
    assert rel_err(mlx_logits(model), hf_logits(hf_dir)) <= 1e-3


def test_bf16_checkpoint_norms_are_folded_in_fp32(bf16_dir, tmp_path):
    """mlx-lm adds the +1 of Qwen's (1 + w) norms in bf16, rounding it to steps of 2**-7; we fold it in fp32."""
    with torch.no_grad():
        ref_model = transformers.Qwen3_5ForCausalLM.from_pretrained(bf16_dir, dtype=torch.bfloat16)
        norm_w = ref_model.model.norm.weight.float().numpy()  # the stored bf16 w, exactly, as fp32

    out = convert_checkpoint(bf16_dir, tmp_path / "bf16", progress=False)  # keeps bf16 for the big weights
    model, _ = load_mlx_model(out)
    folded = model.language_model.model.norm.weight
    assert folded.dtype == mx.float32
    np.testing.assert_array_equal(np.array(folded), norm_w.astype(np.float32) + 1.0)
    bf16_rounded = np.array((mx.array(norm_w).astype(mx.bfloat16) + 1.0).astype(mx.float32))
    assert not np.array_equal(bf16_rounded, norm_w + 1.0), "the checkpoint should exercise the bf16 rounding"
    # The big weights stay bf16 and the activations too: the fp32 norms cast back to the input dtype.
    assert model.language_model.model.layers[0].mlp.gate_up_proj.weight.dtype == mx.bfloat16  # fused at load
    assert model(mx.array([PROMPT[:4]])).dtype == mx.bfloat16

    # End to end in fp32 arithmetic on the bf16-stored weights: ours matches transformers, mlx-lm's own load does not.
    want = hf_logits(bf16_dir)
    ours, _ = load_mlx_model(convert_checkpoint(bf16_dir, tmp_path / "fp32", dtype="float32", progress=False))
    stock, _ = mlx_lm_load_model(bf16_dir)
    stock.set_dtype(mx.float32)
    ours_err, stock_err = rel_err(mlx_logits(ours), want), rel_err(mlx_logits(stock), want)
    assert ours_err <= 1e-4 and stock_err > 10 * ours_err, (ours_err, stock_err)


def test_qwen3_5_text_model_type_is_accepted(hf_dir, tmp_path, isolated_cache):
    text_dir = tmp_path / "text"
    shutil.copytree(hf_dir, text_dir)
    config = json.loads((text_dir / "config.json").read_text())
    config["model_type"] = "qwen3_5_text"  # what transformers itself writes
    (text_dir / "config.json").write_text(json.dumps(config))
    chat = Qwen35MLXChat.from_pretrained(text_dir, progress=False)
    try:
        assert chat.model_dir.parent == isolated_cache  # converted into the cache on first use
        got = chat._call(lambda: mlx_logits(chat._model))
        assert rel_err(got, hf_logits(hf_dir)) <= 1e-3
    finally:
        chat.close()


def test_vision_language_layout_converts_to_the_text_model(hf_dir, tmp_path):
    """The official Qwen/Qwen3.5-0.8B repo is a vision-language checkpoint: text weights under model.language_model,
    a vision tower and an MTP head that the chat model does not use, and the text config nested in text_config."""
    from safetensors.numpy import load_file, save_file

    vl_dir = tmp_path / "vl"
    shutil.copytree(hf_dir, vl_dir)
    text = json.loads((hf_dir / "config.json").read_text())
    tie = text.pop("tie_word_embeddings")
    config = {
        "model_type": "qwen3_5",
        "tie_word_embeddings": tie,
        "text_config": {**text, "model_type": "qwen3_5_text"},
    }
    (vl_dir / "config.json").write_text(json.dumps(config))
    tensors = {
        k.replace("model.", "model.language_model.", 1): v for k, v in load_file(hf_dir / "model.safetensors").items()
    }
    tensors["model.visual.patch_embed.proj.weight"] = np.zeros((8, 3), dtype=np.float32)
    tensors["mtp.fc.weight"] = np.zeros((4, 4), dtype=np.float32)
    save_file(tensors, vl_dir / "model.safetensors", metadata={"format": "pt"})
    model, _ = load_mlx_model(convert_checkpoint(vl_dir, tmp_path / "mlx", progress=False))
    assert rel_err(mlx_logits(model), hf_logits(hf_dir)) <= 1e-3


@pytest.mark.parametrize(("quantization", "bits"), [("int8", 8), ("int4", 4)])
def test_quantized_conversion(hf_dir, tmp_path, quantization, bits):
    fp_model, _ = load_mlx_model(convert_checkpoint(hf_dir, tmp_path / "fp", progress=False))
    out = convert_checkpoint(hf_dir, tmp_path / quantization, quantization=quantization, progress=False)
    assert json.loads((out / "config.json").read_text())["quantization"] == {
        "group_size": 64,
        "bits": bits,
        "mode": "affine",
    }
    model, _ = load_mlx_model(out)
    fp_weights = dict(tree_flatten(fp_model.parameters()))
    quantized = {p: m for p, m in model.named_modules() if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)}
    # Every matrix is quantized (embedding included), and each dequantizes back close to its fp32 weight.
    assert len(quantized) == sum(w.ndim == 2 for w in fp_weights.values())
    for path, module in quantized.items():
        assert (module.bits, module.group_size) == (bits, 64)
        back = mx.dequantize(module.weight, module.scales, module.biases, 64, bits)
        assert rel_err(back, fp_weights[f"{path}.weight"]) <= 2.0 / (2**bits - 1), path  # about one step
    fp_bytes = sum(v.nbytes for v in fp_weights.values())
    q_bytes = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    assert q_bytes < fp_bytes * (bits + 2) / 32  # packed weights plus a scale and bias per 64 weights
    # Random weights of this size are chaotic enough that logit errors say little; they must be finite.
    assert np.isfinite(mlx_logits(model)).all()


def test_cpu_prefill_path_of_quantized_layers_matches_the_quantized_kernel(hf_dir, tmp_path):
    """Many rows go through the dequantized weight (CPU has no quantized GEMM); results equal MLX's quantized kernel."""
    model, _ = load_mlx_model(convert_checkpoint(hf_dir, tmp_path / "q8", quantization="int8", progress=False))
    layer = model.language_model.model.layers[0].mlp.down_proj
    assert type(layer) is cpu_prefill_linear_class()
    x = mx.random.normal((1, 16, layer.weight.shape[1] * 32 // 8), key=mx.random.key(0))
    fast, kernel = layer(x), nn.QuantizedLinear.__call__(layer, x)
    assert rel_err(fast, kernel) <= 1e-5
    one = x[:, :1]
    assert rel_err(layer(one), kernel[:, :1]) <= 1e-5  # a single row takes the quantized kernel itself


def test_from_pretrained_converts_once_and_quantizes(hf_dir, isolated_cache, monkeypatch):
    calls = []
    real_convert = to_mlx.convert_checkpoint
    monkeypatch.setattr(to_mlx, "convert_checkpoint", lambda *a, **k: calls.append(a) or real_convert(*a, **k))
    first = Qwen35MLXChat.from_pretrained(hf_dir, quantization="int8", load=False, progress=False)
    second = Qwen35MLXChat.from_pretrained(hf_dir, quantization="int8", load=False, progress=False)
    assert first.model_dir == second.model_dir and len(calls) == 1
    assert first.model_dir.parent == isolated_cache and "int8" in first.model_dir.name
    # Loading the INT8 directory as INT4 is a user mistake with a clear message.
    with pytest.raises(UserError, match="holds INT8 weights"):
        load_mlx_model(first.model_dir, quantization="int4")
    # An unquantized MLX directory is quantized in memory on request.
    fp_dir = Qwen35MLXChat.from_pretrained(hf_dir, load=False, progress=False).model_dir
    chat = Qwen35MLXChat.from_pretrained(fp_dir, quantization="int4", progress=False)
    try:
        assert isinstance(chat._model.language_model.model.layers[0].mlp.gate_up_proj, nn.QuantizedLinear)
        text = chat.generate([ChatMessage("user", "Hi.")], ChatSamplingConfig(temperature=0.0, max_tokens=4))
        assert isinstance(text, str) and chat.last_stats.generated_tokens >= 1
    finally:
        chat.close()


# -- Hugging Face repos (offline: from the hub cache) ----------------------------------------------------------------


def fake_hub_snapshot(hub_cache: Path, repo: str, source: Path) -> Path:
    """Lay ``source`` out as huggingface_hub's cache holds a downloaded repo (refs/main -> snapshots/<commit>)."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    storage = hub_cache / f"models--{repo.replace('/', '--')}"
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)
    shutil.copytree(source, storage / "snapshots" / commit)
    return storage / "snapshots" / commit


@pytest.fixture
def hub_cache(tmp_path, monkeypatch) -> Path:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return tmp_path / "hub"


def test_hub_repo_loads_offline_from_the_cache(hf_dir, tmp_path, hub_cache, isolated_cache):
    mlx_dir = convert_checkpoint(hf_dir, tmp_path / "mlx", quantization="int4", progress=False)
    snapshot = fake_hub_snapshot(hub_cache, "someone/qwen-mlx", mlx_dir)
    assert to_mlx.resolve_model_dir("someone/qwen-mlx") == snapshot  # MLX weights: used in place
    fake_hub_snapshot(hub_cache, "someone/qwen-hf", hf_dir)
    converted = to_mlx.resolve_model_dir("someone/qwen-hf", quantization="int4", progress=False)
    assert converted.parent == isolated_cache and checkpoint_kind(converted) == "mlx"
    with pytest.raises(ModelLoadError, match="not in the Hugging Face cache.*HF_HUB_OFFLINE"):
        to_mlx.resolve_model_dir("someone/not-downloaded")


# -- errors ----------------------------------------------------------------------------------------------------------


def broken_copy(hf_dir: Path, tmp_path: Path) -> Path:
    out = tmp_path / "broken"
    shutil.copytree(hf_dir, out)
    return out


def test_missing_and_corrupt_files_give_clear_errors(hf_dir, tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        to_mlx.resolve_model_dir(str(tmp_path / "nope"))
    with pytest.raises(UserError, match="quantization='int3'"):
        to_mlx.resolve_model_dir(hf_dir, quantization="int3")

    broken = broken_copy(hf_dir, tmp_path)
    weights = broken / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelLoadError, match="model.safetensors: truncated or corrupt"):
        checkpoint_kind(broken)
    weights.write_bytes(b"garbage")
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        checkpoint_kind(broken)
    weights.unlink()
    with pytest.raises(ModelLoadError, match="no model\\*.safetensors files"):
        checkpoint_kind(broken)
    (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="config.json: missing"):
        checkpoint_kind(broken)


def test_missing_tokenizer_and_wrong_model_type(hf_dir, tmp_path):
    mlx_dir = convert_checkpoint(hf_dir, tmp_path / "mlx", progress=False)
    (mlx_dir / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="tokenizer.json: missing"):
        Qwen35MLXChat.from_pretrained(mlx_dir)
    config = json.loads((mlx_dir / "config.json").read_text())
    (mlx_dir / "config.json").write_text(json.dumps({**config, "model_type": "llama"}))
    with pytest.raises(ModelLoadError, match="model_type is 'llama'"):
        load_mlx_model(mlx_dir)


# -- the script ------------------------------------------------------------------------------------------------------


def run_script(*args: str) -> int:
    argv = sys.argv
    sys.argv = ["convert_mlx.py", *args]
    try:
        runpy.run_path(str(REPO_ROOT / "scripts" / "convert_mlx.py"), run_name="__main__")
    except SystemExit as exc:
        return int(exc.code or 0)
    finally:
        sys.argv = argv
    return 0


def test_convert_script(hf_dir, tmp_path, capsys):
    assert run_script(str(hf_dir), str(tmp_path / "int4"), "--quantization", "int4") == 0
    assert "INT4 group 64" in capsys.readouterr().out
    model, config = load_mlx_model(tmp_path / "int4")
    assert config["quantization"]["bits"] == 4
    assert run_script(str(tmp_path / "missing"), str(tmp_path / "x")) == 2
    assert "no such directory" in capsys.readouterr().err
    # Converting again over an earlier output replaces it; over a directory holding other files, it is refused.
    assert run_script(str(hf_dir), str(tmp_path / "int4"), "--quantization", "int8") == 0
    assert load_mlx_model(tmp_path / "int4")[1]["quantization"]["bits"] == 8
    (tmp_path / "int4" / "notes.txt").write_text("mine")
    assert run_script(str(hf_dir), str(tmp_path / "int4"), "--quantization", "int4") == 2
    assert "notes.txt" in capsys.readouterr().err and (tmp_path / "int4" / "notes.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging directory left
