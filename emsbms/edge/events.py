"""The event log: registry transitions and command results turned into a bounded list of events.

An `EventLog` watches the channels that tell a story (``CommState``, ``Alarm/*``, the CANopen
``Emcy*`` channels, the J1939 ``Dm1/*`` channels and each bus's ``State``) and the results of
commands (through `Edge.on_command`), and turns *transitions* into `Event` values: a device
lost and recovered, an alarm raised or cleared, an EMCY, a DM1 with its DTCs and lamps, an
identity mismatch, a bus gone bus-off, a command acked or rejected.

It costs the receive path one deque append per watched update: the registry callback only
`post`s ``(address, reading)`` into a bounded inbox. The transition logic runs in `drain()`,
on the caller's thread (the monitor calls it before each redraw). `feed()` and `command()` are
the pure core: readings and results in, events out, no clock, no threads.

    log = EventLog()
    log.attach(edge.registry, buses=["can0"])
    edge.on_command(log.post_command)
    ...
    log.drain()
    for event in log.events(): print(event.text)
"""

from __future__ import annotations

import itertools
import json
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from enum import Enum, IntEnum, StrEnum

from emsbms.edge.registry import Registry, Subscription
from emsbms.types import CommandResult, CommandStatus, Reading, Value

log = logging.getLogger(__name__)

DEVICE_PATTERNS = ("*/CommState", "*/Alarm/*", "*/Emcy*", "*/Dm1/*")
"""Registry patterns the log watches on every device (bus states are added by name)."""

LIT_LAMPS = ("on", "slow flash", "fast flash")
"""DM1 lamp states (`Dm1/<lamp>` values) that count as lit."""

LAMP_NAMES = {"RedStopLamp": "red stop", "AmberWarningLamp": "amber", "ProtectLamp": "protect",
              "MalfunctionLamp": "MIL"}
"""DM1 lamp channels, in order of severity, and how an event names them."""

ALARM_WORDS = {0: "ok", 1: "warning", 2: "ALARM"}

ALARM_TEXTS = {"NameNotClaimed": "J1939 NAME holds no address"}
"""Plain words for alarms whose name alone says little."""

SKIPPED_ALARMS = ("CommLoss", "DiagnosticLamps")
"""Alarms another event already tells: CommLoss (the CommState event), DiagnosticLamps (DM1)."""

TOLD_BY_EVENTS = (": EMCY 0x", "device LOST", "has claimed no address")
"""Log warnings that repeat an event the log makes itself (EMCY, comm loss, an unclaimed NAME)."""

COALESCE_US = 60_000_000
"""An event equal to one of the last `COALESCE_LOOKBACK` events of this long ago adds to its count."""

COALESCE_LOOKBACK = 6


class EventKind(StrEnum):
    """What an event is about."""

    COMM = "comm"
    ALARM = "alarm"
    EMCY = "emcy"
    DM1 = "dm1"
    IDENTITY = "identity"
    COMMAND = "command"
    BUS = "bus"
    LOG = "log"


class Severity(IntEnum):
    """How an event is shown: OK (a recovery, a clear), INFO, WARNING, ALARM."""

    OK = 0
    INFO = 1
    WARNING = 2
    ALARM = 3


@dataclass(frozen=True, slots=True)
class Event:
    """One thing that happened, at `timestamp_us`, to `source` (a device or a bus); `repeat`
    counts the same event happening again soon after (a flapping state is one line)."""

    timestamp_us: int
    source: str
    kind: EventKind
    severity: Severity
    text: str
    repeat: int = 1


_MISSING = object()

@dataclass(frozen=True, slots=True)
class LogLine:
    """A log record as the inbox keeps it."""

    timestamp_us: int
    level: int
    logger: str
    message: str


Inbox = deque[tuple[str, Reading] | tuple[CommandResult, int] | tuple[LogLine, None] | tuple["Event", None]]


def _plain(value: Value) -> Value:
    return value.value if isinstance(value, Enum) else value


