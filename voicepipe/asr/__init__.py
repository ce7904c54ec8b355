"""Speech recognition: one ASR stage over Whisper engines (faster-whisper, mlx-whisper), one file per engine.

Engines are imported lazily (inside ``load``), so importing this package needs neither extra.
"""

from voicepipe.asr.base import ASREngine, Transcription, TranscriptSegment, WhisperConfig

__all__ = ["ASREngine", "Transcription", "TranscriptSegment", "WhisperConfig"]
