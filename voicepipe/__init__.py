"""voicepipe: a real-time local voice assistant pipeline."""

__version__ = "0.1.0"
