"""One edge per database: an ``flock`` on ``<db>.lock`` that names its holder."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from emsbms.errors import ConfigError


class EdgeLock:
    """The lock that makes one edge the only one on a database file.

    An exclusive ``flock`` on ``<db>.lock``, which holds the holder's PID and start time. The
    kernel releases it when the holder's file is closed or its process dies (SIGKILL included),
    so a crash never leaves a stale lock. Readers of the database do not take it.
    """

    def __init__(self, db: Path, fd: int) -> None:
        self.db = db
        self._fd: int | None = fd

    @staticmethod
    def path_for(db: str | Path) -> Path:
        db = Path(db)
        return db.with_name(db.name + ".lock")

    @classmethod
    def acquire(cls, db: str | Path) -> EdgeLock:
        """Take the lock of `db`; ConfigError naming the holder if another edge has it."""
        db = Path(db)
        path = cls.path_for(db)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConfigError(f"database {db}: cannot create its lock file {path}: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").split()
            os.close(fd)
            pid = holder[0] if holder else "unknown"
            started = " ".join(holder[1:3]) if len(holder) >= 3 else "unknown"
            raise ConfigError(
                f"database {db} is in use by the edge with PID {pid} (started {started}); stop it first"
            ) from None
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {started}\n".encode(), 0)
        return cls(db, fd)

    def release(self) -> None:
        """Give the lock up (closing its file releases the flock)."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)
        finally:
            os.close(fd)

    @property
    def held(self) -> bool:
        return self._fd is not None
