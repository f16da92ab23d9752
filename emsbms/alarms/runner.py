"""The alarm engine on a running edge: a thread that steps the rules on registry updates and timers.

`AlarmRunner(edge, rules, db_path, on_transition, on_event)` subscribes to the registry (the callback
only appends the address to a deque) and restores the instances kept in the edge database. Its
thread wakes on updates (or every `every` seconds), looks up which instances the changed channels
can move (`RuleIndex`), adds those whose on- or off-delay runs, and steps only them against a
registry snapshot and the devices' CommState. For each transition it updates the instance's
channel ``alarms/<rule>/<device>/State`` (kind STATE), saves the instance, and hands an `Event`
(kind alarm) to `on_event` and the `Transition` to `on_transition` (the uplink). `ack` is safe
from any thread (the uplink's command handler calls it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

from emsbms.alarms.engine import SITE, AlarmEngine, AlarmState, AlarmStatus, Transition, state_address
from emsbms.alarms.index import RuleIndex, Targets
from emsbms.alarms.rules import Rule, Severity
from emsbms.alarms.store import AlarmStore
from emsbms.edge.events import Event, EventKind
from emsbms.edge.events import Severity as EventSeverity
from emsbms.edge.registry import Registry
from emsbms.site import Site
from emsbms.types import ChannelInfo, ChannelKind, CommState, Quality, Reading, Sample

log = logging.getLogger(__name__)

EVENT_SEVERITY = {Severity.INFO: EventSeverity.INFO, Severity.WARNING: EventSeverity.WARNING,
                  Severity.FAULT: EventSeverity.ALARM}
"""The event of a transition has the rule's severity (a transition to ok is an OK event: a clear)."""

INBOX = 200_000
"""Changed addresses kept between two cycles at most; beyond, the next cycle steps every instance."""


def event_of(t: Transition) -> Event:
    """The event-log line of a transition."""
    severity = EventSeverity.OK if t.state is AlarmState.OK else EVENT_SEVERITY[t.severity]
    return Event(t.timestamp_us, t.device, EventKind.ALARM, severity, t.text)


