"""CoreML conversion of Qwen3.5: the traced torch function matches transformers; the package has the promised spec.

Prediction needs macOS, so on Linux the tests check (a) that the TorchScript functions coremltools converts compute
transformers' logits (prefill with a padded last chunk, then 16 decode steps, fp32) and (b) the saved package: its
functions, inputs, outputs, states, dtypes and INT8 weights. The macOS-only tests at the end run the package itself.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ct = pytest.importorskip("coremltools")
transformers = pytest.importorskip("transformers")

from voicepipe.assets import file_lock  # noqa: E402
from voicepipe.convert.coreml_torch import STATE_NAMES, load_checkpoint  # noqa: E402
from voicepipe.convert.to_coreml import MANIFEST, PACKAGE, convert, trace_function  # noqa: E402
from voicepipe.errors import UserError  # noqa: E402
from voicepipe.testing import cache_dir  # noqa: E402
from voicepipe.testing.checkpoints import TINY_SHAPE, build_checkpoint, tiny_checkpoint  # noqa: E402

SEQ_LEN = 32
MAX_CONTEXT = 128
VOCAB = 248320
_CONVERT_VERSION = "2"  # bump when the conversion changes, so the cached package is rebuilt


@pytest.fixture(scope="session")
def tiny_real():
    """Tiny random Qwen3.5 with the real 248,320-token vocabulary and tokenizer."""
    return tiny_checkpoint("real")


@pytest.fixture(scope="session")
def tiny_grouped():
    """Tiny random Qwen3.5 whose DeltaNet has twice as many value heads as key heads (the grouped case)."""
    root = cache_dir("checkpoints")
    out = root / "qwen35-tiny-grouped-deltanet-v1"
    with file_lock(root / "qwen35-tiny-grouped-deltanet.lock"):
        if not (out / "config.json").exists():
            build_checkpoint(out, {**TINY_SHAPE, "linear_num_value_heads": 8}, seed=3, tokenizer="small")
    return out


@pytest.fixture(scope="session")
def converted(tiny_real):
    """The tiny checkpoint converted once (INT8, prefill chunks of 32 tokens, 128-token context)."""
    root = cache_dir("coreml")
    out = root / f"tiny-real-int8-v{_CONVERT_VERSION}"
    with file_lock(root / "tiny-real-int8.lock"):
        if not (out / MANIFEST).exists():
            convert(tiny_real, out, max_context=MAX_CONTEXT, seq_len=SEQ_LEN, overwrite=True, progress=False)
    return out


def _chunks(prompt: list[int], seq_len: int):
    """(input_ids, attention_mask, position) per prefill call; the last chunk is right-padded."""
    for start in range(0, len(prompt), seq_len):
        part = prompt[start : start + seq_len]
        ids = torch.zeros(1, seq_len, dtype=torch.int32)
        mask = torch.zeros(1, seq_len, dtype=torch.int32)
        ids[0, : len(part)] = torch.tensor(part, dtype=torch.int32)
        mask[0, : len(part)] = 1
        yield ids, mask, torch.tensor([start], dtype=torch.int32)


@pytest.mark.parametrize("which", ["tiny_real", "tiny_grouped"])
def test_traced_functions_match_transformers(which, request):
    """Prefill (two chunks, the second padded) then 16 greedy decode steps through the TorchScript functions that
    coremltools converts: every logit row within 1e-3 (max relative error, fp32) of transformers'."""
    checkpoint = request.getfixturevalue(which)
    reference = transformers.Qwen3_5ForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    model = load_checkpoint(checkpoint, max_context=MAX_CONTEXT)
    prefill, decode = trace_function(model, SEQ_LEN), trace_function(model, 1)
    vocab = reference.config.vocab_size
    prompt = torch.randint(0, min(vocab, 4000), (SEQ_LEN + 13,), generator=torch.Generator().manual_seed(1)).tolist()

    with torch.no_grad():
        for ids, mask, position in _chunks(prompt, SEQ_LEN):
            logits = prefill(ids, mask, position)
        rows, tokens = [logits[0, 0]], list(prompt)
        for _ in range(16):
            tokens.append(int(rows[-1].argmax()))
            one = torch.tensor([[tokens[-1]]], dtype=torch.int32)
            rows.append(decode(one, torch.ones(1, 1, dtype=torch.int32), torch.tensor([len(tokens) - 1]).int())[0, 0])
        expected = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :]
    got = torch.stack(rows)
    assert got.shape == expected.shape == (17, vocab)
    rel = ((got - expected).abs().max(dim=-1).values / expected.abs().max(dim=-1).values).max().item()
    assert rel <= 1e-3, f"max relative logit error {rel:.2e}"
    assert int(model.conv_state.abs().sum()) > 0 and int(model.recurrent_state.abs().sum()) > 0  # state was used


