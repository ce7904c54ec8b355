"""Speech recognition: one ASR stage over Whisper engines (faster-whisper, mlx-whisper), one file per engine.

Engines are imported lazily (inside ``load``), so importing this package needs neither extra.
"""

from voicepipe.asr.base import GuardConfig, Transcriber, Transcription, TranscriptSegment

__all__ = ["GuardConfig", "Transcriber", "Transcription", "TranscriptSegment"]
