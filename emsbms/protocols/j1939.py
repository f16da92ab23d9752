"""The J1939 adapter: a BMS that is a J1939 ECU, decoded by PGN and followed by its NAME.

Frames reach the adapter through the bus's shared `J1939Stack` (the edge's own can-j1939 ECU),
which reassembles transport-protocol transfers and keeps the NAME/address table. The adapter
decodes the profile's parameter groups from the device's current source address, whatever the
priority, applying J1939 validity (error and not-available ranges give no number), turns DM1
into lamp, DTC and alarm channels, requests the on-request groups, and plans commands: PGN
messages (e.g. HVES1C1, Proprietary A) and requests (e.g. DM11), acknowledged by an echo or
by the acknowledgement PGN 0xE800.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import can
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emsbms.errors import CommandRejected, ConfigError, ProfileError
from emsbms.profile.codec import CompiledMessage, compile_message
from emsbms.profile.models import HexInt, Millis, Seconds
from emsbms.protocols.base import EMPTY, AckCheck, Adapter, CommandPlan, DeviceConfig, Output, SentFrame
from emsbms.protocols.cyclic import CyclicSetpoints
from emsbms.protocols.dbc import check_signal_refs, dlc_text, validate_command_value
from emsbms.protocols.j1939_commands import PendingCommands, ack_check
from emsbms.protocols.j1939_dm import LAMPS, Dtc, LampState, dtcs_json, parse_dm1
from emsbms.protocols.j1939_names import (
    MAX_CLAIMABLE,
    NAME_FIELDS,
    PGN_DM1,
    as_int,
    pgn_and_destination,
)
from emsbms.protocols.j1939_stack import DEFAULT_EDGE_ADDRESS, DEFAULT_EDGE_NAME, J1939Stack, stack_for
from emsbms.protocols.supervision import Supervisor
from emsbms.types import (
    AlarmLevel,
    ChannelInfo,
    ChannelKind,
    CommandResult,
    CommandStatus,
    CommState,
    Quality,
    Sample,
)

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

log = logging.getLogger(__name__)

_NAME_MAX = (1 << 64) - 1
CLAIM_SETTLE_US = 300_000
"""Wait after a device claims before requesting from it (it may not answer during its 250 ms veto)."""
FIRST_RETRY_US = 1_000_000


# -- options --------------------------------------------------------------------------------------

class _Opts(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DemoDevice(_Opts):
    """The NAME and address the demo and simulator give a device of this profile."""

    source_address: HexInt = Field(ge=0, le=MAX_CLAIMABLE)
    j1939_name: HexInt = Field(ge=0, le=_NAME_MAX)


class Dm1AlarmSource(_Opts):
    """A DTC that raises an alarm channel: its SPN, optionally its FMI, and the level."""

    spn: int = Field(ge=0, le=0x7FFFF)
    fmi: int | None = Field(None, ge=0, le=31)
    level: int = Field(2, ge=1, le=2)


class SimulatorOptions(_Opts):
    """Size and default limits of the simulated pack (emsbms.sim.j1939_sim)."""

    cells: int | None = Field(default=None, ge=1)
    capacity_ah: float | None = Field(default=None, gt=0)
    soh: float | None = Field(default=None, ge=0, le=100)
    charge_max_voltage: float | None = Field(default=None, gt=0)
    discharge_min_voltage: float | None = Field(default=None, gt=0)
    charge_max_current: float | None = Field(default=None, ge=0)
    discharge_max_current: float | None = Field(default=None, ge=0)


class J1939Options(_Opts):
    """The `options` of a j1939 profile."""

    demo_device: DemoDevice | None = None
    simulator: SimulatorOptions = SimulatorOptions()
    match: dict[str, int] = Field(default_factory=dict, description="NAME fields a scan matches this profile by")
    dm1_alarms: dict[str, list[Dm1AlarmSource]] = Field(default_factory=dict)
    dm1_period_ms: Millis | None = Field(1000, description="DM1 supervision period (None: not supervised)")
    request_interval_s: Seconds = Field(60, description="default re-request interval of on-request PGNs")


class EdgeOptions(_Opts):
    """Device options (the site's ``[j1939]`` table merged with the device's own ``options``)."""

    edge_name: HexInt = Field(DEFAULT_EDGE_NAME, ge=0, le=_NAME_MAX)
    edge_address: HexInt = Field(DEFAULT_EDGE_ADDRESS, ge=0, le=MAX_CLAIMABLE)
    request_interval_s: Seconds | None = None


def profile_options(profile: Profile) -> J1939Options:
    """The validated j1939 options of a profile; raises ProfileError naming the JSON path."""
    try:
        return J1939Options.model_validate(profile.model.options)
    except ValidationError as e:
        raise ProfileError(f"profile {profile.name}: {_pydantic_text('options', e)}") from e


def _pydantic_text(root: str, err: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join([root, *(str(p) for p in e['loc'])])}: {e['msg']}"
        + ("" if isinstance(e.get("input"), dict | list) else f"; found {e.get('input')!r}")
        for e in err.errors()
    )


def check_j1939_profile(profile: Profile) -> None:
    """Check a j1939 profile against its DBC: messages, signals, commands and options."""
    check_signal_refs(profile, ack_types=("echo", "j1939_ack", "none"), extended_only=True,
                      first_invalid=lambda length: j1939_limits(length)[0])
    label = f"profile {profile.model.name}"
    opts = profile_options(profile)
    for key in opts.match:
        if key not in NAME_FIELDS:
            raise ProfileError(f"{label}: options.match.{key}: not a NAME field;"
                               f" expected one of {', '.join(NAME_FIELDS)}")


# -- decoding tables ------------------------------------------------------------------------------

def j1939_limits(length: int) -> tuple[int, int]:
    """(first invalid raw value, first not-available raw value) of a parameter `length` bits long.

    Whole bytes: top byte 0xFB-0xFD reserved and 0xFE error (both invalid), 0xFF not available.
    Bit fields of 2+ bits: all ones not available, all ones minus one error. 1 bit: always valid.
    """
    if length >= 8 and length % 8 == 0:
        return 0xFB << (length - 8), 0xFF << (length - 8)
    if length >= 2:
        mask = (1 << length) - 1
        return mask - 1, mask
    return 2, 2


@dataclass(slots=True, frozen=True)
class _Out:
    """A channel fed by one signal."""

    index: int
    address: str
    scale: float
    offset: float
    take_abs: bool
    kind: str
    invalid_from: int
    na_from: int
    mask: int


@dataclass(slots=True, frozen=True)
class _AlarmIn:
    """One alarm source in a message: active if the raw value is valid and non-zero (or equals `value`)."""

    index: int
    name: str
    slot: int
    level: int
    value: int | None
    invalid_from: int
    mask: int
    ok: int | None = None  # the raw value meaning OK; other inactive values carry no information


@dataclass(slots=True)
class _Route:
    """A parameter group the device sends: its decoder and where its values go."""

    compiled: CompiledMessage
    pgn: int
    min_len: int | None  # the profile's strict bounds (None: no bound)
    max_len: int | None
    declared: int  # shorter frames are short frames: the profile's min_dlc, else the group's length
    outputs: tuple[_Out, ...]
    alarms: tuple[_AlarmIn, ...]


@dataclass(slots=True)
class _Request:
    """An on-request PG: asked for every `interval_us`, and again sooner while unanswered."""

    pgn: int
    interval_us: int
    next_us: int = 0
    retry_us: int = FIRST_RETRY_US
    answered: bool = False

    def due(self, now_us: int) -> None:
        """Note a request sent now: retry with doubling delays until answered, then the interval."""
        self.answered = False
        self.next_us = now_us + min(self.retry_us, self.interval_us)
        self.retry_us = min(2 * self.retry_us, self.interval_us)

    def reply(self, now_us: int) -> None:
        if not self.answered:
            self.answered = True
            self.retry_us = FIRST_RETRY_US
            self.next_us = max(self.next_us, now_us + self.interval_us)

    def restart(self, at_us: int) -> None:
        self.next_us, self.retry_us, self.answered = at_us, FIRST_RETRY_US, False


def device_addressing(device: DeviceConfig) -> tuple[int | None, int | None]:
    """(NAME, source address) of a device; "0x.." strings are accepted. Raises ConfigError."""
    try:
        name = None if device.j1939_name is None else as_int(device.j1939_name, "j1939_name", _NAME_MAX)
        address = (None if device.source_address is None
                   else as_int(device.source_address, "source_address", MAX_CLAIMABLE))
    except ValueError as e:
        raise ConfigError(f"device {device.name!r}: {e}") from e
    return name, address


def message_pgn(frame_id: int) -> int:
    """The PGN of a DBC message's 29-bit ID (destination zeroed for PDU1)."""
    return pgn_and_destination(frame_id & 0x1FFFFFFF)[0]


