"""The worker process of a bus group, and the messages it exchanges with the main process.

One `multiprocessing` Pipe per worker, one msgpack document per message:

- worker → main: ``["info", [[address, unit, kind, description, min, max], ...]]`` once at start,
  ``["ready", pid]``, ``["up", [sample | stale address, ...]]`` once per registry update of the
  worker (one per dispatcher batch or tick, sent by the dispatcher thread itself), in order (a
  sample ``[address, value, timestamp_us, quality]`` keeps the frame's own µs timestamp; a bare
  address marks it stale), ``["result", id, address, value, status, detail, frames]`` for a
  command, ``["error", text]``.
- main → worker: ``["write", id, device, name, value, timeout]``, ``["stop"]``.

Enum values (Quality, CommState, BusState, …) travel as msgpack ext type 1 ``"<Enum>:<value>"``
and come back as the same enum members.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
from collections.abc import Iterable
from enum import Enum
from multiprocessing.connection import Connection
from typing import Any

import msgpack

from emsbms.can.bus import BusState
from emsbms.edge.registry import Registry
from emsbms.types import AlarmLevel, ChannelInfo, ChannelKind, CommandStatus, CommState, Quality, Sample

log = logging.getLogger(__name__)

ENUMS: dict[str, type[Enum]] = {e.__name__: e for e in (Quality, CommState, BusState, AlarmLevel, ChannelKind,
                                                         CommandStatus)}


def _default(obj: object) -> Any:
    if isinstance(obj, Enum):
        name = type(obj).__name__
        if name in ENUMS:
            return msgpack.ExtType(1, f"{name}:{obj.value}".encode())
        return obj.value
    if isinstance(obj, tuple):
        return list(obj)
    if isinstance(obj, str):
        return str(obj)
    raise TypeError(f"cannot send {type(obj).__name__} to the main process")


def _ext(code: int, data: bytes) -> Any:
    if code != 1:
        return msgpack.ExtType(code, data)
    name, _, value = data.decode().partition(":")
    kind = ENUMS[name]
    return kind(int(value)) if issubclass(kind, int) else kind(value)


def encode(message: list[Any]) -> bytes:
    return msgpack.packb(message, default=_default, strict_types=True)  # type: ignore[no-any-return]


def decode(data: bytes) -> list[Any]:
    doc = msgpack.unpackb(data, ext_hook=_ext, strict_map_key=False)
    assert isinstance(doc, list)
    return doc


def info_rows(infos: Iterable[ChannelInfo]) -> list[list[Any]]:
    return [[i.address, i.unit, i.kind, i.description, i.minimum, i.maximum] for i in infos]


def info_from_rows(rows: Iterable[list[Any]]) -> list[ChannelInfo]:
    return [ChannelInfo(a, u, k, d, lo, hi) for a, u, k, d, lo, hi in rows]


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
    """A worker's registry: declares locally, sends every update to the main process at once.

    Readings are not kept here (the main registry keeps them): `apply` sends one message per call,
    i.e. per dispatcher batch, on the calling thread, so a main process that falls behind slows
    the dispatcher and the bus queue counts the drops, as in one process.
    """

    def __init__(self, link: _Link) -> None:
        super().__init__()
        self.link = link

    def apply(self, samples: Iterable[Sample], stale: Iterable[str] = ()) -> None:
        items: list[Any] = list(samples)
        if stale:
            items.extend(stale)
        if items:
            with contextlib.suppress(OSError):  # the main process is gone: the worker is stopping
                self.link.send(["up", items])


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
