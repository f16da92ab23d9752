"""The command dispatcher: every write to a device goes through it, one worker thread per device.

Arbitration is pure (`emsbms.core.arbiter`); this module carries the writes out through the
edge (`Edge.write`: every value still validated against the profile) so a slow device never
blocks the cycle or another device.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from emsbms.core.arbiter import DEFAULT_EXPIRES_S, Arbiter, Override, Plan, Write, bound
from emsbms.core.controller import Clamp, Source
from emsbms.edge.commands import as_number
from emsbms.edge.edge import Edge
from emsbms.errors import EmsbmsError
from emsbms.types import ChannelInfo, ChannelKind, CommandResult, CommandStatus, Sample

__all__ = ["DEFAULT_EXPIRES_S", "Arbiter", "CommandDispatcher", "Override", "Plan", "Write"]

log = logging.getLogger(__name__)

ACCEPTED = (CommandStatus.ACKED, CommandStatus.SENT)


class Writer(Protocol):
    """Where writes go: `Edge.write`."""

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult: ...


def wall_us() -> int:
    return time.time_ns() // 1000


@dataclass(eq=False)
class _Job:
    write: Write
    at_us: int
    done: threading.Event | None = None
    result: CommandResult | None = None
    timeout: float | None = None


@dataclass(eq=False)
class _Worker:
    """One device's queue (cycle writes coalesced by address; manual writes first) and thread."""

    cond: threading.Condition = field(default_factory=threading.Condition)
    manual: deque[_Job] = field(default_factory=deque)
    pending: OrderedDict[str, _Job] = field(default_factory=OrderedDict)
    thread: threading.Thread | None = None