def test_padding_leaves_the_state_as_unpadded_tokens_do(tiny_real):
    """A prompt fed as one padded chunk leaves the same DeltaNet state as the same tokens fed one by one."""
    model = load_checkpoint(tiny_real, max_context=MAX_CONTEXT)
    prefill, decode = trace_function(model, SEQ_LEN), trace_function(model, 1)
    prompt = list(range(100, 111))
    with torch.no_grad():
        for ids, mask, position in _chunks(prompt, SEQ_LEN):
            chunked = prefill(ids, mask, position)[0, 0]
        states = {name: getattr(model, name).clone() for name in ("conv_state", "recurrent_state")}
        model.reset_state()
        for i, token in enumerate(prompt):
            stepped = decode(torch.tensor([[token]]).int(), torch.ones(1, 1).int(), torch.tensor([i]).int())[0, 0]
    for name, value in states.items():
        torch.testing.assert_close(value, getattr(model, name), rtol=1e-4, atol=1e-5, msg=name)
    torch.testing.assert_close(chunked, stepped, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("chunk", [8, 32, 64])
@pytest.mark.parametrize("spread", [0.0, 0.3])
def test_chunk_form_matches_recurrence_on_aligned_keys(chunk, spread):
    """The hard case for the UT inverse: keys all pointing one way, beta near 1, almost no decay (a plain Neumann
    series blows up here). The chunk form equals the token-by-token recurrence, in fp32 and within fp16 range."""
    from voicepipe.convert.coreml_torch import _delta_chunk, _delta_step

    gen = torch.Generator().manual_seed(7)
    heads, dk, dv = 2, 16, 8
    direction = torch.randn(heads, 1, dk, generator=gen)
    k = direction + spread * torch.randn(heads, chunk, dk, generator=gen)
    k = k / k.norm(dim=-1, keepdim=True)
    q = torch.randn(heads, chunk, dk, generator=gen) / dk**0.5
    v = torch.randn(heads, chunk, dv, generator=gen)
    g = -0.01 * torch.rand(heads, chunk, generator=gen)
    beta = torch.full((heads, chunk), 0.99)
    state = torch.randn(heads, dk, dv, generator=gen)
    out, final = _delta_chunk(q, k, v, g, beta, state)
    expected, s = [], state
    for t in range(chunk):
        o, s = _delta_step(q[:, t : t + 1], k[:, t : t + 1], v[:, t : t + 1], g[:, t : t + 1], beta[:, t : t + 1], s)
        expected.append(o)
    expected = torch.cat(expected, dim=1)
    assert ((out - expected).abs().max() / expected.abs().max()).item() <= 1e-4
    assert ((final - s).abs().max() / s.abs().max()).item() <= 1e-4
    assert out.abs().max() < 1e3  # no intermediate near fp16's limit was needed to get there


def _function_descriptions(package):
    spec = ct.models.utils.load_spec(str(package))
    return spec, {f.name: f for f in spec.description.functions}


def _array_type(feature):
    t = feature.type.multiArrayType
    return tuple(t.shape), ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType)


def _state_type(feature):
    t = feature.type.stateType.arrayType
    return tuple(t.shape), ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(t.dataType)


@pytest.mark.slow  # converts the tiny checkpoint once (about a minute)
def test_package_spec(converted, tiny_real):
    """prefill and decode functions: int32 inputs, fp16 logits [1, 1, 248320], the same four fp16 states."""
    spec, functions = _function_descriptions(converted / PACKAGE)
    assert set(functions) == {"prefill", "decode"}
    assert spec.description.defaultFunctionName == "decode"
    expected_states = load_checkpoint(tiny_real, max_context=MAX_CONTEXT).state_shapes()
    assert expected_states["key_cache"][2] == MAX_CONTEXT
    for name, length in (("prefill", SEQ_LEN), ("decode", 1)):
        fn = functions[name]
        inputs = {f.name: _array_type(f) for f in fn.input}
        assert inputs == {
            "input_ids": ((1, length), "INT32"),
            "attention_mask": ((1, length), "INT32"),
            "position": ((1,), "INT32"),
        }, name
        assert {f.name: _array_type(f) for f in fn.output} == {"logits": ((1, 1, VOCAB), "FLOAT16")}, name
        states = {f.name: _state_type(f) for f in fn.state}
        assert states == {n: (tuple(s), "FLOAT16") for n, s in expected_states.items()}, name
        assert list(states) == list(STATE_NAMES) or set(states) == set(STATE_NAMES)


