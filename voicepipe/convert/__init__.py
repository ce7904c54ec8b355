"""Converters: a checkpoint in, the files an engine loads out; one module per target format.

- ``to_gguf``: Hugging Face Qwen3.5 -> GGUF (F32/BF16, then Q4_K_M / Q4_0 / Q8_0) for the llama.cpp engine.
- ``to_mlx``: Hugging Face Qwen3.5 -> MLX weights (fp32/bf16/fp16, INT8/INT4) for the MLX engine; it also finds the
  weights that engine loads (a local directory or a hub repo, converted on first use).
- ``to_coreml`` (with ``coreml_torch``, the model re-expressed in plain torch for tracing): Hugging Face Qwen3.5 ->
  a stateful CoreML package for the CoreML engine.
- ``whisper_to_mlx``: a CTranslate2 (faster-whisper) Whisper directory -> mlx-whisper's format.

Engines convert on first use into ``voicepipe.assets.cache_dir`` (named by ``assets.fingerprint``, built under
``assets.file_lock``); ``scripts/convert_*.py`` run the same code by hand. The heavy libraries (torch,
coremltools, MLX) are imported only when a conversion runs.
"""
