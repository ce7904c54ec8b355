"""Voice activity detection: engines (webrtcvad, Silero), one segmenter state machine, and the VAD stage.

The engines only say how likely a frame is speech; ``Segmenter`` turns those probabilities into speech segments;
``VADStage`` adapts the segmenter to the pipeline. Engines are imported lazily, so importing this package is cheap.
"""

from voicepipe.vad.base import VADEngine
from voicepipe.vad.segmenter import Pause, Segment, Segmenter, SegmenterConfig, SpeechEnd, SpeechStart

__all__ = ["VADEngine", "Segmenter", "SegmenterConfig", "Segment", "SpeechStart", "Pause", "SpeechEnd"]
