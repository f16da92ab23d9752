"""Bus groups in worker processes: the main process's side (spawn, pump, commands, restarts).

Each group of buses (`emsbms.site.groups`) runs in a worker process started with the ``spawn``
context: a plain Edge on the group's sub-site (`workers_proto.child_main`). The main process keeps
the registry; one thread per worker reads its pipe and applies the updates in order. A worker that
dies is seen at once (the pipe's EOF): its devices go LOST (`<device>/CommState` LOST, their other
channels and their buses' channels stale, each bus's State DOWN), a warning says so ("worker g1
(pid N) died: signal 9; restarting in 1 s"), and it is restarted after 1, 2, 4 … s (at most
`BACKOFF_MAX_S`; back to 1 s after a run of `STABLE_S`). The other groups never notice.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing
import threading
import time
from dataclasses import replace
from enum import StrEnum
from multiprocessing.connection import Connection
from typing import Any

from emsbms.can.bus import BusState
from emsbms.edge.registry import Registry
from emsbms.edge.workers_proto import child_main, decode, encode, info_from_rows, samples_of
from emsbms.errors import BusError
from emsbms.site import Site
from emsbms.types import ChannelInfo, ChannelKind, CommandResult, CommandStatus, CommState, Sample

log = logging.getLogger(__name__)

READY_S = 300.0
"""How long start() waits for a worker: a failing one answers at once; this bounds a hung one (TCG needs minutes)."""
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0


class WorkerState(StrEnum):
    """A worker process as the main process sees it (`<group>/State`)."""

    STARTING = "STARTING"
    RUNNING = "RUNNING"
    DOWN = "DOWN"
    STOPPED = "STOPPED"


def sub_site(site: Site, buses: list[str]) -> Site:
    """The part of `site` a group runs: its buses and their devices, one process, no uplink."""
    return replace(site, buses=[b for b in site.buses if b.name in buses],
                   devices=[d for d in site.devices if d.bus in buses], groups={}, workers="off", uplink=None)


def _now_us() -> int:
    return time.time_ns() // 1000


class GroupWorker:
    """One bus group's worker process, supervised: started, pumped, restarted when it dies."""

    def __init__(self, group: str, site: Site, registry: Registry, edge_class: Any, bus_factory: Any,
                 queue_size: int) -> None:
        self.group, self.site, self.registry = group, site, registry
        self._args = (edge_class, site, bus_factory, queue_size)
        self.devices = [d.name for d in site.devices]
        self.buses = [b.name for b in site.buses]
        self.pid: int | None = None
        self.restarts = 0
        self.state = WorkerState.STOPPED
        self._conn: Connection | None = None
        self._send_lock = threading.Lock()
        self._addresses: list[str] = []
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._error = ""
        self._ids = itertools.count(1)
        self._pending: dict[int, tuple[threading.Event, list[CommandResult]]] = {}
        self._thread: threading.Thread | None = None
        self._process: Any = None
        p = group + "/"
        registry.declare([ChannelInfo(p + "State", "", ChannelKind.STATE, "the group's worker process"),
                          ChannelInfo(p + "Pid", "", ChannelKind.STATE, "its process id"),
                          ChannelInfo(p + "Restarts", "", ChannelKind.STATE, "restarts after it died"),
                          ChannelInfo(p + "LastError", "", ChannelKind.STATE, "why it last died")])

    def _health(self, state: WorkerState) -> None:
        self.state = state
        p, t = self.group + "/", _now_us()
        self.registry.apply([Sample(p + "State", state, t), Sample(p + "Pid", self.pid, t),
                             Sample(p + "Restarts", self.restarts, t), Sample(p + "LastError", self._error, t)])

    def launch(self) -> None:
        """Start the worker process and its supervising thread (`wait_ready` waits for it)."""
        self._stopping.clear()
        self._ready.clear()
        self._thread = threading.Thread(target=self._supervise, name=f"emsbms-group-{self.group}", daemon=True)
        self._thread.start()

    def wait_ready(self) -> None:
        """Return once the worker runs its buses (BusError if it cannot build them)."""
        answered = self._ready.wait(READY_S)
        if not answered or self.state is not WorkerState.RUNNING:
            self.stop()
            why = self._error or "no answer"
            raise BusError(f"worker {self.group}: " + (f"cannot start: {why}" if answered
                                                       else f"did not start within {READY_S:g} s: {why}"))

    def _spawn(self) -> tuple[Any, Connection]:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe(duplex=True)
        process = ctx.Process(target=child_main, args=(theirs, *self._args), name=f"emsbms-group-{self.group}",
                              daemon=True)
        process.start()
        theirs.close()  # only the child holds its end now: its death is our EOF
        return process, ours

    def _supervise(self) -> None:
        backoff = 1.0
        while not self._stopping.is_set():
            self._health(WorkerState.STARTING)
            began = time.monotonic()
            try:
                self._process, conn = self._spawn()
            except Exception as e:  # e.g. a program without the `if __name__ == "__main__":` guard spawn needs
                self._error = f"error: cannot start the process: {type(e).__name__}: {e}"
                log.error("worker %s: %s", self.group, self._error)
                self._process = None
                self._health(WorkerState.DOWN)
                self._ready.set()
                if self._stopping.wait(backoff):
                    break
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            self.pid = self._process.pid
            with self._send_lock:
                self._conn = conn
            self._pump(conn)  # until the pipe closes
            with self._send_lock:
                self._conn = None
            conn.close()
            self._process.join(5.0)
            self._fail_pending()
            if self._stopping.is_set():
                break
            code = self._process.exitcode
            why = f"signal {-code}" if code is not None and code < 0 else f"exit code {code}"
            if time.monotonic() - began >= STABLE_S:
                backoff = 1.0
            self._error = f"died: {why}" + (f" ({self._error})" if self._error.startswith("error") else "")
            self._lost()
            log.warning("worker %s (pid %s) died: %s; restarting in %g s", self.group, self.pid, why, backoff)
            self._ready.set()  # a start() still waiting learns it failed
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, BACKOFF_MAX_S)
            self.restarts += 1
        self._health(WorkerState.STOPPED)
        self._ready.set()

    def _pump(self, conn: Connection) -> None:
        apply = self.registry.apply
        while True:
            try:
                message = decode(conn.recv_bytes())
            except (EOFError, OSError):
                return
            kind = message[0]
            if kind == "up":  # the worker's registry updates, applied in their order
                for part in message[1]:
                    apply(samples_of(part), part[1])
            elif kind == "result":
                self._resolve(message[1:])
            elif kind == "info":
                infos = info_from_rows(message[1])
                self._addresses = [i.address for i in infos]
                self.registry.declare(infos)
            elif kind == "ready":
                self.pid = int(message[1])
                self._health(WorkerState.RUNNING)
                self._ready.set()
            elif kind == "error":
                self._error = f"error: {message[1]}"
                log.error("worker %s: cannot run its buses: %s", self.group, message[1])

    def _lost(self) -> None:
        """The group's devices LOST, the rest of its channels stale, its buses DOWN."""
        t = _now_us()
        comm = {d + "/CommState" for d in self.devices}
        samples = [Sample(a, CommState.LOST, t) for a in sorted(comm) if a in self._addresses]
        samples += [Sample(b + "/State", BusState.DOWN, t) for b in self.buses]
        skip = comm | {b + "/State" for b in self.buses}
        self.registry.apply(samples, [a for a in self._addresses if a not in skip])
        self._health(WorkerState.DOWN)

    def write(self, device: str, name: str, value: float, timeout: float) -> CommandResult:
        """Have the worker plan, send and confirm a command; its CommandResult as the worker saw it."""
        address = f"{device}/{name}"
        cid = next(self._ids)
        done: tuple[threading.Event, list[CommandResult]] = (threading.Event(), [])
        self._pending[cid] = done
        try:
            with self._send_lock:
                if self._conn is None or self.state is not WorkerState.RUNNING:
                    return CommandResult(address, value, CommandStatus.REJECTED,
                                         f"worker {self.group} is {self.state.value}: nothing sent")
                self._conn.send_bytes(encode(["write", cid, device, name, value, timeout]))
            if done[0].wait(timeout + 10.0) and done[1]:
                return done[1][0]
            return CommandResult(address, value, CommandStatus.TIMEOUT,
                                 f"worker {self.group} gave no result (it may have died while sending)")
        finally:
            self._pending.pop(cid, None)

    def _resolve(self, row: list[Any]) -> None:
        cid, address, value, status, detail, frames = row
        done = self._pending.get(cid)
        if done is not None:
            done[1].append(CommandResult(address, value, CommandStatus(status), detail, tuple(frames)))
            done[0].set()

    def _fail_pending(self) -> None:
        for event, _ in list(self._pending.values()):
            event.set()

    def stop(self) -> None:
        """Stop the worker (it stops its Edge) and the supervising thread."""
        self._stopping.set()
        with self._send_lock:
            if self._conn is not None:
                with contextlib.suppress(OSError):
                    self._conn.send_bytes(encode(["stop"]))
        process = self._process
        if process is not None:
            process.join(5.0)
            if process.is_alive():
                process.kill()
                process.join(5.0)
        if self._thread is not None:
            self._thread.join(10.0)
        self.registry.apply((), self._addresses)  # nothing updates them any more


