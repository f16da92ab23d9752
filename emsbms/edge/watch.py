"""Hot activation from the database: a running edge picks up profile versions imported after it started.

`ProfileWatcher.poll()` looks at the profile store (at most every `interval` seconds; it reads
``max(id)`` of ``profiles``, one indexed query). For every profile name imported since the last
poll, the devices that use that name (and do not name a version, ``NAME@VERSION``) switch to its
newest stored version if that is newer than theirs, through `Edge.activate_profile`. A version
that does not load or validate is logged and never replaces the working one. ``emsbms run``
calls `poll` from its main loop; `start()` runs it on a thread of its own instead.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from emsbms.db.profiles import ProfileStore, split_ref, version_key
from emsbms.db.schema import connect, migrate
from emsbms.edge.edge import Edge
from emsbms.errors import EmsbmsError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Activation:
    """One profile version switched on (or refused) by the watcher."""

    profile: str
    version: str
    devices: tuple[str, ...]
    imported_us: int
    activated_us: int
    error: str | None = None


class ProfileWatcher:
    """Polls the profile store of the database at `path` and activates newer versions in `edge`."""

    def __init__(
        self,
        path: str | Path,
        edge: Edge,
        interval: float = 1.0,
        on_activate: Callable[[Activation], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.edge = edge
        self.interval = interval
        self.on_activate = on_activate
        self.activations: list[Activation] = []
        db = connect(self.path)
        migrate(db)
        self.store = ProfileStore(db)
        self.last_id = self.store.last_id()
        self._next = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def poll(self, force: bool = False) -> list[Activation]:
        """Activate what was imported since the last poll (if `interval` has passed, or `force`)."""
        now = time.monotonic()
        if not force and now < self._next:
            return []
        self._next = now + self.interval
        try:
            new = self.store.since(self.last_id)
        except Exception as e:  # a locked or vanished file must not stop the edge
            log.warning("profile watcher: cannot read %s: %s", self.path, e)
            return []
        if not new:
            return []
        self.last_id = max(p.id for p in new)
        done = []
        for name in sorted({p.name for p in new}):
            newest = max((p for p in new if p.name == name), key=lambda p: version_key(p.version))
            activation = self._activate(newest.name, newest.version, newest.imported_us)
            if activation is not None:
                done.append(activation)
        return done

    def _activate(self, name: str, version: str, imported_us: int) -> Activation | None:
        devices = [
            d.name for d in self.edge.site.devices
            if self.edge.profiles[d.name].name == name and split_ref(d.profile)[1] is None
            and version_key(version) > version_key(self.edge.profiles[d.name].version)
        ]
        if not devices:
            return None
        stored = self.store.get(name, version)
        error = None
        try:
            if stored is None:
                raise EmsbmsError(f"profile {name} {version} vanished from {self.path}")
            self.edge.activate_profile(stored.load(), devices)
            log.warning("activated profile %s %s on %s", name, version, ", ".join(devices))
        except EmsbmsError as e:
            error = str(e)
            log.error("profile %s %s not activated (devices keep their profile): %s", name, version, e)
        activation = Activation(name, version, tuple(devices), imported_us, time.time_ns() // 1000, error)
        self.activations.append(activation)
        if self.on_activate is not None:
            self.on_activate(activation)
        return activation

    # -- on a thread of its own ----------------------------------------------------------------

    def start(self) -> ProfileWatcher:
        """Poll every `interval` seconds on a daemon thread until `stop()`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="emsbms-profile-watcher", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.poll(force=True)
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)
            self._thread = None

    def close(self) -> None:
        self.stop()
        self.store.db.conn.close()

    def __enter__(self) -> ProfileWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