class Readings(Mapping[str, Reading]):
    """The registry's current readings of the addresses the rules may read (not ``alarms/...``), without
    copying them: `keys()` is one frozenset, kept until an address gets its first reading, so the
    engine's pattern matches stay cached."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self._keys = frozenset(a for a in registry.snapshot() if not a.startswith("alarms/"))

    def add(self, addresses: set[str]) -> None:
        """Addresses that were updated: the new ones join the keys."""
        if not addresses <= self._keys:
            self._keys = self._keys | addresses

    def keys(self) -> frozenset[str]:  # type: ignore[override]
        return self._keys

    def get(self, address: str, default: Reading | None = None) -> Reading | None:  # type: ignore[override]
        r = self.registry.get(address) if address in self._keys else None
        return default if r is None else r

    def __getitem__(self, address: str) -> Reading:
        r = self.registry.get(address)
        if r is None or address not in self._keys:
            raise KeyError(address)
        return r

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


class EdgeLike(Protocol):
    """What the runner reads of an `Edge`: its registry and its site (the devices)."""

    registry: Registry
    site: Site


def _now_us() -> int:
    return time.time_ns() // 1000


class AlarmRunner:
    """Rules evaluated on a running edge (see the module docstring)."""

    def __init__(self, edge: EdgeLike, rules: Sequence[Rule], db_path: str | Path,
                 on_transition: Callable[[Transition], None] | None = None,
                 on_event: Callable[[Event], None] | None = None, every: float = 0.1,
                 clock: Callable[[], int] = _now_us) -> None:
        self.edge = edge
        self.defaults: list[Rule] = []  # the profiles' default rules: kept when the cloud replaces the rules
        self.on_transition = on_transition or (lambda t: None)
        self.on_event = on_event or (lambda e: None)
        self.every = every
        self.clock = clock
        self.store = AlarmStore(db_path)
        self.cycles = 0  # evaluations done
        self.stepped = 0  # rules stepped over all cycles (a rule counts once per cycle)
        self._lock = threading.RLock()  # the engine: the thread's cycles and `ack`
        self._inbox: deque[str] = deque(maxlen=INBOX)
        self._full = True  # the next cycle steps every instance (the first one, after a rule change)
        self._declared: set[str] = set()
        self._count = -1  # instances when the State channels were last declared
        self.engine, self.index = self._build(rules, self.store.load())
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._sub = edge.registry.subscribe("*", self._post)
        self.readings = Readings(edge.registry)  # after subscribing: no first reading is missed
        self._thread = threading.Thread(target=self._loop, name="emsbms-alarms", daemon=True)

    def _build(self, rules: Sequence[Rule], kept: Sequence[AlarmStatus]) -> tuple[AlarmEngine, RuleIndex]:
        engine = AlarmEngine(rules)
        dropped = engine.restore(kept)
        if dropped:
            log.warning("alarms: %d kept alarms dropped (their rule is gone or changed): %s", len(dropped),
                        ", ".join(dropped[:10]))
            ids = set(dropped)
            self.store.save(replace(s, state=AlarmState.OK) for s in kept if s.id in ids)  # deleted from the table
        return engine, RuleIndex(rules)

    def _post(self, address: str, reading: Reading) -> None:
        """The registry callback: one append, and a wake-up."""
        if address.startswith("alarms/") or not self.index.rules:
            return
        if len(self._inbox) == INBOX:
            self._full = True
        self._inbox.append(address)
        if not self._wake.is_set():
            self._wake.set()

    def start(self) -> AlarmRunner:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.every)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self.cycle(self.clock())
            except Exception:
                log.exception("alarms: a cycle failed")

    def _targets(self) -> Targets | None:
        changed: set[str] = set()
        pop = self._inbox.popleft
        while True:
            try:
                changed.add(pop())
            except IndexError:
                break
        self.readings.add(changed)
        if self._full:
            self._full = False
            return None
        targets = self.index.targets(changed)
        for rule, devices in self.engine.timed.items():
            if rule not in targets:
                targets[rule] = devices
            else:
                have = targets[rule]
                if have is not None:
                    have.update(devices)
        return targets

    def cycle(self, now_us: int) -> list[Transition]:
        """One evaluation at `now_us` of what changed since the last one (the thread calls it)."""
        with self._lock:
            targets = self._targets()
            if targets is not None and not targets:
                return []
            comm: dict[str, CommState] = {}
            for d in self.edge.site.devices:
                r = self.edge.registry.get(f"{d.name}/CommState")
                if r is not None and isinstance(r.value, str) and r.value in CommState.__members__:
                    comm[d.name] = CommState(r.value)
            transitions = self.engine.evaluate(self.readings, comm, now_us, only=targets)
            self.cycles += 1
            self.stepped += len(self.engine.rules) if targets is None else len(targets)
            self._publish(transitions, now_us)
        return transitions

    def ack(self, rule: str, device: str, now_us: int) -> Transition:
        """Acknowledge one instance (AlarmError naming it when unknown or not raised)."""
        with self._lock:
            t = self.engine.ack(rule, device, now_us)
            self._publish([t], now_us)
        return t

    def replace_rules(self, rules: Sequence[Rule]) -> None:
        """Swap the rules (a new desired configuration); instances of kept rules keep their state."""
        with self._lock:
            self.engine, self.index = self._build([*rules, *self.defaults], self.engine.snapshot())
            self._full, self._count = True, -1
        self._wake.set()

    def active(self) -> list[Transition]:
        """Every instance that is not ok, as it stands (for a display)."""
        with self._lock:
            rules = self.engine.rules
            return [self.engine.describe(s) for s in self.engine.states()
                    if s.state is not AlarmState.OK and s.rule in rules]

    def _publish(self, transitions: list[Transition], now_us: int) -> None:
        if len(self.engine) != self._count:
            self._declare(now_us)
        if not transitions:
            return
        self.store.save(self.engine.snapshot(t.id for t in transitions))
        self.edge.registry.apply([Sample(state_address(t.rule, t.device), t.state.value, now_us, Quality.OK)
                                  for t in transitions])
        for t in transitions:
            log.info("alarm %s", t.text)
            try:
                self.on_event(event_of(t))
                self.on_transition(t)
            except Exception:
                log.exception("alarms: a transition callback failed for %s", t.id)

    def _declare(self, now_us: int) -> None:
        """Declare the State channel of every new instance, with its current state."""
        new = [s for s in self.engine.states() if s.id not in self._declared]
        self.edge.registry.declare(
            ChannelInfo(state_address(s.rule, s.device), kind=ChannelKind.STATE,
                        description=f"alarm {s.rule} on {s.device if s.device != SITE else 'the site'}")
            for s in new)
        self._declared.update(s.id for s in new)
        self._count = len(self.engine)
        self.edge.registry.apply([Sample(state_address(s.rule, s.device), s.state.value, now_us, Quality.OK)
                                  for s in new])

    def close(self, timeout: float = 5.0) -> None:
        """Stop listening and the thread; close the store."""
        self._sub.cancel()
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)
        self.store.close()
