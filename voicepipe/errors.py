"""Exceptions. A ``UserError`` is a mistake the user can fix (bad file, missing extra): the CLI prints its one line and
exits 2, with no traceback. Anything else is a bug or an engine failure and exits 1."""

from __future__ import annotations

__all__ = ["VoicepipeError", "UserError", "ConfigError", "MissingDependencyError", "ModelLoadError", "StageError"]


class VoicepipeError(Exception):
    """Base of voicepipe's own exceptions."""


class UserError(VoicepipeError):
    """Something the user can fix. The message is one line that names the file/field and says the fix."""


class ConfigError(UserError):
    """``pipeline.yaml`` is invalid. Carries ``file:line: field.path: problem`` lines."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems or [message]


class MissingDependencyError(UserError):
    """An optional backend is not installed; the message names the pip extra to install."""


class ModelLoadError(UserError):
    """A model file is missing, corrupt or of the wrong kind; the message names the path and the fix."""


class StageError(VoicepipeError):
    """A stage failed while processing. ``retryable`` says whether trying the turn again can help."""

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.retryable = retryable
