"""One process per run directory: a lock file that names its holder and dies with it.

``DirectoryLock.acquire(path)`` takes ``path/.layerprune.lock`` with ``flock``: the kernel drops
the lock when its process ends, however it ends (``kill -9`` included), so a lock file left by a
killed run is taken over without asking. The file says who holds the lock (PID, host, command,
start time) so that a second run can be told which process is in the way.

>>> with DirectoryLock.acquire("runs/quickstart"):  # doctest: +SKIP
...     ...  # write into runs/quickstart
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

from layerprune.errors import DirectoryInUseError
from layerprune.io import make_dir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, directories are not guarded
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".layerprune.lock"


def holder(directory: str | Path) -> dict[str, Any] | None:
    """What the lock file of ``directory`` says about its (last) holder, if anything."""
    try:
        return json.loads((Path(directory) / LOCK_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class DirectoryLock:
    """An exclusive lock on a directory, held until :meth:`release` (or the process ends)."""

    def __init__(self, directory: Path, fd: int | None, taken_over: dict[str, Any] | None) -> None:
        self.directory, self._fd = directory, fd
        self.taken_over = taken_over  # the holder recorded by a process that died holding it

    @classmethod
    def acquire(cls, directory: str | Path, *, wait: bool = False) -> "DirectoryLock":
        """Lock ``directory`` (created if missing) or raise :class:`DirectoryInUseError` naming the
        process that holds it; with ``wait``, block until that process lets go."""
        directory = make_dir(directory)
        path = directory / LOCK_FILE
        if fcntl is None:  # pragma: no cover
            return cls(directory, None, None)
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise DirectoryInUseError(_in_use(directory, holder(directory))) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:  # not a file that its holder unlinked while we were opening it
                break
            os.close(fd)
        previous = holder(directory)
        me = {"pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(me) + "\n").encode())
        return cls(directory, fd, previous if previous and previous.get("pid") != os.getpid() else None)

    @classmethod
    def wait_for(cls, directory: str | Path, *, log: Callable[[str], None], doing: str) -> "DirectoryLock":
        """:meth:`acquire` with ``wait``, first saying which other process holds the lock and what it
        may be ``doing`` (a wait that may last long is never silent)."""
        if (other := holder(directory)) and other.get("pid") != os.getpid():
            log(f"waiting for process {other.get('pid')}, which may be {doing}")
        return cls.acquire(directory, wait=True)

    def release(self) -> None:
        """Unlock and delete the lock file (a finished run leaves no trace of it)."""
        if self._fd is None:
            return
        try:
            (self.directory / LOCK_FILE).unlink(missing_ok=True)
        except OSError:
            pass
        os.close(self._fd)  # closing drops the flock
        self._fd = None

    def __getstate__(self) -> dict[str, Any]:
        # Sent to other ranks (under torchrun, with the run directory): they hold no lock.
        return {**self.__dict__, "_fd": None}

    def __enter__(self) -> "DirectoryLock":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _in_use(directory: Path, info: dict[str, Any] | None) -> str:
    if not info:
        return f"{directory} is in use by another process; wait for it to finish, or choose another --out"
    where = f" on {info['host']}" if info.get("host") and info["host"] != socket.gethostname() else ""
    command = f" ({info['command']})" if info.get("command") else ""
    return (f"{directory} is in use by process {info.get('pid')}{where}{command}, running since {info.get('since')}; "
            "wait for it to finish, or choose another --out")