def _level(value: Value) -> int:
    try:
        return int(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0


def _format(value: float) -> str:
    return f"{value:g}"


class EventLog:
    """Transitions of the registry and command results, as a ring buffer of `Event` values."""

    def __init__(self, capacity: int = 500, inbox: int = 20_000) -> None:
        self._events: deque[Event] = deque(maxlen=capacity)
        self._inbox: Inbox = deque(maxlen=inbox)
        self.dropped = 0
        """Inbox entries dropped because nobody drained them in time (approximate under contention)."""
        self._last: dict[str, object] = {}
        self._emcy: dict[str, tuple[int, int]] = {}
        self._dm1: dict[str, tuple[frozenset[tuple[int, int]], tuple[str, ...]]] = {}
        self._lost_since: dict[str, int] = {}
        self._recovered: set[str] = set()
        self._buses: set[str] = set()
        self._units: Callable[[str], str] = lambda address: ""
        self.total = 0
        """Events ever logged (the ring buffer keeps the last `capacity`)."""

    # -- wiring (any thread: appends only) ----------------------------------------------------

    def attach(self, registry: Registry, buses: Iterable[str] = ()) -> list[Subscription]:
        """Watch `registry` (and the ``State`` of each bus in `buses`); returns the subscriptions."""
        self._buses.update(buses)

        def unit(address: str) -> str:
            try:
                return registry.info(address).unit
            except Exception:
                return ""

        self._units = unit
        patterns = [*DEVICE_PATTERNS, *(f"{b}/State" for b in sorted(self._buses))]
        return [registry.subscribe(p, self.post) for p in patterns]

    def post(self, address: str, reading: Reading) -> None:
        """The registry callback: one append to the bounded inbox, nothing else."""
        if len(self._inbox) == self._inbox.maxlen:
            self.dropped += 1
        self._inbox.append((address, reading))

    def post_command(self, result: CommandResult) -> None:
        """The `Edge.on_command` callback: the result, stamped now, into the inbox."""
        self._inbox.append((result, time.time_ns() // 1000))

    def post_event(self, event: Event) -> None:
        """An event made elsewhere (the alarm runner's transitions) into the inbox."""
        self._inbox.append((event, None))

    def post_log(self, record: logging.LogRecord) -> None:
        """The `EventLogHandler` callback: a log record into the inbox."""
        line = LogLine(int(record.created * 1e6), record.levelno, record.name, record.getMessage())
        self._inbox.append((line, None))

    # -- the transition logic (the draining thread) ---------------------------------------------

    def drain(self) -> list[Event]:
        """Turn everything posted since the last call into events; returns the new ones."""
        new: list[Event] = []
        while True:
            try:
                item = self._inbox.popleft()
            except IndexError:
                break
            first, second = item
            if isinstance(first, Event):
                new.append(self._add(first))
            elif isinstance(first, CommandResult):
                assert isinstance(second, int)
                new.append(self.command(first, second))
            elif isinstance(first, LogLine):
                new.extend(self.log_line(first))
            else:
                assert isinstance(second, Reading)
                new.extend(self.feed(first, second))
        return new

    def events(self, sources: Sequence[str] = ()) -> list[Event]:
        """The events kept, oldest first; only those of `sources` if given."""
        if not sources:
            return list(self._events)
        return [e for e in self._events if e.source in sources]

    def _add(self, event: Event) -> Event:
        self.total += 1
        recent = list(itertools.islice(reversed(self._events), COALESCE_LOOKBACK))
        for old in recent:
            if (old.source, old.kind, old.text) == (event.source, event.kind, event.text) \
                    and event.timestamp_us - old.timestamp_us <= COALESCE_US:
                self._events.remove(old)
                event = replace(event, repeat=old.repeat + 1)
                break
        self._events.append(event)
        return event

    def log_line(self, line: LogLine) -> list[Event]:
        """The event of a logged warning or error (none for one that repeats an event)."""
        if any(marker in line.message for marker in TOLD_BY_EVENTS):
            return []
        source, sep, rest = line.message.partition(": ")
        if not sep or source not in self._sources():
            source, rest = line.logger.rsplit(".", 1)[-1], line.message
        severity = Severity.ALARM if line.level >= logging.ERROR else Severity.WARNING
        return self._one(line.timestamp_us, source, EventKind.LOG, severity, rest)

    def _sources(self) -> set[str]:
        return self._buses | {a.split("/", 1)[0] for a in self._last}

    def command(self, result: CommandResult, timestamp_us: int) -> Event:
        """The event of one command result."""
        name = result.address.split("/", 1)[1] if "/" in result.address else result.address
        unit = self._units(result.address)
        value = _format(result.value) + (f" {unit}" if unit else "")
        severity = {CommandStatus.ACKED: Severity.OK, CommandStatus.SENT: Severity.INFO,
                    CommandStatus.TIMEOUT: Severity.WARNING}.get(result.status, Severity.ALARM)
        detail = _without_echo(result.detail, result.address)
        text = f"{name} = {value} {result.status.value}" + (f": {detail}" if detail else "")
        return self._add(Event(timestamp_us, result.address.split("/", 1)[0], EventKind.COMMAND, severity, text))

    def feed(self, address: str, reading: Reading) -> list[Event]:
        """The events (none, usually) that one channel update causes."""
        source, _, name = address.partition("/")
        value = _plain(reading.value)
        previous = self._last.get(address, _MISSING)
        self._last[address] = value
        ts = reading.timestamp_us
        if name == "Alarm/Emcy":
            return self._emcy_event(source, _level(value), ts)
        if name == "Dm1/ActiveDtcs":
            return self._dm1_event(source, value, ts)
        if previous == value:
            return []
        if name == "CommState":
            return self._comm_event(source, previous, str(value), ts)
        if name == "State" and source in self._buses:
            return self._bus_event(source, previous, str(value), ts)
        if name.startswith("Alarm/"):
            return self._alarm_event(source, name.removeprefix("Alarm/"), previous, _level(value), ts)
        return []

    # -- one method per kind of event -----------------------------------------------------------

    def _one(self, ts: int, source: str, kind: EventKind, severity: Severity, text: str) -> list[Event]:
        return [self._add(Event(ts, source, kind, severity, text))]

    def _comm_event(self, device: str, previous: object, state: str, ts: int) -> list[Event]:
        since = self._lost_since.pop(device, None) if state != "LOST" else None
        if since is not None:  # heard again after a loss: one event, whatever is still overdue
            self._recovered.add(device)
            text = f"comm recovered after {(ts - since) / 1e6:.1f} s"
            return self._one(ts, device, EventKind.COMM, Severity.OK, text)
        if state == "LOST":
            self._lost_since[device] = ts
            self._recovered.discard(device)
            text = ("not heard within its timeout: LOST" if previous == "WAITING"
                    else "comm lost: no frame within its timeout")
            return self._one(ts, device, EventKind.COMM, Severity.ALARM, text)
        if state == "STALE":
            self._recovered.discard(device)
            return self._one(ts, device, EventKind.COMM, Severity.WARNING, "stale: some messages overdue")
        if state == "OK" and previous == "STALE":
            if device in self._recovered:  # the rest of a recovery already told
                self._recovered.discard(device)
                return []
            return self._one(ts, device, EventKind.COMM, Severity.OK, "comm ok: every message on time")
        if state == "OK" and previous == "WAITING":
            return self._one(ts, device, EventKind.COMM, Severity.INFO, "online: first frames received")
        return []

    def _bus_event(self, bus: str, previous: object, state: str, ts: int) -> list[Event]:
        good = ("ERROR_ACTIVE", "UNKNOWN")
        if previous is _MISSING and state in good:
            return []
        severity = {"ERROR_ACTIVE": Severity.OK, "UNKNOWN": Severity.OK, "ERROR_WARNING": Severity.WARNING}.get(
            state, Severity.ALARM)
        was = f" (was {previous})" if isinstance(previous, str) else ""
        return self._one(ts, bus, EventKind.BUS, severity, f"bus {state}{was}")

    def _alarm_event(self, device: str, alarm: str, previous: object, level: int, ts: int) -> list[Event]:
        before = _level(previous) if previous is not _MISSING else 0  # type: ignore[arg-type]
        if alarm in SKIPPED_ALARMS or level == before:
            return []
        if alarm == "Identity":
            if level:
                text = "identity mismatch: 0x1000/0x1018 differ from the profile; values marked invalid"
                return self._one(ts, device, EventKind.IDENTITY, Severity.ALARM, text)
            return self._one(ts, device, EventKind.IDENTITY, Severity.OK, "identity check passed")
        label = f"{alarm} ({ALARM_TEXTS[alarm]})" if alarm in ALARM_TEXTS else alarm
        if level == 0:
            return self._one(ts, device, EventKind.ALARM, Severity.OK, f"{label} cleared")
        was = f" (was {ALARM_WORDS.get(before, before)})" if before else ""
        severity = Severity.ALARM if level >= 2 else Severity.WARNING
        return self._one(ts, device, EventKind.ALARM, severity, f"{label} {ALARM_WORDS.get(level, level)}{was}")

    def _emcy_event(self, device: str, level: int, ts: int) -> list[Event]:
        code = _level(self._last.get(f"{device}/EmcyCode"))  # type: ignore[arg-type]
        key = (code, level)
        previous = self._emcy.get(device, (0, 0))
        self._emcy[device] = key
        if key == previous:
            return []
        if code == 0:
            return self._one(ts, device, EventKind.EMCY, Severity.OK, "EMCY cleared (error reset)")
        text = self._last.get(f"{device}/EmcyText") or "emergency"
        register = self._last.get(f"{device}/EmcyRegister")
        reg = f" · error register 0x{register:02X}" if isinstance(register, int) else ""
        severity = Severity.ALARM if level >= 2 else Severity.WARNING
        return self._one(ts, device, EventKind.EMCY, severity, f"EMCY 0x{code:04X} {text}{reg}")

    def _dm1_event(self, device: str, value: Value, ts: int) -> list[Event]:
        dtcs = _parse_dtcs(value)
        lit = tuple(lamp for lamp in LAMP_NAMES if self._last.get(f"{device}/Dm1/{lamp}") in LIT_LAMPS)
        key = (frozenset((d[0], d[1]) for d in dtcs), lit)
        previous = self._dm1.get(device, (frozenset(), ()))
        self._dm1[device] = key
        if key == previous:
            return []
        if not dtcs and not lit:
            return self._one(ts, device, EventKind.DM1, Severity.OK, "DM1 cleared: no active DTC, lamps off")
        shown = ", ".join(f"SPN {spn} FMI {fmi}" for spn, fmi, _ in dtcs)  # occurrence counts: Dm1/ActiveDtcs
        count = f"{len(dtcs)} DTC{'s' if len(dtcs) != 1 else ''}"
        lamps = " · " + ", ".join(LAMP_NAMES[lamp] for lamp in lit) + " lamp" + ("s" if len(lit) > 1 else "") \
            if lit else ""
        severity = Severity.ALARM if "RedStopLamp" in lit else Severity.WARNING
        return self._one(ts, device, EventKind.DM1, severity, f"DM1 {count}{': ' + shown if shown else ''}{lamps}")


def _without_echo(detail: str, address: str) -> str:
    """A command's detail without a leading repetition of the command (``hv/SetX = 5 A is above
    the maximum`` -> ``above the maximum``)."""
    if detail.startswith(address + " = "):
        words = detail[len(address) + 3 :].split(" ")
        rest = words[1:]
        if rest and not rest[0][:1].isdigit() and rest[0] not in ("is", "was"):
            rest = rest[1:]  # the unit
        detail = " ".join(rest)
        for lead in ("is ", "was "):
            detail = detail.removeprefix(lead)
    return detail


def _parse_dtcs(value: Value) -> list[tuple[int, int, int]]:
    """(spn, fmi, oc) of a ``Dm1/ActiveDtcs`` JSON value; [] for anything else."""
    if not isinstance(value, str):
        return []
    try:
        items = json.loads(value)
    except ValueError:
        log.debug("Dm1/ActiveDtcs is not JSON: %r", value)
        return []
    out = []
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and "spn" in item and "fmi" in item:
            out.append((int(item["spn"]), int(item["fmi"]), int(item.get("oc", 1))))
    return out


class EventLogHandler(logging.Handler):
    """A logging handler that hands records to an EventLog (the monitor shows warnings as events
    instead of printing them over its screen)."""

    def __init__(self, events: EventLog, level: int = logging.WARNING) -> None:
        super().__init__(level)
        self.events = events

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.events.post_log(record)
        except Exception:
            self.handleError(record)
