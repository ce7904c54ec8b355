"""A local Hugging Face hub for tests: the HTTP endpoints huggingface_hub (2.x) uses to download, on 127.0.0.1.

A fake by necessity: no test may reach the real hub. It answers exactly what ``hf_hub_download`` and
``snapshot_download`` ask (read from huggingface_hub's ``file_download.py``, ``_snapshot_download.py``, ``hf_api.py``):

- ``HEAD``/``GET /{repo}/resolve/{revision}/{path}``: small files are served directly (``ETag`` = git blob id,
  ``X-Repo-Commit``, ``Content-Length``); LFS files answer ``302`` to a second server standing in for the CDN, with
  ``X-Linked-Etag`` (their sha256) and ``X-Linked-Size``, as the real hub does;
- ``GET /lfs/{sha256}`` on the CDN server, with ``Range`` requests (``206``) for resumed downloads;
- ``GET /api/models/{repo}[/revision/{rev}]`` (siblings; sizes, blob ids and LFS sha256 with ``blobs=true``) and
  ``GET /api/models/{repo}/tree/{rev}`` (the recursive listing ``snapshot_download`` reads);
- ``404`` with ``X-Error-Code: RepoNotFound`` / ``RevisionNotFound`` / ``EntryNotFound``; ``401 GatedRepo``.

Fault injection: ``cut_after(path, n)`` closes the connection after ``n`` bytes of the next download of that file
(huggingface_hub then resumes with a ``Range`` request); ``corrupt_once(path)`` serves flipped bytes once.
Every request is recorded in ``requests`` (method, path, Range header), to prove that a run made none.
"""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["HubServer", "HubRequest", "lfs_suffixes"]

#: Extensions the hub stores in LFS (as in its default .gitattributes); anything over 10 MB is LFS too.
lfs_suffixes = {".safetensors", ".bin", ".onnx", ".gguf", ".npz", ".pt", ".msgpack", ".h5", ".ot"}
_LFS_MIN_SIZE = 10 * 1024 * 1024
_CHUNK = 1 << 20


def _git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class _File:
    path: str
    source: Path | bytes
    size: int
    blob_id: str
    sha256: str | None  # set for LFS files

    def read(self, start: int = 0) -> bytes:
        if isinstance(self.source, bytes):
            return self.source[start:]
        with open(self.source, "rb") as f:
            f.seek(start)
            return f.read()


@dataclass
class _Repo:
    files: dict[str, _File]
    commit: str
    gated: bool = False


@dataclass(frozen=True)
class HubRequest:
    method: str
    path: str
    range: str | None


@dataclass
class _Faults:
    cut: dict[str, int] = field(default_factory=dict)  # sha256 -> bytes to send before closing
    corrupt: set[str] = field(default_factory=set)  # sha256 of files to serve flipped once