# -- the adapter ----------------------------------------------------------------------------------

class J1939Adapter(Adapter):
    """One J1939 BMS, identified by NAME (preferred) or source address, on the bus's J1939 stack."""

    protocol = "j1939"
    wants_unmatched = True

    def __init__(self, device: DeviceConfig, profile: Profile) -> None:
        super().__init__(device, profile)
        self.device_name = device.name
        self.options = profile_options(profile)
        try:
            edge = EdgeOptions.model_validate(device.options)
        except ValidationError as e:
            raise ConfigError(f"device {device.name!r}: {_pydantic_text('options', e)}") from e
        if device.id_offset:
            raise ConfigError(f"device {device.name!r}: id_offset has no meaning for a j1939 device (found"
                              f" {device.id_offset}); it is addressed by j1939_name or source_address")
        name, address = device_addressing(device)
        if name is None and address is None:
            raise ConfigError(f"device {device.name!r}: a j1939 device needs j1939_name (preferred) or"
                              " source_address; found neither")
        self.j1939_name = name
        self.fixed_address = address if name is None else None
        self.stack: J1939Stack = stack_for(device.bus, device.name, edge.edge_name, edge.edge_address)
        self.address: int | None = self._resolve()
        m = profile.model
        self.supervisor = Supervisor(device.name, int(m.timeout_ms * 1000))
        self._routes: dict[int, _Route] = {}
        self._by_name: dict[str, _Route] = {}
        self._requests: list[_Request] = []
        self._build_routes(edge.request_interval_s)
        self._request_of = {r.pgn: r for r in self._requests}
        if self.options.dm1_period_ms is not None:
            self.supervisor.watch(PGN_DM1, int(self.options.dm1_period_ms * 1000), self._dm1_addresses())
        self._alarm_slots = {name: [-1] * len(al.sources) for name, al in m.alarms.items()}
        self._short_frames = 0
        self._bad_values = 0
        self.active_dtcs: tuple[Dtc, ...] = ()
        self._active = CyclicSetpoints()
        self._pending: list[Sample] = []
        self._later = PendingCommands()
        self._edge_seen: int | None = -1
        self._missing = False
        self._start_us = 0
        self.stack.attach(self)

    # -- setup -------------------------------------------------------------------------------

    def _build_routes(self, request_interval_s: float | None) -> None:
        m = self.profile.model
        sent_by_edge = {c.message for c in m.commands.values()}
        for msg in self.profile.db.messages:
            if msg.name in sent_by_edge:
                continue
            route = self._make_route(msg)
            self._routes[route.pgn] = route
            self._by_name[msg.name] = route
            settings = m.messages.get(msg.name)
            addresses = [o.address for o in route.outputs] + [self.prefix + "Alarm/" + a.name for a in route.alarms]
            if settings is not None and settings.on_request:
                interval = request_interval_s or settings.request_interval_s or self.options.request_interval_s
                self._requests.append(_Request(route.pgn, int(interval * 1_000_000)))
                self.supervisor.watch(route.pgn, None, addresses)
            else:
                period = settings.period_ms if settings else None
                self.supervisor.watch(route.pgn, int(period * 1000) if period else None, addresses)

    def _make_route(self, msg: Any) -> _Route:
        m = self.profile.model
        compiled = compile_message(msg)
        index = {n: i for i, n in enumerate(compiled.signal_names)}
        lengths = {s.name: s.length for s in msg.signals}

        def out(name: str, ch: Any) -> _Out:
            n = lengths[ch.signal]
            inv, na = j1939_limits(n)
            return _Out(index[ch.signal], self.prefix + name, ch.scale, ch.offset, ch.abs, ch.type, inv, na,
                        (1 << n) - 1)

        outputs = tuple(out(n, ch) for n, ch in m.channels.items() if ch.message == msg.name and ch.signal)
        alarms = tuple(
            _AlarmIn(index[s.signal], name, slot, s.level, s.value, j1939_limits(lengths[s.signal])[0],
                     (1 << lengths[s.signal]) - 1, s.ok)
            for name, al in m.alarms.items()
            for slot, s in enumerate(al.sources)
            if s.message == msg.name
        )
        settings = m.messages.get(msg.name)
        min_len = settings.min_dlc if settings else None
        max_len = settings.max_dlc if settings else None
        declared = min(min_len, msg.length) if min_len is not None else msg.length
        return _Route(compiled, message_pgn(msg.frame_id), min_len, max_len, declared, outputs, alarms)

    def _dm1_addresses(self) -> list[str]:
        p = self.prefix
        return ([p + "Dm1/" + lamp for lamp in LAMPS] + [p + "Dm1/ActiveDtcs", p + "Dm1/ActiveDtcCount",
                p + "Alarm/DiagnosticLamps"] + [p + "Alarm/" + n for n in self.options.dm1_alarms])

    @classmethod
    def check_profile(cls, profile: Profile) -> None:
        check_j1939_profile(profile)

    def take_over(self, old: Adapter) -> None:
        """Take `old`'s place in the bus's shared stack (hot activation of a new profile version).

        Same edge ECU and claimed address, no new claim; the device's address is re-learned from
        the stack's NAME table. Commands waiting for the claims, cyclic setpoints of commands that
        still exist with the same message, the DTCs and the communication state carry over;
        on-request groups are asked for again (the new version may map them differently).
        """
        if not isinstance(old, J1939Adapter):
            raise ConfigError(f"device {self.device_name!r}: a j1939 profile cannot replace a {old.protocol}"
                              " adapter while the edge runs; restart the edge")
        built_on, self.stack = self.stack, old.stack
        old.stack.replace(old, self, built_on)
        self.address = self._resolve()
        self._later = old._later
        commands, old_commands = self.profile.model.commands, old.profile.model.commands
        self._active = CyclicSetpoints({n: a for n, a in old._active.items()
                                        if n in commands and commands[n].message == old_commands[n].message})
        self._pending = [*old._take_pending(), *self._pending]
        self.active_dtcs = old.active_dtcs
        self.supervisor.last_seen_us = old.supervisor.last_seen_us
        self.supervisor.state = old.supervisor.state

    # -- contract ----------------------------------------------------------------------------

    def channels(self) -> list[ChannelInfo]:
        m = self.profile.model
        p = self.prefix
        out = [ChannelInfo(p + n, c.unit, ChannelKind.MEASUREMENT, c.description) for n, c in m.channels.items()]
        out += [ChannelInfo(p + "Alarm/" + n, "", ChannelKind.ALARM, a.description) for n, a in m.alarms.items()]
        out += [ChannelInfo(p + "Alarm/" + n, "", ChannelKind.ALARM, "from DM1 DTCs") for n in self.options.dm1_alarms]
        out += [
            ChannelInfo(p + "Alarm/DiagnosticLamps", "", ChannelKind.ALARM, "DM1 lamps: red stop 2, others 1"),
            ChannelInfo(p + "Alarm/NameNotClaimed", "", ChannelKind.ALARM, "the device's NAME holds no address"),
        ]
        out += [ChannelInfo(p + "Dm1/" + lamp, "", ChannelKind.STATE, "DM1 lamp state") for lamp in LAMPS]
        out += [
            ChannelInfo(p + "Dm1/ActiveDtcs", "", ChannelKind.STATE, "active DTCs, JSON [{spn, fmi, oc}]"),
            ChannelInfo(p + "Dm1/ActiveDtcCount", "", ChannelKind.STATE, "number of active DTCs"),
            ChannelInfo(p + "SourceAddress", "", ChannelKind.STATE, "the device's current J1939 address"),
            ChannelInfo(p + "EdgeAddress", "", ChannelKind.STATE, "the edge's own J1939 address on this bus"),
        ]
        out += [ChannelInfo(p + n, c.unit, ChannelKind.COMMAND, c.description, c.min, c.max)
                for n, c in m.commands.items()]
        return out + self.supervisor.channels()

    def frame_keys(self) -> Iterable[int]:
        return ()  # J1939 frames are matched by PGN and source address, not by exact ID

    def sent_frames(self) -> Iterable[SentFrame]:
        return ()  # sent from the edge's own claimed address; the site checks NAMEs and addresses instead

    @property
    def comm_state(self) -> CommState:
        return self.supervisor.state

    def start(self, now_us: int) -> Output:
        self._start_us = now_us
        self.stack.start()
        samples = self.supervisor.begin(now_us)
        samples.append(self._address_sample(now_us))
        samples.append(Sample(self.prefix + "Alarm/NameNotClaimed", AlarmLevel.OK, now_us))
        return Output(samples=samples, frames=self.stack.drain())

    def on_frame(self, msg: can.Message, now_us: int) -> Output | None:
        if self._later:
            self._later.offer(msg)
        used = self.stack.receive(msg)
        mine = self.stack.take(self)
        frames = self.stack.drain()
        pending = self._take_pending()
        if mine is None:
            if not (used or frames or pending):
                return None
            return Output(samples=pending, frames=frames)
        if not (frames or pending):
            return mine
        return Output(samples=[*pending, *mine.samples], frames=[*frames, *mine.frames], stale=mine.stale,
                      error=mine.error)

    def tick(self, now_us: int) -> Output:
        self.stack.tick(now_us)
        samples = self._take_pending()
        samples += self._edge_state(now_us)
        samples += self._claim_state(now_us)
        if self.address is None and self.j1939_name is not None:
            self.stack.request_claims_again(now_us)
        self._send_requests(now_us)
        if self._later and self.stack.edge_address is not None and self.address is not None:
            self.stack.outbox.extend(self._later.run())
        sup_samples, went_stale = self.supervisor.tick(now_us)  # first: a LOST device gets no setpoint
        stale = self._send_cyclic(now_us)
        return Output(samples=samples + sup_samples, frames=self.stack.drain(), stale=stale + went_stale)

    # -- addresses ---------------------------------------------------------------------------

    def _resolve(self) -> int | None:
        if self.j1939_name is not None:
            return self.stack.address_of.get(self.j1939_name)
        return self.fixed_address

    def claims_changed(self) -> None:
        new = self._resolve()
        if new == self.address:
            return
        log.info("%s: NAME %s now at address %s (was %s)", self.device_name,
                 f"0x{self.j1939_name:016X}" if self.j1939_name is not None else "-", new, self.address)
        self.address = new
        for r in self._requests:  # a (re)claimed device: ask again once its claim has settled
            r.restart(self.stack.clock_us + CLAIM_SETTLE_US)
        self._pending.append(self._address_sample(self.stack.clock_us))

    def _address_sample(self, ts: int) -> Sample:
        a = self.address
        return Sample(self.prefix + "SourceAddress", a, ts, Quality.OK if a is not None else Quality.NOT_AVAILABLE)

    def _take_pending(self) -> list[Sample]:
        if not self._pending:
            return []
        out, self._pending = self._pending, []
        return out

    def _edge_state(self, now_us: int) -> list[Sample]:
        edge = self.stack.edge_address
        if edge == self._edge_seen:
            return []
        self._edge_seen = edge
        if edge is not None:
            for r in self._requests:
                r.restart(now_us)
        q = Quality.OK if edge is not None else Quality.NOT_AVAILABLE
        return [Sample(self.prefix + "EdgeAddress", edge, now_us, q)]

    def _claim_state(self, now_us: int) -> list[Sample]:
        if self.j1939_name is None:
            return []
        missing = self.address is None and now_us - self._start_us > self.supervisor.timeout_us
        if missing == self._missing:
            return []
        self._missing = missing
        if missing:
            log.warning("%s: NAME 0x%016X has claimed no address on bus %s", self.device_name,
                        self.j1939_name, self.device.bus)
        level = AlarmLevel.ALARM if missing else AlarmLevel.OK
        return [Sample(self.prefix + "Alarm/NameNotClaimed", level, now_us)]

    def _send_requests(self, now_us: int) -> None:
        if self.address is None or self.stack.edge_address is None:
            return
        for r in self._requests:
            if now_us >= r.next_us:
                r.due(now_us)
                self.stack.ca.send_request(0, r.pgn, self.address)

    # -- decoding ----------------------------------------------------------------------------

    def decode(self, pgn: int, data: bytes, timestamp_us: int) -> Output | None:
        """Decode one complete parameter group from the device (called by the stack)."""
        if pgn == PGN_DM1:
            return self._dm1(data, timestamp_us)
        route = self._routes.get(pgn)
        if route is None:
            return None
        n = len(data)
        length = route.compiled.length
        low, high = route.min_len, route.max_len
        if (low is not None and n < low) or (high is not None and n > high):
            return Output(error=f"{self.device_name}: {route.compiled.name} (PGN 0x{pgn:04X}) has {n} bytes,"
                                f" expected {dlc_text(low, high)}")
        if n != length:  # excess bytes ignored; a short group gives the parameters it holds
            data = data[:length].ljust(length, b"\xff")
            if n < route.declared:
                self._short_frames += 1
        samples = self._values(route, data, n, timestamp_us)
        transition = self.supervisor.seen(pgn, timestamp_us)
        if transition:
            samples.extend(transition)
        request = self._request_of.get(pgn)
        if request is not None:
            request.reply(timestamp_us)
        return Output(samples=samples)

    def _values(self, route: _Route, data: bytes, n: int, ts: int) -> list[Sample]:
        raws = route.compiled.decode_raw(data)
        values = route.compiled.decode(data)
        needed = route.compiled.bytes_needed
        samples: list[Sample] = []
        for o in route.outputs:
            if needed[o.index] > n:
                continue
            raw = raws[o.index] & o.mask
            if raw >= o.invalid_from:
                q = Quality.NOT_AVAILABLE if raw >= o.na_from else Quality.INVALID
                samples.append(Sample(o.address, None, ts, q))
                continue
            v = values[o.index] * o.scale + o.offset
            if o.take_abs:
                v = abs(v)
            if not math.isfinite(v):  # a float parameter: NaN or infinity is no value
                self._bad_values += 1
                samples.append(Sample(o.address, None, ts, Quality.INVALID))
                continue
            samples.append(Sample(o.address, bool(v) if o.kind == "bool" else int(v) if o.kind == "int" else v, ts))
        if route.alarms:
            samples.extend(self._alarms(route.alarms, raws, needed, n, ts))
        return samples

    def _alarms(self, inputs: tuple[_AlarmIn, ...], raws: tuple[Any, ...], needed: tuple[int, ...], n: int,
                ts: int) -> list[Sample]:
        touched: dict[str, None] = {}
        for a in inputs:
            if needed[a.index] > n:
                continue
            raw = raws[a.index] & a.mask
            active = raw == a.value if a.value is not None else (raw != 0 and raw < a.invalid_from)
            self._alarm_slots[a.name][a.slot] = a.level if active else 0 if a.ok is None or raw == a.ok else -1
            touched[a.name] = None
        return [Sample(self.prefix + "Alarm/" + name, AlarmLevel(max(self._alarm_slots[name])), ts)
                for name in touched if max(self._alarm_slots[name]) >= 0]

    def counters(self) -> tuple[int, int]:
        return self._short_frames, self._bad_values

    def _dm1(self, data: bytes, ts: int) -> Output:
        try:
            dm1 = parse_dm1(data)
        except Exception as e:
            return Output(error=f"{self.device_name}: {e}")
        self.active_dtcs = dm1.dtcs
        p = self.prefix
        samples = [Sample(p + "Dm1/" + lamp, str(dm1.lamps[lamp]), ts,
                          Quality.NOT_AVAILABLE if dm1.lamps[lamp] is LampState.NOT_AVAILABLE else Quality.OK)
                   for lamp in LAMPS]
        samples += [
            Sample(p + "Dm1/ActiveDtcs", dtcs_json(dm1.dtcs), ts),
            Sample(p + "Dm1/ActiveDtcCount", len(dm1.dtcs), ts),
            Sample(p + "Alarm/DiagnosticLamps", dm1.level, ts),
        ]
        for name, sources in self.options.dm1_alarms.items():
            level = max((s.level for s in sources for d in dm1.dtcs
                         if d.spn == s.spn and (s.fmi is None or s.fmi == d.fmi)), default=0)
            samples.append(Sample(p + "Alarm/" + name, AlarmLevel(level), ts))
        transition = self.supervisor.seen(PGN_DM1, ts)
        if transition:
            samples.extend(transition)
        return Output(samples=samples)

    # -- commands ----------------------------------------------------------------------------

    def plan_command(self, name: str, value: float, now_us: int) -> CommandPlan:
        cmd = self.profile.model.commands.get(name)
        if cmd is None:
            raise CommandRejected(f"{self.device_name} has no command {name!r}; known: "
                                  f"{', '.join(sorted(self.command_names)) or 'none'}")
        value = validate_command_value(self.device_name, name, cmd, value)
        if self.stack.edge_address is not None and self.address is not None:
            return self._plan_now(name, value)
        self._addresses_for_command(name, waiting_allowed=True)  # rejects if no address can come
        return CommandPlan(command=name, value=value, frames=[], detail="waiting for the J1939 address claims",
                           execute=self._later.execute_later(lambda: self._plan_now(name, value)))

    def _plan_now(self, name: str, value: float) -> CommandPlan:
        """Encode and capture the frames of a command (both addresses are known)."""
        cmd = self.profile.model.commands[name]
        edge, bms = self._addresses_for_command(name)
        if name in self._active:  # a cyclic command already running repeats the new value from now on
            self._active[name].value = value
        if cmd.request is not None:
            pgn = cmd.request
            frames = self.stack.capture(lambda: self.stack.ca.send_request(0, pgn, bms))
        else:
            assert cmd.message is not None and cmd.signal is not None
            pgn = message_pgn(self.profile.message(cmd.message).frame_id)
            values = {cmd.signal: value}
            frames = self.stack.capture(lambda: self._send_message(cmd.message or "", values))
        ack: AckCheck | None = None
        if cmd.ack.type == "j1939_ack":
            ack = ack_check(pgn, bms, edge)
        elif cmd.ack.type == "echo":
            ack = self._echo_check(cmd.ack.message or "", cmd.ack.signal or "", value, cmd.ack.tolerance, bms)
        return CommandPlan(command=name, value=value, frames=frames, ack=ack)

    def _addresses_for_command(self, name: str, waiting_allowed: bool = False) -> tuple[int, int]:
        """(edge, device) addresses; raises CommandRejected unless both are known (or, when
        `waiting_allowed`, still expected: the edge is claiming, the NAME not yet overdue)."""
        edge, bms = self.stack.edge_address, self.address
        if edge is None and not (waiting_allowed and self.stack.ca.claiming):
            raise CommandRejected(f"{self.device_name}/{name}: the edge holds no J1939 address on bus"
                                  f" {self.device.bus} (it lost its claim): nothing sent")
        if bms is None and not (waiting_allowed and self.j1939_name is not None and not self._missing):
            raise CommandRejected(f"{self.device_name}/{name}: NAME 0x{self.j1939_name or 0:016X} holds no"
                                  " address: nothing sent")
        return edge or 0, bms or 0

    def _send_message(self, message_name: str, overrides: dict[str, float]) -> None:
        """Encode a command message (active setpoints, else not available) and send it via the CA."""
        msg = self.profile.message(message_name)
        raw: dict[str, int] = {s.name: (1 << s.length) - 1 for s in msg.signals}  # no action / n/a
        for cname, active in self._active.items():
            cmd = self.profile.model.commands[cname]
            if cmd.message == message_name and cmd.signal is not None and cmd.signal not in overrides:
                raw[cmd.signal] = self._to_raw(msg, cmd.signal, active.value)
        for signal, value in overrides.items():
            raw[signal] = self._to_raw(msg, signal, value)
        data = msg.encode(raw, scaling=False, padding=True, strict=False)
        pgn = message_pgn(msg.frame_id)
        pf, ps = (pgn >> 8) & 0xFF, pgn & 0xFF
        if pf < 240:
            ps = self.address if self.address is not None else 0xFF
        priority = (msg.frame_id >> 26) & 7
        try:
            self.stack.ca.send_pgn((pgn >> 16) & 1, pf, ps, priority, list(data))
        except RuntimeError as e:  # the CA has no address
            raise CommandRejected(f"{self.device_name}: cannot send {message_name}: {e}") from e

    def _to_raw(self, msg: Any, signal: str, value: float) -> int:
        sig = msg.get_signal_by_name(signal)
        if (sig.minimum is not None and value < sig.minimum) or (sig.maximum is not None and value > sig.maximum):
            raise CommandRejected(f"{self.device_name}: {msg.name}.{signal} = {value} is outside"
                                  f" {sig.minimum}..{sig.maximum}")
        raw: int = round(float(value - sig.conversion.offset) / float(sig.conversion.scale))
        if not 0 <= raw < j1939_limits(sig.length)[0]:
            raise CommandRejected(f"{self.device_name}: {msg.name}.{signal} = {value} has no valid J1939 raw value")
        return raw

    def _echo_check(self, message: str, signal: str, value: float, tolerance: float | None, bms: int) -> AckCheck:
        route = self._by_name[message]
        idx = route.compiled.signal_names.index(signal)
        sig = self.profile.message(message).get_signal_by_name(signal)
        tol = tolerance if tolerance is not None else abs(sig.conversion.scale) / 2
        pgn, length, decode = route.pgn, route.compiled.length, route.compiled.decode

        def check(msg: can.Message) -> tuple[CommandStatus, str] | None:
            if not msg.is_extended_id or len(msg.data) < route.compiled.bytes_needed[idx]:
                return None
            got_pgn, _, sa = pgn_and_destination(msg.arbitration_id)
            if got_pgn != pgn or sa != bms:
                return None
            got = decode(bytes(msg.data)[:length].ljust(length, b"\xff"))[idx]
            if abs(got - value) <= tol:
                return CommandStatus.ACKED, f"echo {message}.{signal} = {got:g}"
            return None

        return check

    def _send_cyclic(self, now_us: int) -> list[str]:
        names, expired = self._active.due(now_us, self.supervisor.state)
        if expired and self.supervisor.state is CommState.LOST:
            log.warning("%s is LOST: cyclic setpoints %s stopped (write them again once it is back)",
                        self.device_name, ", ".join(expired))
        stale = [self.prefix + name for name in expired]
        due = dict.fromkeys(self.profile.model.commands[name].message or "" for name in names)
        if due and self.stack.edge_address is not None and self.address is not None:
            for message_name in due:
                try:
                    self._send_message(message_name, {})
                except CommandRejected as e:
                    log.debug("%s", e)
        return stale

    def command_done(self, plan: CommandPlan, result: CommandResult, now_us: int) -> Output:
        cmd = self.profile.model.commands[plan.command]
        if result.status not in (CommandStatus.ACKED, CommandStatus.SENT):
            if self._active.pop(plan.command, None) is not None:  # never repeat an unconfirmed value
                return Output(stale=[self.prefix + plan.command])
            return EMPTY
        if cmd.ttl_s is not None and cmd.period_ms is not None and cmd.request is None:
            self._active.start(plan.command, plan.value, now_us, cmd.ttl_s, cmd.period_ms)
        return Output(samples=[Sample(self.prefix + plan.command, plan.value, now_us)])