def _program_ops(package):
    spec = ct.models.utils.load_spec(str(package))
    for name, fn in spec.mlProgram.functions.items():
        block = fn.block_specializations[fn.opset]
        for op in block.operations:
            yield name, op


@pytest.mark.slow  # converts the tiny checkpoint once (about a minute)
def test_every_layer_writes_its_state(converted, tiny_real):
    """Both functions write each state once per layer that owns a slice of it (a lost in-place write in the trace
    would leave the model stateless on the Mac, silently)."""
    shape = load_checkpoint(tiny_real, max_context=8).shape
    per_state = {
        "key_cache": len(shape.full_layers),
        "value_cache": len(shape.full_layers),
        "conv_state": len(shape.linear_layers),
        "recurrent_state": len(shape.linear_layers),
    }
    writes: dict[str, dict[str, int]] = {}
    for function, op in _program_ops(converted / PACKAGE):
        if op.type == "write_state":
            name = op.inputs["input"].arguments[0].name
            writes.setdefault(function, {}).setdefault(name, 0)
            writes[function][name] += 1
    assert writes == {"prefill": per_state, "decode": per_state}


@pytest.mark.slow  # converts the tiny checkpoint once (about a minute)
def test_token_ids_stay_int32(converted):
    """coremltools' default pipeline narrows gather indices to 16 bits for the Neural Engine, which would corrupt every
    token id above 65,535 (the vocabulary has 248,320): no 16-bit integer may appear in either function."""
    narrow = {
        (function, op.type, o.name)
        for function, op in _program_ops(converted / PACKAGE)
        for o in op.outputs
        if ct.proto.MIL_pb2.DataType.Name(o.type.tensorType.dataType) in ("INT16", "UINT16")
    }
    assert not narrow


@pytest.mark.slow  # converts the tiny checkpoint once (about a minute)
def test_int8_weights(converted, tiny_real):
    """Every projection weight and the (tied) embedding are INT8 with per-channel scales, shared by both functions;
    the RoPE tables stay fp16."""
    int8 = {}
    for function, op in _program_ops(converted / PACKAGE):
        if op.type != "constexpr_blockwise_shift_scale":
            continue
        data = op.inputs["data"].arguments[0].value.type.tensorType
        if ct.proto.MIL_pb2.DataType.Name(data.dataType) == "INT8":
            int8.setdefault(function, set()).add(op.outputs[0].name)
    assert set(int8) == {"prefill", "decode"}
    for names in int8.values():
        assert any(n.startswith("embed_tokens_weight") for n in names)
        for proj in ("mlp_gate_proj", "mlp_down_proj", "mixer_in_proj_qkv", "mixer_out_proj", "mixer_q_proj"):
            assert any(proj in n for n in names), proj
        assert not any("rope" in n for n in names)
    # INT8 and deduplicated across the two functions: the weight file is about one byte per parameter.
    params = sum(p.numel() for p in load_checkpoint(tiny_real, max_context=8).parameters())
    weights = sum(f.stat().st_size for f in (converted / PACKAGE).rglob("weight.bin"))
    assert weights < 1.25 * params, (weights, params)


@pytest.mark.slow  # converts the tiny checkpoint once (about a minute)
def test_manifest_and_tokenizer_copied(converted):
    manifest = json.loads((converted / MANIFEST).read_text())
    assert manifest["max_context"] == MAX_CONTEXT and manifest["seq_len"] == SEQ_LEN
    assert manifest["vocab_size"] == VOCAB and manifest["quantization"] == "int8"
    assert manifest["functions"] == ["prefill", "decode"]
    assert manifest["eos_token_ids"] == [248046]
    assert (converted / "tokenizer.json").is_file() and (converted / "config.json").is_file()