class RemoteCommands:
    """What `Edge.commands[device]` is for a device whose bus runs in a worker."""

    def __init__(self, worker: GroupWorker, device: str) -> None:
        self.worker, self.device = worker, device

    def write(self, name: str, value: float, timeout: float = 2.0) -> CommandResult:
        return self.worker.write(self.device, name, value, timeout)


class WorkerPool:
    """Every group's worker of one Edge."""

    def __init__(self, site: Site, plan: dict[str, list[str]], registry: Registry, edge_class: Any,
                 bus_factory: Any, queue_size: int) -> None:
        self.workers = {g: GroupWorker(g, sub_site(site, buses), registry, edge_class, bus_factory, queue_size)
                        for g, buses in plan.items()}
        self.owner = {bus: self.workers[g] for g, buses in plan.items() for bus in buses}

    def commands(self, device: str, bus: str) -> RemoteCommands:
        return RemoteCommands(self.owner[bus], device)

    def start(self) -> None:
        """Start every worker at once; return when all run (else stop them all and raise)."""
        for w in self.workers.values():
            w.launch()
        try:
            for w in self.workers.values():
                w.wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()

    def pids(self) -> dict[str, int | None]:
        return {g: w.pid for g, w in self.workers.items()}


__all__ = ["GroupWorker", "RemoteCommands", "WorkerPool", "WorkerState", "sub_site"]
