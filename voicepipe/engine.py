"""Engines: the model behind a stage, one small contract for every role.

A stage (``vad``, ``asr``, ``llm``, ``tts``) does the pipeline's work: frames in, frames out, turns, interruptions. The
model it runs is an *engine*: a plain blocking object (no asyncio, no frames, no threads of its own) that the stage
builds in ``setup()`` and calls on its worker thread. Every engine, whatever its role, has:

==========================  ===========================================================================================
``Config``                  a pydantic model of its settings; each setting is defined there once, with its default
``Engine(config)``          cheap: stores the config, touches no file and starts no thread
``load()`` / ``unload()``   bring the weights in / free them (``load`` again brings them back)
``is_loaded``               whether the weights are resident
``memory_footprint``        bytes of weights resident now (0 when unloaded); the memory governor reads it
``cancel()``                abort work running on another thread (thread-safe; a no-op when idle)
==========================  ===========================================================================================

and one role protocol on top: ``VADEngine`` (``voicepipe.vad.base``), ``ASREngine`` (``voicepipe.asr.base``),
``TTSEngine`` (``voicepipe.tts.engine``), ``ChatEngine`` (``voicepipe.llm.base``).

Engines are registered in the entry-point groups ``voicepipe.engines.vad|asr|llm|tts`` (``voicepipe.registry``), so
a third party adds one with one file and one entry point; a stage's ``engine:`` setting names it. In
``pipeline.yaml`` the engine's settings sit beside the stage's own (``{type: asr, engine: faster-whisper, threads:
2}``): ``EngineStageConfig`` hands them to the engine's ``Config``, so a typo is reported against the engine chosen.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
    model_validator,
)

from voicepipe.errors import UserError
from voicepipe.stage import StageConfig

__all__ = ["Engine", "EngineConfig", "EngineStageConfig"]


class EngineConfig(BaseModel):
    """Base of every engine's settings. Unknown fields are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Engine(abc.ABC):
    """Base of every engine. Subclasses set ``role``, ``Config`` and implement the lifecycle and their role's calls.

    Methods block; a stage calls them on its worker thread (``Stage.run_blocking``), except ``cancel``, which is called
    from the event loop while another call runs.
    """

    #: ``vad``, ``asr``, ``llm`` or ``tts``: set by each role's base class.
    role: ClassVar[str] = ""
    Config: ClassVar[type[EngineConfig]] = EngineConfig

    def __init__(self, config: EngineConfig | None = None) -> None:
        self.config = config if config is not None else self.Config()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.role} engine>"

    @abc.abstractmethod
    def load(self) -> None:
        """Load the weights (a no-op when loaded); raise ``ModelLoadError`` naming the file that is missing or broken."""

    @abc.abstractmethod
    def unload(self) -> None:
        """Free the weights; ``load`` brings them back."""

    @property
    @abc.abstractmethod
    def is_loaded(self) -> bool: ...

    @property
    def memory_footprint(self) -> int:
        """Bytes of resident weights (0 when unloaded)."""
        return 0

    def cancel(self) -> None:  # noqa: B027 - optional: most engines cannot be interrupted mid-call
        """Abort the call running on another thread now (thread-safe; a no-op when idle or not supported)."""


class EngineStageConfig(StageConfig):
    """Base of the config of a stage that runs an engine: ``engine`` names it, its settings sit beside the stage's.

    Subclasses set ``role`` and declare ``engine: str = Field(<default>)``. The fields the stage does not declare are
    validated by the chosen engine's ``Config`` and kept, validated, in ``engine_config``; ``model_dump`` gives them
    back flat, as they are written in ``pipeline.yaml``.
    """

    role: ClassVar[str] = ""

    engine: str
    # SerializeAsAny: dump the chosen engine's fields, not those of the declared base (which has none)
    engine_config: SerializeAsAny[EngineConfig] = Field(
        default_factory=EngineConfig, description="(filled from the engine's fields)"
    )

    @classmethod
    def engine_class(cls, name: str) -> type[Engine]:
        """The engine class registered as ``name`` for this stage's role; ``UserError`` naming the choices if none."""
        from voicepipe.registry import resolve_engine

        return resolve_engine(cls.role, name)

    @classmethod
    def split(cls, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """``data`` as (the stage's own fields, the engine's fields)."""
        own = {k: v for k, v in data.items() if k in cls.model_fields}
        rest = {k: v for k, v in data.items() if k not in cls.model_fields}
        return own, rest

    @classmethod
    def engine_name(cls, own: dict[str, Any]) -> str:
        return own.get("engine", cls.model_fields["engine"].default)

    @model_validator(mode="before")
    @classmethod
    def _engine_fields(cls, data: Any) -> Any:
        if not isinstance(data, dict) or isinstance(data.get("engine_config"), EngineConfig):
            return data
        own, rest = cls.split(data)
        name = cls.engine_name(own)
        if not isinstance(name, str):
            return data  # the 'engine' field's own validation reports it
        try:
            engine = cls.engine_class(name)
        except UserError as exc:  # reported against the 'engine' field, like any other bad value
            error = {"type": "value_error", "loc": ("engine",), "input": name, "ctx": {"error": str(exc)}}
            raise ValidationError.from_exception_data(cls.__name__, [error]) from None
        return {**own, "engine_config": engine.Config.model_validate(rest)}

    @model_serializer(mode="wrap")
    def _flat(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        engine_fields = data.pop("engine_config", None) or {}
        return {**data, **engine_fields}

    def replace(self, **changes: Any) -> EngineStageConfig:
        """A validated copy with ``changes`` applied (stage or engine fields alike)."""
        return type(self).model_validate({**self.model_dump(), **changes})

    def build_engine(self) -> Engine:
        """The chosen engine, built from its settings (not loaded: nothing is read or started yet)."""
        return self.engine_class(self.engine)(self.engine_config)