def test_convert_rejects_bad_arguments(tmp_path, tiny_real):
    with pytest.raises(UserError, match="config.json"):
        convert(tmp_path, tmp_path / "out", progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(UserError, match="--overwrite"):
        convert(tiny_real, busy, progress=False)
    with pytest.raises(UserError, match="seq_len"):
        convert(tiny_real, tmp_path / "o2", seq_len=64, max_context=32, progress=False)


def test_script_help_runs():
    """scripts/convert_coreml.py parses its arguments (the conversion itself is covered above)."""
    from voicepipe.convert.to_coreml import main

    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0


def test_script_user_error_exits_2(tmp_path, capsys):
    from voicepipe.convert.to_coreml import main

    assert main([str(tmp_path), str(tmp_path / "out")]) == 2
    assert "no config.json" in capsys.readouterr().err


# --- macOS only: the package itself ------------------------------------------------------------------------------

macos = pytest.mark.skipif(sys.platform != "darwin", reason="CoreML prediction needs macOS (coremltools cannot run it)")


def _coreml_logits(package, prompt, steps, compute_units):
    from voicepipe.llm.coreml import _FunctionStates

    functions = {
        name: ct.models.MLModel(str(package), compute_units=compute_units, function_name=name)
        for name in ("prefill", "decode")
    }
    prefill, decode = functions["prefill"], functions["decode"]
    states = _FunctionStates(functions, STATE_NAMES)  # copies the state across when switching functions
    for ids, mask, position in _chunks(prompt, SEQ_LEN):
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy(), "position": position.numpy()}
        out = prefill.predict(feed, state=states.for_function("prefill"))["logits"]
    rows, tokens = [out[0, 0].astype(np.float32)], list(prompt)
    for _ in range(steps):
        tokens.append(int(rows[-1].argmax()))
        feed = {
            "input_ids": np.array([[tokens[-1]]], dtype=np.int32),
            "attention_mask": np.ones((1, 1), dtype=np.int32),
            "position": np.array([len(tokens) - 1], dtype=np.int32),
        }
        rows.append(decode.predict(feed, state=states.for_function("decode"))["logits"][0, 0].astype(np.float32))
    return np.stack(rows), tokens


@pytest.fixture(scope="session")
def converted_fp16(tiny_real, tmp_path_factory):
    """The tiny checkpoint converted without quantization (fp16 weights), for prediction parity."""
    out = tmp_path_factory.mktemp("coreml-fp16")
    convert(tiny_real, out, max_context=MAX_CONTEXT, seq_len=SEQ_LEN, quantize="none", overwrite=True, progress=False)
    return out


@macos
@pytest.mark.macos
@pytest.mark.parametrize("units", ["CPU_ONLY", "CPU_AND_NE"])
def test_coreml_prediction_matches_transformers(converted_fp16, tiny_real, units):
    """The fp16 package on this Mac: prefill (padded last chunk) + 16 decode steps within 1e-2 of transformers."""
    reference = transformers.Qwen3_5ForCausalLM.from_pretrained(tiny_real, dtype=torch.float32).eval()
    prompt = list(range(1000, 1000 + SEQ_LEN + 13))
    got, tokens = _coreml_logits(converted_fp16 / PACKAGE, prompt, 16, getattr(ct.ComputeUnit, units))
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :].numpy()
    rel = (np.abs(got - expected).max(-1) / np.abs(expected).max(-1)).max()
    assert rel <= 1e-2, f"max relative logit error {rel:.2e}"


@macos
@pytest.mark.macos
def test_int8_package_predicts_like_transformers(converted, tiny_real):
    """INT8 weights cost some precision: the first greedy tokens still agree with transformers'."""
    reference = transformers.Qwen3_5ForCausalLM.from_pretrained(tiny_real, dtype=torch.float32).eval()
    prompt = list(range(1000, 1000 + SEQ_LEN + 13))
    got, tokens = _coreml_logits(converted / PACKAGE, prompt, 4, ct.ComputeUnit.CPU_AND_NE)
    with torch.no_grad():
        expected = reference(torch.tensor([tokens])).logits[0, len(prompt) - 1 :].numpy()
    assert got.argmax(-1)[0] == expected.argmax(-1)[0]
    assert np.corrcoef(got.reshape(-1), expected.reshape(-1))[0, 1] > 0.99


@macos
@pytest.mark.macos
def test_coreml_chat_generates(converted):
    from voicepipe.llm import ChatMessage, ChatSamplingConfig
    from voicepipe.llm.coreml import Qwen35CoreMLChat

    chat = Qwen35CoreMLChat.from_pretrained(converted)
    reply = list(chat.generate_stream([ChatMessage("user", "Hi")], ChatSamplingConfig(temperature=0, max_tokens=8)))
    assert chat.last_stats.generated_tokens >= 1 and isinstance("".join(reply), str)
    assert chat.memory_footprint > 0
    chat.unload()
    assert not chat.is_loaded and chat.memory_footprint == 0
