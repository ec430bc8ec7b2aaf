"""Atomic file output: a reader never sees a half-written file, and a failure keeps the old one.

A write that fails because of where it goes (a parent that is a file, a read-only folder) raises
:class:`~layerprune.errors.OutputError`; one that runs out of room (no space left, a file size
limit, a quota) raises :class:`~layerprune.errors.StorageFullError`. Both name the file that was
being written, never the temporary one, and leave nothing behind.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from layerprune.errors import OutputError, StorageFullError

#: Temporary names of atomic writes: ``.NAME.XXXX.tmp`` (file or folder), ``.NAME.XXXX.old``.
PARTIAL_GLOBS = (".*.tmp", ".*.old")
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once: mkstemp/mkdtemp make private (0600/0700) entries; ours follow the umask
_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}
_UNWRITABLE = {errno.ENOTDIR, errno.EEXIST, errno.EROFS, errno.EACCES, errno.EPERM, errno.EISDIR}


def output_error(path: str | Path, exc: OSError, *, folder: bool = False) -> OutputError | None:
    """The one-line error for an ``OSError`` met while writing ``path`` (a ``folder`` or a file), or
    ``None`` when the error is not about the output location."""
    path = Path(path)
    if exc.errno in _FULL:
        return StorageFullError(f"cannot write {path}: {exc.strerror} (the storage is full or a file size limit "
                                "was reached); nothing was half-written; free space and rerun to resume")
    if exc.errno in _UNWRITABLE:
        candidates = [path, *path.parents] if folder else list(path.parents)
        blocker = next((p for p in candidates if p.exists() and not p.is_dir()), None)
        why = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror
        return OutputError(f"cannot write {path}: {why}; choose another output location")
    return None


@contextmanager
def _writing(path: Path, folder: bool = False) -> Iterator[None]:
    """Turn the ``OSError`` of a write to ``path`` into its one-line error."""
    try:
        yield
    except OSError as exc:
        error = output_error(path, exc, folder=folder)
        if error is None:
            raise
        raise error from None


def make_dir(path: str | Path) -> Path:
    """``mkdir -p`` whose error names the path and why (e.g. a parent that is a file)."""
    path = Path(path)
    with _writing(path, folder=True):
        path.mkdir(parents=True, exist_ok=True)
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    make_dir(path.parent)
    with _writing(path):
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        os.chmod(tmp, 0o666 & ~_UMASK)
    tmp_path = Path(tmp)
    try:
        with _writing(path):
            yield tmp_path
            os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


class _Recorder:
    """A file wrapper that keeps the ``OSError`` of a failed write: ``torch.save`` reports it only
    as an opaque ``RuntimeError`` of its zip writer."""

    def __init__(self, file: Any) -> None:
        self.file, self.error = file, None

    def write(self, data: bytes) -> int:
        try:
            return self.file.write(data)
        except OSError as exc:
            self.error = exc
            raise

    def flush(self) -> None:
        self.file.flush()


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically, with the errors of :func:`atomic_path`."""
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        out = _Recorder(f)
        try:
            torch.save(obj, out)
        except RuntimeError:
            if out.error is not None:
                raise out.error from None
            raise


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; on success it takes ``path``'s place.

    An existing folder at ``path`` is replaced only once the new one is complete.
    """
    path = Path(path)
    make_dir(path.parent)
    with _writing(path, folder=True):
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        os.chmod(tmp, 0o777 & ~_UMASK)
    try:
        with _writing(path, folder=True):
            yield tmp
            if path.exists():
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
                os.replace(path, old / "previous")
                os.replace(tmp, path)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def remove_partial(directory: str | Path) -> list[Path]:
    """Delete what killed atomic writes left under ``directory`` (their temporary files and
    folders); return them. Only safe while no other process writes there (hold its lock)."""
    found = sorted({p for pattern in PARTIAL_GLOBS for p in Path(directory).rglob(pattern)})
    for p in found:
        target = p.with_name(p.name[1:].rsplit(".", 2)[0])
        if p.suffix == ".old" and (p / "previous").exists() and not target.exists():
            os.replace(p / "previous", target)  # killed between atomic_dir's two renames: put it back
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        elif p.exists() or p.is_symlink():
            p.unlink()
    return found