class HubServer:
    """Serves repos added with ``add_repo``; start with ``with HubServer() as hub:`` (threads, free ports)."""

    def __init__(self) -> None:
        self.repos: dict[str, _Repo] = {}
        self.requests: list[HubRequest] = []
        self.faults = _Faults()
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []
        self._threads: list[threading.Thread] = []

    # -- content -----------------------------------------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, Path | bytes], *, gated: bool = False) -> str:
        """Serve ``files`` (repo path -> local file or bytes) as ``repo_id`` at one commit; returns the commit."""
        entries: dict[str, _File] = {}
        for path, source in sorted(files.items()):
            data = source if isinstance(source, bytes) else None
            size = len(data) if data is not None else Path(source).stat().st_size
            lfs = Path(path).suffix in lfs_suffixes or size > _LFS_MIN_SIZE
            if lfs:
                sha = hashlib.sha256(data).hexdigest() if data is not None else _sha256_file(Path(source))
                pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {size}\n".encode()
                entries[path] = _File(path, source, size, _git_blob_id(pointer), sha)
            else:
                content = data if data is not None else Path(source).read_bytes()
                entries[path] = _File(path, content, size, _git_blob_id(content), None)
        commit = hashlib.sha1(
            json.dumps([repo_id, [(f.path, f.blob_id) for f in entries.values()]]).encode()
        ).hexdigest()
        self.repos[repo_id] = _Repo(entries, commit, gated)
        return commit

    def cut_after(self, repo_id: str, path: str, nbytes: int) -> None:
        """The next download of this LFS file stops after ``nbytes`` (the connection is closed)."""
        self.faults.cut[self._sha(repo_id, path)] = nbytes

    def corrupt_once(self, repo_id: str, path: str) -> None:
        """The next download of this LFS file has flipped bytes (same length)."""
        self.faults.corrupt.add(self._sha(repo_id, path))

    def _sha(self, repo_id: str, path: str) -> str:
        sha = self.repos[repo_id].files[path].sha256
        if sha is None:
            raise ValueError(f"{path} is not an LFS file")
        return sha

    # -- lifecycle ---------------------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def cdn(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    def start(self) -> HubServer:
        hub = self

        class Handler(_Handler):
            server_state = hub

        for _ in range(2):  # the hub, and the "CDN" (another origin, as LFS downloads leave the hub)
            server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            server.daemon_threads = True
            thread = threading.Thread(target=server.serve_forever, name="test-hub", daemon=True)
            thread.start()
            self._servers.append(server)
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def record(self, request: HubRequest) -> None:
        with self._lock:
            self.requests.append(request)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: HubServer

    def log_message(self, format: str, *args: object) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._route(head=True)

    def do_GET(self) -> None:
        self._route(head=False)

    # -- routing -----------------------------------------------------------------------------------------------------

    def _route(self, *, head: bool) -> None:
        hub = self.server_state
        url = urlsplit(self.path)
        hub.record(HubRequest(self.command, url.path, self.headers.get("Range")))
        parts = [unquote(p) for p in url.path.strip("/").split("/")]
        query = parse_qs(url.query)
        if parts[:1] == ["lfs"] and len(parts) == 2:
            return self._lfs(parts[1], head=head)
        if parts[:2] == ["api", "models"] and len(parts) >= 4:
            repo_id = f"{parts[2]}/{parts[3]}"
            repo = self._repo(repo_id)
            if repo is None:
                return
            rest = parts[4:]
            if not rest or (rest[0] == "revision" and len(rest) == 2):
                if rest and not self._revision_ok(repo, rest[1]):
                    return
                return self._model_info(repo_id, repo, blobs=query.get("blobs", ["false"])[0].lower() == "true")
            if rest[0] == "tree" and len(rest) >= 2:
                if not self._revision_ok(repo, rest[1]):
                    return
                return self._tree(repo, "/".join(rest[2:]))
        if len(parts) >= 5 and parts[2] == "resolve":
            repo_id = f"{parts[0]}/{parts[1]}"
            repo = self._repo(repo_id)
            if repo is None or not self._revision_ok(repo, parts[3]):
                return
            return self._resolve(repo, "/".join(parts[4:]), head=head)
        self._error(404, None, "Not found")

    def _repo(self, repo_id: str) -> _Repo | None:
        repo = self.server_state.repos.get(repo_id)
        if repo is None:
            self._error(404, "RepoNotFound", "Repository not found")
        elif repo.gated:
            self._error(401, "GatedRepo", "Access to this model is restricted.")
            return None
        return repo

    def _revision_ok(self, repo: _Repo, revision: str) -> bool:
        if revision in ("main", repo.commit):
            return True
        self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return False

    # -- answers -----------------------------------------------------------------------------------------------------

    def _model_info(self, repo_id: str, repo: _Repo, *, blobs: bool) -> None:
        siblings = []
        for f in repo.files.values():
            sibling: dict[str, object] = {"rfilename": f.path}
            if blobs:
                sibling.update(size=f.size, blobId=f.blob_id)
                if f.sha256 is not None:
                    sibling["lfs"] = {"sha256": f.sha256, "size": f.size, "pointerSize": 134}
            siblings.append(sibling)
        info = {
            "_id": repo.commit[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": repo_id.split("/")[0],
            "sha": repo.commit,
            "lastModified": "2026-01-01T00:00:00.000Z",
            "private": False,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
        }
        self._json(repo, info)

    def _tree(self, repo: _Repo, under: str) -> None:
        prefix = f"{under}/" if under else ""
        dirs: set[str] = set()
        entries: list[dict[str, object]] = []
        for f in repo.files.values():
            if not f.path.startswith(prefix):
                continue
            parents = f.path.split("/")[:-1]
            for i in range(len(parents)):
                dirs.add("/".join(parents[: i + 1]))
            entry: dict[str, object] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
            if f.sha256 is not None:
                entry["lfs"] = {"oid": f.sha256, "size": f.size, "pointerSize": 134}
            entries.append(entry)
        folders = [{"type": "directory", "oid": _git_blob_id(d.encode()), "size": 0, "path": d} for d in sorted(dirs)]
        self._json(repo, [*folders, *entries])

    def _resolve(self, repo: _Repo, path: str, *, head: bool) -> None:
        f = repo.files.get(path)
        if f is None:
            return self._error(404, "EntryNotFound", f"{path} does not exist on 'main'", commit=repo.commit)
        common = {"X-Repo-Commit": repo.commit, "Accept-Ranges": "bytes"}
        if f.sha256 is not None:
            self._send(
                302,
                {
                    **common,
                    "Location": f"{self.server_state.cdn}/lfs/{f.sha256}",
                    "ETag": f'"{f.blob_id}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(f.size),
                },
                b"",
            )
            return
        self._body(f, {**common, "ETag": f'"{f.blob_id}"'}, head=head)

    def _lfs(self, sha: str, *, head: bool) -> None:
        hub = self.server_state
        f = next((f for r in hub.repos.values() for f in r.files.values() if f.sha256 == sha), None)
        if f is None:
            return self._error(404, None, "no such object")
        name = f.path.rsplit("/", 1)[-1]  # the CDN names the file, which is what progress bars show
        disposition = f"attachment; filename*=UTF-8''{name}; filename=\"{name}\";"
        self._body(f, {"ETag": f'"{sha}"', "Accept-Ranges": "bytes", "Content-Disposition": disposition}, head=head)

    def _body(self, f: _File, headers: dict[str, str], *, head: bool) -> None:
        start = 0
        wanted = self.headers.get("Range")
        if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
            start = int(wanted[len("bytes=") : -1])
        status = 206 if start else 200
        headers = {**headers, "Content-Type": "application/octet-stream", "Content-Length": str(f.size - start)}
        if start:
            headers["Content-Range"] = f"bytes {start}-{f.size - 1}/{f.size}"
        self._send(status, headers, None)
        if head:
            return
        data = f.read(start)
        faults = self.server_state.faults
        if f.sha256 is not None and f.sha256 in faults.corrupt:
            faults.corrupt.discard(f.sha256)
            middle = len(data) // 2
            data = data[:middle] + bytes(b ^ 0xFF for b in data[middle : middle + 4096]) + data[middle + 4096 :]
        cut = faults.cut.pop(f.sha256, None) if f.sha256 is not None else None
        if cut is not None:
            self.wfile.write(data[:cut])
            self.wfile.flush()
            self.close_connection = True
            return
        for i in range(0, len(data), _CHUNK):
            self.wfile.write(data[i : i + _CHUNK])

    def _json(self, repo: _Repo, payload: object) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "X-Repo-Commit": repo.commit}
        self._send(200, headers, body if self.command != "HEAD" else b"")

    def _error(self, status: int, code: str | None, message: str, *, commit: str | None = None) -> None:
        body = json.dumps({"error": message}).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body)), "X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        if commit:
            headers["X-Repo-Commit"] = commit
        self._send(status, headers, body if self.command != "HEAD" else b"")

    def _send(self, status: int, headers: dict[str, str], body: bytes | None) -> None:
        self.send_response(status)
        headers.setdefault("Content-Length", str(len(body or b"")))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if body:
            self.wfile.write(body)
