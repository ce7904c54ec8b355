"""Files the user asked voicepipe to write, written so that no existing file is ever destroyed.

Every writer (the WAV sink, ``say --output``, ``--metrics``, the model converters) goes through ``OutputFile``:

- the data goes into a temporary file of this run's own (a unique name in the target's directory), so two runs
  writing the same path never share one, and a half-written file never appears under the requested name;
- ``commit()`` moves it into place only when the writer succeeded; ``discard()`` (any failure) removes it and leaves
  the previous file as it was;
- a symlink is followed: its target is written, the link stays;
- a FIFO or a device (``/dev/null``, a named pipe another program reads) is written through, never replaced; the
  data is staged in the system's temporary directory and copied into it on commit; any other kind of file (a
  socket, a directory) is refused.

A converter's output directory is built beside its target and moved into place by ``replace_dir``, which replaces
only an earlier output (or an empty directory), never a directory holding anything else.

``tempfile.mkstemp`` gives the unique, exclusively created name; the rest (follow links, refuse or write through
what is not a regular file) is policy no library implements, hence this module.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import tempfile
from pathlib import Path

from voicepipe.errors import UserError, VoicepipeError

__all__ = ["OutputFile", "OutputError", "replace_dir"]


class OutputError(VoicepipeError):
    """Writing an output file failed (disk full, directory removed, device error); the previous file is kept."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


class OutputFile:
    """One output path: ``check()`` early, ``begin()`` for a temporary path to write, then ``commit()`` or ``discard()``.

    ``what`` names the option in messages (``--output``, ``--metrics``, ``wav-sink path``).
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str = "output") -> None:
        self.path = Path(path)
        self.what = what
        self.temp: Path | None = None
        self._through = False

    def __repr__(self) -> str:
        return f"<OutputFile {str(self.path)!r}>"

    @property
    def target(self) -> Path:
        """Where the bytes end up: the path itself, or the final target of a symlink."""
        return Path(os.path.realpath(self.path))

    def _mode(self) -> int | None:
        """``st_mode`` of the existing target, or None if there is none."""
        try:
            return os.stat(self.target).st_mode
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise UserError(f"{self.what} {self.path}: cannot inspect it ({exc.strerror})") from exc

    def same_as(self, other: OutputFile) -> bool:
        """True when both paths end up in the same file (so one run would overwrite its own output)."""
        if self.target == other.target:
            return True
        try:
            return os.path.samefile(self.target, other.target)
        except OSError:
            return False

    def check(self) -> None:
        """A one-line ``UserError`` when the path cannot be written; call it before any model loads."""
        mode = self._mode()
        if mode is not None and stat.S_ISDIR(mode):
            raise UserError(f"{self.what} {self.path}: is a directory; give a file name such as {self.path / 'out'}")
        if mode is not None and not (stat.S_ISREG(mode) or stat.S_ISFIFO(mode) or stat.S_ISCHR(mode)):
            raise UserError(f"{self.what} {self.path}: is neither a regular file, a pipe nor a device; choose a file")
        if mode is not None and not stat.S_ISREG(mode):
            if not os.access(self.target, os.W_OK):
                raise UserError(f"{self.what} {self.path}: is not writable; choose another path")
            return
        parent = self.target.parent
        if not parent.is_dir():
            raise UserError(
                f"{self.what} {self.path}: directory '{parent}' does not exist; create it or choose another path"
            )
        if not os.access(parent, os.W_OK | os.X_OK):
            raise UserError(f"{self.what} {self.path}: directory '{parent}' is not writable; choose another path")

    def begin(self) -> Path:
        """Create this run's own temporary file (empty) and return its path; the writer writes there."""
        self.check()
        mode = self._mode()
        self._through = mode is not None and not stat.S_ISREG(mode)
        target = self.target
        where = None if self._through else target.parent
        try:
            fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=where)
        except OSError as exc:
            raise OutputError(f"{self.what} {self.path}: cannot create a temporary file ({exc.strerror})") from exc
        os.close(fd)
        self.temp = Path(name)
        return self.temp

    def lost(self) -> str | None:
        """Why the temporary file can no longer be moved into place (its directory was removed), else None."""
        if self.temp is None or self._through:
            return None
        if not self.temp.exists():
            return f"{self.what} {self.path}: the directory '{self.temp.parent}' or the file being written was removed"
        return None

    def commit(self) -> None:
        """Move (or, for a pipe/device, copy) the finished temporary file into place; ``OutputError`` if that fails."""
        temp = self.temp
        if temp is None:
            raise RuntimeError("OutputFile.commit() before begin()")
        try:
            if self._through:
                with os.fdopen(self._open_through(), "wb") as dst, temp.open("rb") as src:
                    shutil.copyfileobj(src, dst)
                temp.unlink()
            else:
                mode = self._mode()
                if mode is not None and not stat.S_ISREG(mode):  # became a pipe/device meanwhile: never replace it
                    raise OSError(0, "it is no longer a regular file")
                os.chmod(temp, stat.S_IMODE(mode) if mode is not None else 0o666 & ~_umask())
                with temp.open("rb+") as fh:
                    os.fsync(fh.fileno())
                os.replace(temp, self.target)
        except OSError as exc:
            self.discard()
            reason = exc.strerror or str(exc)
            kept = "" if self._through else "; the previous file is kept"
            raise OutputError(f"{self.what} {self.path}: could not write it ({reason}){kept}") from exc
        self.temp = None

    def _open_through(self) -> int:
        """Open the pipe or device for writing as it is (no O_CREAT, no O_TRUNC). A pipe nobody reads would block
        forever: it is an error instead."""
        flags = os.O_WRONLY | getattr(os, "O_CLOEXEC", 0)
        mode = self._mode()
        if mode is None or not stat.S_ISFIFO(mode):
            return os.open(self.target, flags)
        try:
            fd = os.open(self.target, flags | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                raise OSError(errno.ENXIO, "no program is reading from the pipe") from exc
            raise
        os.set_blocking(fd, True)
        return fd

    def discard(self) -> None:
        """Remove the temporary file; the previous file at the path stays as it was."""
        if self.temp is not None:
            with contextlib.suppress(OSError):
                self.temp.unlink()
            self.temp = None


def replace_dir(built: str | os.PathLike[str], target: str | os.PathLike[str], *, what: str = "output") -> Path:
    """Move the finished directory ``built`` (made in ``target``'s parent) to ``target`` and return ``target``.

    An existing ``target`` is replaced only when it is a directory (not a link to one) holding nothing that ``built``
    lacks: an empty directory, or an earlier output of the same converter. Anything else is a ``UserError`` and stays
    as it is. The old directory is moved aside first, put back if the move fails, and removed only after it.
    """
    built, target = Path(built), Path(target)
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise UserError(f"{what} {target}: exists and is not a directory; choose a new or empty directory")
    if not target.exists():
        built.rename(target)
        return target
    others = sorted({p.name for p in target.iterdir()} - {p.name for p in built.iterdir()})
    if others:
        listed = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
        raise UserError(
            f"{what} {target}: holds files this output would not replace ({listed}); choose a new or empty directory"
        )
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    old = aside / target.name
    target.rename(old)
    try:
        built.rename(target)
    except BaseException:
        old.rename(target)
        aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)
    return target
