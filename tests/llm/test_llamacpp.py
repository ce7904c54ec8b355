"""llama.cpp specifics: GGUF conversion with the runtime's own converter, quantization, from_pretrained, auto."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from voicepipe.errors import ModelLoadError, UserError
from voicepipe.llm import ChatMessage, ChatSamplingConfig
from voicepipe.llm.stage import LLMConfig, auto_engine

llama_cpp = pytest.importorskip("llama_cpp")

from voicepipe.convert.to_gguf import converter_dir, gguf_for_checkpoint  # noqa: E402
from voicepipe.llm.llamacpp import Qwen35LlamaCppChat  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
GREEDY = ChatSamplingConfig(temperature=0.0, repetition_penalty=1.0, disable_thinking=True, max_tokens=16)
MESSAGES = [ChatMessage("system", "Answer briefly."), ChatMessage("user", "What is Swift?")]


def test_converter_comes_from_the_installed_runtime() -> None:
    import importlib.metadata

    version = importlib.metadata.version("llama-cpp-python")
    path = converter_dir()
    assert path.name == version
    assert (path / "convert_hf_to_gguf.py").exists() and (path / "conversion" / "qwen.py").exists()
    assert (path / "gguf-py" / "gguf" / "constants.py").exists()
    assert not list(ROOT.glob("**/convert_hf_to_gguf.py")), "the converter must never be copied into the repository"


def test_from_pretrained_checkpoint_dir_converts_and_quantizes_once(
    tiny_real_checkpoint: Path, tiny_gguf: Path
) -> None:
    model = Qwen35LlamaCppChat.from_pretrained(tiny_real_checkpoint, quantization="q8_0", n_ctx=1024, progress=False)
    try:
        assert model.model_path.name == "model-q8_0.gguf"
        assert model.model_path.stat().st_size < tiny_gguf.stat().st_size / 2.5
        f32 = Qwen35LlamaCppChat.from_pretrained(tiny_gguf, load=False, n_ctx=1024)
        prompt = model.encode_chat(MESSAGES, disable_thinking=True)
        q8_tokens = model.generate_tokens(prompt, GREEDY)
        f32_tokens = f32.generate_tokens(prompt, GREEDY)
        f32.close()
        assert q8_tokens[:2] == f32_tokens[:2]  # 8-bit weights keep the clear top choices of the first steps
        assert len(q8_tokens) == 16
    finally:
        model.close()
    # cached: the second call converts nothing
    again = gguf_for_checkpoint(tiny_real_checkpoint, "q8_0", progress=False)
    assert again == model.model_path


def test_none_keeps_the_checkpoint_precision(tiny_real_checkpoint: Path) -> None:
    path = gguf_for_checkpoint(tiny_real_checkpoint, None, progress=False)
    assert path.name == "model-f32.gguf"


def test_convert_script_requantizes_a_gguf(tiny_gguf: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny-q4_0.gguf"
    cmd = [sys.executable, str(ROOT / "scripts" / "convert_gguf.py"), str(tiny_gguf), "-q", "q4_0", "--out", str(out)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert out.exists() and out.stat().st_size < tiny_gguf.stat().st_size / 2.5  # embeddings stay 6-bit
    model = Qwen35LlamaCppChat.from_pretrained(out, load=False, n_ctx=512)
    try:
        assert model.generate(MESSAGES, GREEDY) is not None and model.last_stats.generated_tokens > 0
    finally:
        model.close()
    bad = subprocess.run(cmd[:3] + ["-q", "q4_0"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "needs --out" in bad.stderr


def test_clear_errors_for_bad_sources(tmp_path: Path, tiny_gguf: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        Qwen35LlamaCppChat.from_pretrained(tmp_path / "missing.gguf")
    with pytest.raises(UserError, match="quantization 'q3' is unknown"):
        Qwen35LlamaCppChat.from_pretrained(tiny_gguf, quantization="q3")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        Qwen35LlamaCppChat.from_pretrained(tmp_path / "empty")
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all")
    with pytest.raises(ModelLoadError, match="cannot load it"):
        Qwen35LlamaCppChat.from_pretrained(junk)


def test_engine_auto_picks_llamacpp_off_apple_silicon(tiny_gguf: Path, caplog: pytest.LogCaptureFixture) -> None:
    if sys.platform == "darwin":
        pytest.skip("auto picks MLX on Apple Silicon")
    assert auto_engine() == "llamacpp"
    config = LLMConfig(model=str(tiny_gguf), n_ctx=512)  # engine: auto, llama.cpp's fields beside the stage's
    with caplog.at_level(logging.DEBUG, logger="voicepipe.llm"):
        model = config.build_engine()
    assert isinstance(model, Qwen35LlamaCppChat) and not model.is_loaded and model.n_ctx == 512
    assert "auto -> llamacpp" in caplog.text
    with pytest.raises(ValidationError, match="unknown llm engine 'gpu'"):
        LLMConfig(engine="gpu")


def test_hub_sources_fail_clearly_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty hub cache
    with pytest.raises(ModelLoadError, match="Qwen/Qwen3.5-0.8B: cannot get it from the Hugging Face hub"):
        Qwen35LlamaCppChat.from_pretrained()  # the default: the official checkpoint, converted on first use
    with pytest.raises(ModelLoadError, match="model-q4.gguf: cannot get it"):
        Qwen35LlamaCppChat.from_pretrained("someone/qwen-gguf", filename="model-q4.gguf")


def test_decoding_beside_a_busy_stage_uses_the_shared_threads(tiny_gguf: Path) -> None:
    """While another stage computes (the TTS on a later sentence), decode steps run on ``shared_threads``; prefill and
    decode alone keep every thread; the same tokens come out either way."""
    import llama_cpp

    from voicepipe.cores import schedule

    model = Qwen35LlamaCppChat.from_pretrained(tiny_gguf, load=False, n_ctx=1024, n_threads=2, shared_threads=1)
    seen: list[tuple[int, int]] = []
    real_eval = None
    try:
        prompt = model.encode_chat(MESSAGES, disable_thinking=True)
        alone = model.generate_tokens(prompt, GREEDY)
        llm = model._llm
        real_eval = llm.eval

        def eval_and_record(tokens):  # noqa: ANN001, ANN202
            seen.append((len(tokens), llama_cpp.llama_n_threads(llm.ctx)))
            return real_eval(tokens)

        llm.eval = eval_and_record
        assert all(n == 2 for _, n in seen)
        with schedule.busy("tts"):
            beside = model.generate_tokens(prompt, GREEDY)
        decode_threads = {n for count, n in seen if count == 1}
        assert decode_threads == {1}, seen
        seen.clear()
        model.generate_tokens(prompt + alone[:1], GREEDY)
        assert {n for count, n in seen if count == 1} == {2}, seen  # back to every thread once the TTS is done
        assert beside == alone
    finally:
        if real_eval is not None:
            model._llm.eval = real_eval
        model.close()


def test_decoding_waits_while_the_tts_speaks_the_first_chunk(tiny_gguf: Path) -> None:
    """llama.cpp checks the core schedule before each forward pass: while the TTS is critical it does not run."""
    import threading

    from voicepipe.cores import schedule

    model = Qwen35LlamaCppChat.from_pretrained(tiny_gguf, load=False, n_ctx=1024)
    try:
        prompt = model.encode_chat(MESSAGES, disable_thinking=True)
        tokens: list[int] = []
        old_max, schedule.max_wait_s = schedule.max_wait_s, 60.0
        with schedule.critical("tts"):
            worker = threading.Thread(target=lambda: tokens.extend(model.generate_tokens(prompt, GREEDY)))
            worker.start()
            for _ in range(6000):
                if schedule.waiting:
                    break
                threading.Event().wait(0.005)
            assert schedule.waiting == 1 and not tokens  # held before its first forward pass
        worker.join(60)
        assert len(tokens) == 16
    finally:
        schedule.max_wait_s = old_max
        model.close()