class CommandDispatcher:
    """Arbitrates and carries out every write: controller setpoints and manual writes.

    `ttl_s(address)` gives the profile's cyclic TTL of a command (None: not cyclic); each
    result goes to `on_event` and is counted in `core/Writes/<source>` (every write carried
    out) and `core/Rejected/<source>` (of which refused), published through `publish`.
    """

    def __init__(self, writer: Writer, *, ttl_s: Callable[[str], float | None] = lambda a: None,
                 on_event: Callable[[str], None] | None = None, publish: Callable[[list[Sample]], None] | None = None,
                 clock: Callable[[], int] = wall_us, timeout_s: float = 2.0, arbiter: Arbiter | None = None) -> None:
        self.writer, self.timeout_s = writer, timeout_s
        self._ttl_s, self._on_event, self._publish, self._clock = ttl_s, on_event, publish, clock
        self.arbiter = arbiter or Arbiter()
        self._lock = threading.Lock()  # guards the arbiter, the workers and the counts
        self._workers: dict[str, _Worker] = {}
        self._stopping = False
        self.writes = dict.fromkeys(Source, 0)
        self.rejected = dict.fromkeys(Source, 0)

    @classmethod
    def for_edge(cls, edge: Edge, **kwargs: Any) -> CommandDispatcher:
        """A dispatcher writing through `edge.write`, TTLs from its profiles, counts to its registry."""
        profiles = edge.profiles

        def ttl_s(address: str) -> float | None:
            device, _, name = address.partition("/")
            profile = profiles.get(device)
            command = None if profile is None else profile.model.commands.get(name)
            return None if command is None else command.ttl_s

        return cls(edge, ttl_s=ttl_s, publish=edge.registry.apply, **kwargs)

    def channels(self) -> list[ChannelInfo]:
        return [ChannelInfo(f"core/{kind}/{s.value}", "", ChannelKind.STATE, f"{what} from {s.value}")
                for s in Source for kind, what in (("Writes", "writes carried out"), ("Rejected", "writes refused"))]

    # -- the cycle's setpoints --------------------------------------------------------------

    def submit(self, setpoints: Mapping[Source, Mapping[str, float]], clamps: Mapping[str, Clamp],
               now_us: int) -> Plan:
        """Arbitrate one cycle's setpoints and queue the writes that are due; returns the plan."""
        with self._lock:
            addresses = {a for values in setpoints.values() for a in values}
            ttl = {a: self._ttl_us(a) for a in addresses | {o.address for o in self.arbiter.overrides(now_us)}}
            plan = self.arbiter.plan(setpoints, clamps, now_us, ttl)
            for w in [] if self._stopping else plan.writes:
                self.arbiter.record(w.address, w.value, now_us, True)  # in flight: not sent again meanwhile
                self._enqueue(_Job(w, now_us))
        for text in plan.events:
            self._event(text)
        return plan

    def _ttl_us(self, address: str) -> int | None:
        ttl = self._ttl_s(address)
        return None if ttl is None else int(ttl * 1_000_000)

    # -- manual writes ----------------------------------------------------------------------

    def manual_write(self, address: str, value: float, expires_s: float = DEFAULT_EXPIRES_S,
                     timeout: float | None = None, source_text: str = "manual") -> CommandResult:
        """Write `value` now as a MANUAL override lasting `expires_s` (the local and cloud `write`).

        The edge validates it; the override is recorded only if the edge accepted it (acked or
        sent). Refused without writing: a bad value or expiry, a SAFETY controller holding the
        address, a value outside a rejecting clamp (a clamping one brings it to the bound).
        """
        number, bad = as_number(address, value)
        expiry, bad_expiry = as_number(f"{address}: expires_s", expires_s)
        if bad is None and bad_expiry is None and expiry <= 0:
            bad_expiry = f"{address}: expires_s: expected a positive number of seconds, found {expires_s!r}"
        refusal = bad or bad_expiry
        now = self._clock()
        with self._lock:
            if refusal is None and self._stopping:
                refusal = f"{address}: the dispatcher is stopped"
            if refusal is None and address in self.arbiter.safety:
                refusal = (f"{address} is held by a safety controller at {self.arbiter.safety[address]:g};"
                           " a manual value cannot override it")
            if refusal is None:
                number, refusal = bound(self.arbiter.clamps.get(address), number)
            job = _Job(Write(address, number, Source.MANUAL), now, threading.Event(), timeout=timeout)
            if refusal is None:
                self._enqueue(job)
        if refusal is not None:
            result = CommandResult(address, number, CommandStatus.REJECTED, refusal + "; nothing sent")
            self._count(Source.MANUAL, result)
            return result
        assert job.done is not None
        job.done.wait()
        assert job.result is not None
        if job.result.status in ACCEPTED:
            with self._lock:
                o = self.arbiter.set_override(address, number, now, expiry, source_text)
            self._event(f"override of {address} = {number:g} for {expiry:g} s, until"
                        f" {_utc(o.expires_us)} ({source_text})")
        return job.result

    def overrides(self) -> list[Override]:
        """The active manual overrides."""
        with self._lock:
            return self.arbiter.overrides(self._clock())

    def cancel(self, address: str) -> Override | None:
        """Cancel the override of `address`: control returns to AUTO at the next cycle."""
        with self._lock:
            o = self.arbiter.cancel(address)
        if o is not None:
            self._event(f"override of {address} = {o.value:g} cancelled; control returns to auto")
        return o

    # -- the workers ------------------------------------------------------------------------

    def pending(self, device: str) -> int:
        """How many writes wait in `device`'s queue (not counting the one being written)."""
        with self._lock:
            worker = self._workers.get(device)
        if worker is None:
            return 0
        with worker.cond:
            return len(worker.manual) + len(worker.pending)

    def _enqueue(self, job: _Job) -> None:
        """Queue `job` on its device's worker (call under self._lock)."""
        device = job.write.address.split("/", 1)[0]
        worker = self._workers.get(device)
        if worker is None:
            worker = self._workers[device] = _Worker()
            worker.thread = threading.Thread(target=self._work, args=(worker,),
                                             name=f"emsbms-core-write-{device}", daemon=True)
            worker.thread.start()
        with worker.cond:
            if job.done is not None:
                worker.manual.append(job)
            else:
                worker.pending.pop(job.write.address, None)
                worker.pending[job.write.address] = job  # the newest value of an address replaces a queued one
            worker.cond.notify()

    def _work(self, worker: _Worker) -> None:
        while True:
            with worker.cond:
                while not (worker.manual or worker.pending or self._stopping):
                    worker.cond.wait()
                if worker.manual:
                    job = worker.manual.popleft()
                elif worker.pending:
                    job = worker.pending.popitem(last=False)[1]
                else:
                    return
            if job.done is None and self._superseded(job):
                continue
            job.result = self._carry_out(job)
            if job.done is not None:
                job.done.set()

    def _superseded(self, job: _Job) -> bool:
        """An AUTO job whose address got an override since it was queued is not written."""
        with self._lock:
            overridden = self.arbiter.override(job.write.address, self._clock()) is not None
            return job.write.source is Source.AUTO and overridden

    def _carry_out(self, job: _Job) -> CommandResult:
        w = job.write
        timeout = self.timeout_s if job.timeout is None else job.timeout
        try:
            result = self.writer.write(w.address, w.value, timeout)
        except EmsbmsError as e:
            result = CommandResult(w.address, w.value, CommandStatus.REJECTED, str(e))
        except Exception as e:
            log.exception("writing %s = %s failed", w.address, w.value)
            result = CommandResult(w.address, w.value, CommandStatus.REJECTED, f"{type(e).__name__}: {e}")
        accepted = result.status in ACCEPTED
        if accepted or w.source is not Source.MANUAL:  # a refused manual value leaves the device as it was
            with self._lock:
                self.arbiter.record(w.address, w.value, job.at_us, accepted)
        self._count(w.source, result)
        return result

    def _count(self, source: Source, result: CommandResult) -> None:
        with self._lock:
            self.writes[source] += 1
            rejected = result.status is CommandStatus.REJECTED
            if rejected:
                self.rejected[source] += 1
            samples = [Sample(f"core/Writes/{source.value}", self.writes[source], self._clock()),
                       Sample(f"core/Rejected/{source.value}", self.rejected[source], self._clock())]
        if self._publish is not None:
            self._publish(samples)
        detail = f" ({result.detail})" if result.detail else ""
        self._event(f"{source.value} write {result.address} = {result.value:g}: {result.status.value}{detail}")

    def _event(self, text: str) -> None:
        if self._on_event is None:
            return
        try:
            self._on_event(text)
        except Exception:
            log.exception("core event callback raised for %r", text)

    def stop(self) -> None:
        """Finish the queued writes and stop every worker."""
        with self._lock:
            self._stopping = True
            workers = list(self._workers.values())
        for w in workers:
            with w.cond:
                w.cond.notify_all()
        for w in workers:
            if w.thread is not None:
                w.thread.join(10.0)

    def __enter__(self) -> CommandDispatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def counts(dispatcher: CommandDispatcher) -> dict[str, int]:
    """The dispatcher's counters as channel name -> count (for a status page or a test)."""
    return {**{f"core/Writes/{s.value}": n for s, n in dispatcher.writes.items()},
            **{f"core/Rejected/{s.value}": n for s, n in dispatcher.rejected.items()}}


def _utc(timestamp_us: int) -> str:
    """A µs timestamp as a UTC time of day a reader can compare with a clock: 16:31:48Z."""
    return time.strftime("%H:%M:%SZ", time.gmtime(timestamp_us / 1e6))
