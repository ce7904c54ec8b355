"""Find a TTS engine's files: a local path, or a file in a Hugging Face repo downloaded with a progress bar.

A reference is either an existing local path, or ``owner/repo/path/in/repo`` (a file in a Hugging Face model repo,
fetched through ``voicepipe.assets`` into huggingface_hub's cache). Anything else is a ``ModelLoadError`` naming the
field.
"""

from __future__ import annotations

import re
from pathlib import Path

from voicepipe.errors import ModelLoadError

__all__ = ["resolve_file", "is_hub_reference"]

_HUB_FILE = re.compile(r"^([\w.-]+/[\w.-]+)/(.+)$")


def is_hub_reference(ref: str) -> bool:
    """True when ``ref`` is not an existing local path but has the ``owner/repo/file`` shape."""
    return not Path(ref).expanduser().exists() and _HUB_FILE.match(ref) is not None


def resolve_file(ref: str, *, field: str) -> Path:
    """Return a local path for ``ref`` (downloading it when it names a file in a Hugging Face repo)."""
    local = Path(ref).expanduser()
    if local.exists():
        if not local.is_file():
            raise ModelLoadError(f"{field}: {local} is a directory; name the file inside it")
        return local
    match = _HUB_FILE.match(ref)
    if match is None or ref.startswith((".", "/", "~")):
        raise ModelLoadError(f"{field}: file not found: {local}; give an existing path or owner/repo/file on the hub")
    repo_id, filename = match.groups()
    from voicepipe.assets import fetch_file

    return fetch_file(repo_id, filename, field=field)
