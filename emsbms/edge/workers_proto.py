"""The worker process of a bus group, and the messages it exchanges with the main process.

One `multiprocessing` Pipe per worker, one msgpack document per message:

- worker → main: ``["info", [[address, unit, kind, description, min, max], ...]]`` once at start,
  ``["ready", pid]``, ``["up", [[samples, stale, marks], ...]]`` with the registry updates of the
  last millisecond in order (`ForwardingRegistry`; a sample ``[address, value, timestamp_us,
  quality]`` keeps the frame's own µs timestamp; `stale` are addresses marked stale after those
  samples; `marks` ``[[index, enum name], ...]``), ``["result", id, address,
  value, status, detail, frames]`` for a command, ``["error", text]``.
- main → worker: ``["write", id, device, name, value, timeout]``, ``["stop"]``.

Enum values (Quality, CommState, BusState, …) travel as their str or int (what msgpack makes of a
StrEnum or IntEnum, in C); an ``up`` message lists which values were which enum, and the main
process restores them, so its registry holds the same members as a one-process edge.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterable
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from emsbms.can.bus import BusState
from emsbms.edge.registry import Registry
from emsbms.types import AlarmLevel, ChannelInfo, ChannelKind, CommandStatus, CommState, Quality, Sample

log = logging.getLogger(__name__)

COALESCE_S = 0.001
"""How long a worker gathers registry updates before it sends them (latency added: at most this)."""

MAX_PENDING = 200_000
"""Samples a worker queues for the main process before its dispatchers wait."""

ENUMS: dict[str, type[Enum]] = {e.__name__: e for e in (Quality, CommState, BusState, AlarmLevel, ChannelKind,
                                                         CommandStatus)}
"""The enums a value may be; msgpack packs them as their str or int, `marks` says which they were."""

_PLAIN = frozenset({float, int, str, bool, type(None)})
_QUALITY = {q.value: q for q in Quality}


def _default(obj: object) -> Any:
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"cannot send {type(obj).__name__} to the main process")


def encode(message: list[Any]) -> bytes:
    return msgpack.packb(message, default=_default)  # type: ignore[no-any-return]


def decode(data: bytes) -> list[Any]:
    doc = msgpack.unpackb(data, use_list=False, strict_map_key=False)
    assert isinstance(doc, tuple)
    return list(doc)


def chunk(samples: list[Sample], stale: list[str]) -> list[Any]:
    """One chunk of an ``up`` message; enum values are marked by index and enum name."""
    marks = [(i, type(s[1]).__name__) for i, s in enumerate(samples) if type(s[1]) not in _PLAIN]
    return [samples, stale, marks]


def samples_of(part: list[Any]) -> list[Sample]:
    """The samples of one chunk as the worker had them (qualities and enum values restored)."""
    quality = _QUALITY
    samples: list[Any] = [(a, v, t, quality[q]) for a, v, t, q in part[0]]
    for i, name in part[2]:
        kind = ENUMS.get(name)
        if kind is not None:
            a, v, t, q = samples[i]
            samples[i] = (a, kind(v), t, q)
    return samples


def info_rows(infos: Iterable[ChannelInfo]) -> list[list[Any]]:
    return [[i.address, i.unit, i.kind, i.description, i.minimum, i.maximum] for i in infos]


def info_from_rows(rows: Iterable[list[Any]]) -> list[ChannelInfo]:
    return [ChannelInfo(a, u, ChannelKind(k), d, lo, hi) for a, u, k, d, lo, hi in rows]


class _Link:
    """The worker's end of the pipe; sends from several threads, one at a time."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.lock = threading.Lock()

    def send(self, message: list[Any]) -> None:
        data = encode(message)
        with self.lock:
            self.conn.send_bytes(data)


class ForwardingRegistry(Registry):
    """A worker's registry: declares locally, forwards every update to the main process in order.

    Readings are not kept here (the main registry keeps them). `apply` queues the update; a sender
    thread sends what gathered, `COALESCE_S` after the first update it finds, as one message: one
    message per frame costs ~100 µs of CPU in the two processes together, one per millisecond
    carries a dispatcher's whole output. Updates without stale marks merge into one chunk; a
    stale mark ends a chunk, so the main registry sees them in the order they were made. With
    `MAX_PENDING` samples queued (a main process that falls behind), `apply` waits: the
    dispatcher slows and the bus queue counts the drops, as in one process.
    """

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self.link = link
        self._pending: list[list[Any]] = []  # [samples, stale] chunks
        self._count = 0
        self._gather = threading.Lock()
        self._wake = threading.Event()
        self._closing = False
        self._thread = threading.Thread(target=self._send_loop, name="emsbms-worker-up", daemon=True)
        self._thread.start()

    def apply(self, samples: Iterable[Sample], stale: Iterable[str] = ()) -> None:
        items = list(samples)
        gone = stale if type(stale) is list else list(stale)
        if not items and not gone:
            return
        while self._count > MAX_PENDING and not self._closing:
            time.sleep(0.001)
        with self._gather:
            pending = self._pending
            if pending and not pending[-1][1]:
                pending[-1][0].extend(items)
                pending[-1][1] = gone
            else:
                pending.append([items, gone])
            self._count += len(items)
        if not self._wake.is_set():
            self._wake.set()

    def _send_loop(self) -> None:
        while True:
            self._wake.wait()
            if not self._closing:
                time.sleep(COALESCE_S)
            self._wake.clear()
            with self._gather:
                pending, self._pending, self._count = self._pending, [], 0
            if pending:
                with contextlib.suppress(OSError):  # the main process is gone: the worker is stopping
                    self.link.send(["up", [chunk(s, g) for s, g in pending]])
            if self._closing and not self._pending:
                return

    def close(self) -> None:
        """Send what is queued, then stop the sender thread."""
        self._closing = True
        self._wake.set()
        self._thread.join(5.0)


def child_main(conn: Connection, edge_class: Any, site: Any, bus_factory: Any, queue_size: int) -> None:
    """The worker process: a plain Edge on the group's sub-site, its updates and results sent up."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the main process stops its workers itself
    logging.basicConfig(level=logging.WARNING, format=f"worker {os.getpid()}: %(levelname)s %(name)s: %(message)s")
    link = _Link(conn)
    registry = ForwardingRegistry(link)
    try:
        edge = edge_class(site, bus_factory=bus_factory, queue_size=queue_size, registry=registry)
        link.send(["info", info_rows(registry.info(a) for a in registry.addresses())])
        edge.start()
    except Exception as e:
        link.send(["error", f"{type(e).__name__}: {e}"])
        registry.close()
        return
    link.send(["ready", os.getpid()])

    def command(cid: int, device: str, name: str, value: float, timeout: float) -> None:
        result = edge.commands[device].write(name, value, timeout)
        link.send(["result", cid, result.address, result.value, result.status, result.detail, list(result.frames)])

    try:
        while True:
            try:
                message = decode(conn.recv_bytes())
            except (EOFError, OSError):  # the main process is gone
                break
            if message[0] == "stop":
                break
            if message[0] == "write":
                threading.Thread(target=command, args=tuple(message[1:]), daemon=True).start()
    finally:
        edge.stop()
        registry.close()
