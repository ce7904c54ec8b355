"""How a reply is sampled: ``ChatSamplingConfig``, the one definition of every sampling setting and its default.

The LLM stage's config inherits these fields (``temperature: 0`` sits flat in the ``llm`` stage of ``pipeline.yaml``),
and every engine reads them from the object passed to ``generate``; nowhere else restates a sampling default.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["ChatSamplingConfig"]


class ChatSamplingConfig(BaseModel):
    """How to sample a reply. ``temperature=0`` is greedy; ``top_k=0`` and ``top_p=1`` disable those filters.

    The defaults suit a voice reply: no think block (the answer starts at once) and a cap of a few spoken sentences.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    temperature: float = Field(0.6, ge=0, le=100, description="0 = greedy.")
    top_k: int = Field(50, ge=0, strict=True, description="0 = off.")
    top_p: float = Field(0.95, gt=0, le=1, description="1 = off.")
    max_tokens: int = Field(256, ge=1, strict=True, description="Tokens the reply may have, think tokens included.")
    repetition_penalty: float = Field(1.1, gt=0, le=10)
    disable_thinking: bool = Field(True, description="Voice replies should start at once: no think block.")
    max_thinking_tokens: int = Field(
        100, ge=0, strict=True, description="The thinking cap: '</think>' is forced after this many."
    )
    seed: int | None = Field(None, ge=0, strict=True, description="Fixes the draws of a sampled (non-greedy) reply.")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def sampling(self) -> ChatSamplingConfig:
        """Just the sampling settings (of a config that extends this one, like the LLM stage's)."""
        return ChatSamplingConfig(**{name: getattr(self, name) for name in ChatSamplingConfig.model_fields})
