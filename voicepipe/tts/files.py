"""Find a TTS engine's files: a local path, or a file in a Hugging Face repo downloaded with a progress bar.

A reference is either an existing local path, or ``owner/repo/path/in/repo`` (a file in a Hugging Face model repo,
fetched through ``huggingface_hub`` into its usual cache). Anything else is a ``ModelLoadError`` naming the field.
"""

from __future__ import annotations

import re
import warnings
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
    return _download(repo_id, filename, field=field, local=local)


def _download(repo_id: str, filename: str, *, field: str, local: Path) -> Path:
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(repo_id, filename, tqdm_class=_rich_tqdm()))
    except Exception as exc:  # offline, missing repo/file, no space: all mean the same fix for the user
        reason = str(exc).splitlines()[0] if str(exc) else "no details"
        raise ModelLoadError(
            f"{field}: could not get {filename!r} from the hub repo {repo_id!r} ({type(exc).__name__}: {reason}); "
            f"no local file {local} either: download it and give its local path"
        ) from exc


def _rich_tqdm() -> type:
    """tqdm's rich front end, so downloads show a rich progress bar; its 'experimental' warning is silenced."""
    from tqdm import TqdmExperimentalWarning
    from tqdm.rich import tqdm_rich

    class RichProgress(tqdm_rich):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            kwargs.pop("name", None)  # huggingface_hub passes a name tqdm does not know
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", TqdmExperimentalWarning)
                super().__init__(*args, **kwargs)

    return RichProgress
