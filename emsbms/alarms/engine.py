"""The alarm engine: rule instances per (rule, device) and their states. Pure: time is an argument.

Call `evaluate` with the registry's readings and the devices' comm states on every update and
periodically (timers advance only when it is called); it returns one `Transition` per state change.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import replace

from emsbms.alarms.addresses import AlarmError as AlarmError
from emsbms.alarms.addresses import ack_target as ack_target
from emsbms.alarms.addresses import state_address as state_address
from emsbms.alarms.expr import NO_DATA, NoData, pattern_regex
from emsbms.alarms.rules import Rule
from emsbms.alarms.status import AlarmState as AlarmState
from emsbms.alarms.status import AlarmStatus as AlarmStatus
from emsbms.alarms.status import Transition as Transition
from emsbms.types import CommState, Quality, Reading

SITE = "site"
_HOLDING = frozenset({AlarmState.NO_DATA, AlarmState.INHIBITED})  # states that hold the one before
_TIMED = frozenset({AlarmState.PENDING, AlarmState.CLEARING})  # states whose delay runs


def _number(reading: Reading | None) -> float | NoData:
    if reading is None or reading.quality is not Quality.OK or isinstance(reading.value, str | None):
        return NO_DATA
    value = float(reading.value)
    return value if math.isfinite(value) else NO_DATA


class _Context:
    """What expressions read during one `evaluate`."""

    def __init__(self, engine: AlarmEngine, values: Mapping[str, Reading], comm: Mapping[str, CommState]) -> None:
        self.engine, self.values, self.comm = engine, values, comm

    def reading(self, address: str) -> float | NoData:
        return _number(self.values.get(address))

    def aggregate(self, name: str, pattern: str) -> float | NoData:
        found = [v for a in self.engine.matches(pattern, self.values)
                 if self.comm.get(a.split("/", 1)[0]) is not CommState.LOST
                 and not isinstance(v := _number(self.values.get(a)), NoData)]
        if name == "count":
            return float(len(found))
        if not found:
            return NO_DATA
        if name == "max":
            return max(found)
        if name == "min":
            return min(found)
        total = math.fsum(found)
        return total / len(found) if name == "avg" else total

    def rate(self, address: str) -> float | NoData:
        history = self.engine.history.get(address)
        if isinstance(self.reading(address), NoData) or history is None:
            return NO_DATA
        previous, (v1, t1) = history
        if previous is None:
            return NO_DATA
        v0, t0 = previous
        return (v1 - v0) / ((t1 - t0) / 1e6)


class AlarmEngine:
    """Instances of `rules`; `restore` what a store kept before the first `evaluate`."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = {r.name: r for r in rules}
        self._instances: dict[tuple[str, str], AlarmStatus] = {}
        self._known: dict[str, set[str]] = {name: set() for name in self.rules}  # devices with an instance
        self._timed: set[tuple[str, str]] = set()  # (rule, device) pending or clearing
        self._keys: frozenset[str] = frozenset()
        self._matches: dict[str, list[str]] = {}
        # rate(): per address the previous and the last (value, timestamp_us) of distinct samples
        self.history: dict[str, tuple[tuple[float, int] | None, tuple[float, int]]] = {}
        self._rated = sorted({a.pattern for r in self.rules.values()
                              for e in (r.expression, r.clear_expression) if e is not None
                              for a in e.rated})

    def matches(self, pattern: str, values: Mapping[str, Reading]) -> list[str]:
        """The addresses of `values` a pattern matches (cached while the set of addresses is the same)."""
        keys = values.keys()
        if keys is not self._keys and (len(values) != len(self._keys) or keys != self._keys):
            self._keys, self._matches = (keys if isinstance(keys, frozenset) else frozenset(values)), {}
        found = self._matches.get(pattern)
        if found is None:
            regex = pattern_regex(pattern)
            found = self._matches[pattern] = sorted(a for a in values if regex.match(a))
        return found

    def evaluate(self, values: Mapping[str, Reading], comm: Mapping[str, CommState], now_us: int,
                 only: Mapping[str, Collection[str] | None] | None = None) -> list[Transition]:
        """Step every instance once at `now_us` (or only those of `only`: rule -> its devices, None for
        all of them); one transition per instance whose state changed."""
        for pattern in self._rated:
            for address in self.matches(pattern, values):
                self._remember(address, values[address])
        ctx = _Context(self, values, comm)
        out: list[Transition] = []
        targets = ((r, None) for r in self.rules.values()) if only is None else (
            (self.rules[name], devices) for name, devices in only.items() if name in self.rules)
        for rule, wanted in targets:
            devices = self._devices(rule, values) if wanted is None or not rule.expression.per_device else wanted
            for device in devices:
                key = (rule.name, device)
                old = self._instances.get(key)
                if old is None:
                    old = self._instances[key] = AlarmStatus(rule.name, device, AlarmState.OK, rule.severity)
                    self._known[rule.name].add(device)
                new = self._step(rule, old, ctx, now_us)
                if new is old:  # the common case: nothing changed, nothing allocated
                    continue
                if new.state is not old.state:  # the value is taken when the state changes
                    value = None if new.state is AlarmState.INHIBITED else rule.expression.value(ctx, device)
                    new = replace(new, value=value)
                    out.append(self._transition(rule, new, old.state, now_us))
                    self._time(key, new.state)
                self._instances[key] = new
        return out

    @property
    def timed(self) -> dict[str, set[str]]:
        """The instances whose on- or off-delay runs (pending, clearing): rule -> devices."""
        out: dict[str, set[str]] = {}
        for rule, device in self._timed:
            out.setdefault(rule, set()).add(device)
        return out

    def __len__(self) -> int:
        """The number of instances."""
        return len(self._instances)

    def _time(self, key: tuple[str, str], state: AlarmState) -> None:
        if state in _TIMED:
            self._timed.add(key)
        else:
            self._timed.discard(key)

    def ack(self, rule: str, device: str, now_us: int) -> Transition:
        """Acknowledge: an active (or clearing) alarm stays active, acked; a latched one returns to ok."""
        status = self._instances.get((rule, device))
        if status is None:
            known = [f"{r}/{d}" for r, d in self._instances]
            raise AlarmError(f"no alarm '{rule}/{device}' (known: {', '.join(known[:20]) or 'none'}"
                             f"{', …' if len(known) > 20 else ''})")
        raised = status.state in {AlarmState.ACTIVE, AlarmState.CLEARING, AlarmState.LATCHED} or (
            status.state in _HOLDING and status.held is AlarmState.ACTIVE)
        if not raised:
            raise AlarmError(f"alarm '{status.id}' is {status.state.value}: nothing to acknowledge")
        new = replace(status, acked=True)
        if status.state is AlarmState.LATCHED:
            new = replace(new, state=AlarmState.OK, since_us=now_us)
        self._instances[(rule, device)] = new
        return self._transition(self.rules[rule], new, status.state, now_us, "acknowledged")

    def describe(self, s: AlarmStatus) -> Transition:
        """An instance as it stands, in the shape of a transition (previous = its state)."""
        return self._transition(self.rules[s.rule], s, s.state, s.since_us)

    def states(self) -> list[AlarmStatus]:
        """Every instance, by rule then device."""
        return self.snapshot()

    def snapshot(self, ids: Iterable[str] | None = None) -> list[AlarmStatus]:
        """The instances to persist (all, or those named "<rule>/<device>")."""
        if ids is None:
            return [s for _, s in sorted(self._instances.items())]
        found = (self._instances.get(tuple(i.split("/", 1))) for i in sorted(set(ids)))  # type: ignore[arg-type]
        return [s for s in found if s is not None]

    def restore(self, statuses: Iterable[AlarmStatus]) -> list[str]:
        """Take back stored instances (severity from the current rule); returns the ids dropped
        because their rule is gone or now has no per-device instances."""
        dropped = []
        for s in statuses:
            rule = self.rules.get(s.rule)
            if rule is None or (s.device == SITE) == bool(rule.expression.per_device):
                dropped.append(s.id)
                continue
            self._instances[(s.rule, s.device)] = replace(s, severity=rule.severity)
            self._known[s.rule].add(s.device)
            self._time((s.rule, s.device), s.state)
        return dropped

    def _remember(self, address: str, reading: Reading) -> None:
        value = _number(reading)
        if isinstance(value, NoData):
            return
        last = self.history.get(address)
        if last is None:
            self.history[address] = (None, (value, reading.timestamp_us))
        elif reading.timestamp_us > last[1][1]:
            self.history[address] = (last[1], (value, reading.timestamp_us))

    def _devices(self, rule: Rule, values: Mapping[str, Reading]) -> list[str]:
        if not rule.expression.per_device:
            return [SITE]
        devices = {a.split("/", 1)[0] for p in rule.expression.per_device for a in self.matches(p, values)}
        devices.update(self._known[rule.name])
        return sorted(devices)

    def _step(self, rule: Rule, s: AlarmStatus, ctx: _Context, now: int) -> AlarmStatus:
        if rule.expression.per_device and ctx.comm.get(s.device) is CommState.LOST:
            return _hold(s, AlarmState.INHIBITED, now)
        cond = rule.expression.evaluate(ctx, s.device)
        clear = (rule.clear_expression.evaluate(ctx, s.device) if rule.clear_expression is not None
                 else cond if isinstance(cond, NoData) else not cond)
        if isinstance(cond, NoData) or isinstance(clear, NoData):
            return _hold(s, AlarmState.NO_DATA, now)
        if s.state in _HOLDING:
            s = replace(s, state=s.held, since_us=now)
        state = s.state
        if state is AlarmState.OK and cond:
            return _raise(s, now) if rule.for_s <= 0 else replace(s, state=AlarmState.PENDING, since_us=now)
        if state is AlarmState.PENDING:
            if not cond:
                return replace(s, state=AlarmState.OK, since_us=now)
            return _raise(s, now) if now - s.since_us >= round(rule.for_s * 1e6) else s
        if state is AlarmState.ACTIVE and clear:
            return _cleared(rule, s, now) if rule.off_delay_s <= 0 else replace(
                s, state=AlarmState.CLEARING, since_us=now)
        if state is AlarmState.CLEARING:
            if not clear:
                return replace(s, state=AlarmState.ACTIVE, since_us=now)
            return _cleared(rule, s, now) if now - s.since_us >= round(rule.off_delay_s * 1e6) else s
        if state is AlarmState.LATCHED and cond:
            return replace(s, state=AlarmState.ACTIVE, since_us=now)
        return s

    def _transition(self, rule: Rule, s: AlarmStatus, previous: AlarmState, now: int, note: str = "") -> Transition:
        if s.state is AlarmState.INHIBITED:
            what = f"{s.device} comm LOST"
        else:
            what = rule.expression.text(s.device, s.value)
            if rule.for_s > 0:
                what += f" for {rule.for_s:.1f} s"
        text = f"{rule.name}: {what}: {note + ', ' if note else ''}{s.state.value}"
        return Transition(s.id, s.rule, s.device, s.state, previous, rule.severity, s.acked, s.value, now, text)


def _hold(s: AlarmStatus, state: AlarmState, now: int) -> AlarmStatus:
    """no_data or inhibited, remembering whether the alarm was raised; a latched alarm stays latched."""
    if s.state is AlarmState.LATCHED or s.state is state:
        return s
    held = s.held if s.state in _HOLDING else (
        AlarmState.ACTIVE if s.state in {AlarmState.ACTIVE, AlarmState.CLEARING} else AlarmState.OK)
    return replace(s, state=state, held=held, since_us=now)


def _raise(s: AlarmStatus, now: int) -> AlarmStatus:
    return replace(s, state=AlarmState.ACTIVE, acked=False, since_us=now)


def _cleared(rule: Rule, s: AlarmStatus, now: int) -> AlarmStatus:
    state = AlarmState.LATCHED if rule.latch and not s.acked else AlarmState.OK
    return replace(s, state=state, since_us=now)
