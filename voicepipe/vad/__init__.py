"""Voice activity detection: model wrappers (webrtcvad, Silero), one segmenter state machine, and the VAD stage.

The wrappers only say how likely a frame is speech; ``Segmenter`` turns those probabilities into speech segments;
``VADStage`` adapts the segmenter to the pipeline. Backends are imported lazily, so importing this package is cheap.
"""

from voicepipe.vad.base import SAMPLE_RATE, VADModel
from voicepipe.vad.segmenter import Pause, Segment, Segmenter, SegmenterConfig, SpeechEnd, SpeechStart

__all__ = ["SAMPLE_RATE", "VADModel", "Segmenter", "SegmenterConfig", "Segment", "SpeechStart", "Pause", "SpeechEnd"]
