"""The DBC-profile simulator: a simulated BMS for any `dbc` or inline byte-map profile.

It is generic: it reads the profile and inverts its mapping. Every message the edge receives
is sent at its ``messages.<name>.period_ms`` (else the DBC cycle time, else 1 s), on
``id + id_offset``, with the battery model's values encoded as ``signal = (value - offset) /
scale``, clamped to the signal's range. Alarm signals carry ``model.alarm_level(name)``: the
source whose level equals the alarm's level is set (its ``value``, or 1).

Commands the edge sends are decoded with cantools and applied by command name
(SetChargeCurrent, SetDischargeCurrent, SetChargeVoltage, EnableBalancing, ResetFaults). A
command's ``idle`` value means "no request": a current or voltage limit falls back to the
model's default. Every echo signal carries the value last received for its command. A cyclic
setpoint that stops arriving for 3 of its periods is dropped (the watchdog): the limit reverts
to the default and the echo to ``idle``.

Keepalive (e.g. pylon 0x305): the simulated device keeps working without it, as most
Pylontech-compatible batteries do; it logs one warning after 10 s without a keepalive and
reports the age through ``keepalive_age()``. It raises no alarm for it.

Faults: ``overtemp`` heats the pack to 56 °C at once (the model then latches its
over-temperature alarm, level 2) and keeps it hot; ``silent`` stops all sending and answering.

Profile ``options.simulator`` may set the model's size (``cells``, ``capacity_ah``, ``soh``)
and default limits (``charge_max_voltage``, ``discharge_min_voltage``, ``charge_max_current``,
``discharge_max_current``), e.g. to make an HV pack.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import can

from emsbms.errors import BusError, ProfileError
from emsbms.profile.models import AlarmMap, ChannelMap, CommandMap
from emsbms.protocols.base import DeviceConfig, frame_key
from emsbms.sim.base import DeviceSimulator
from emsbms.sim.battery import BatteryModel
from emsbms.site import BusConfig

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

log = logging.getLogger(__name__)

DEFAULT_PERIOD_S = 1.0
POLL_S = 0.02  # the longest the simulator thread waits before looking at its schedule again
WATCHDOG_PERIODS = 3.0
KEEPALIVE_WARN_S = 10.0
OVERTEMP_C = 56.0
DRAIN = 200  # most received frames handled between two schedule checks

MODEL_OPTIONS = (
    "cells", "capacity_ah", "soh", "charge_max_voltage", "discharge_min_voltage",
    "charge_max_current", "discharge_max_current",
)


def signal_limits(sig: Any) -> tuple[float, float]:
    """The physical range a cantools signal can carry: its raw range, narrowed by min/max."""
    n = sig.length
    if sig.is_float:
        lo, hi = -float("inf"), float("inf")
    else:
        raw_lo, raw_hi = (-(1 << (n - 1)), (1 << (n - 1)) - 1) if sig.is_signed else (0, (1 << n) - 1)
        scale, offset = sig.conversion.scale, sig.conversion.offset
        a, b = raw_lo * scale + offset, raw_hi * scale + offset
        lo, hi = min(a, b), max(a, b)
    if sig.minimum is not None and sig.maximum is not None and sig.minimum == sig.maximum:
        return lo, hi  # DBC [0|0]: no range given
    if sig.minimum is not None:
        lo = max(lo, sig.minimum)
    if sig.maximum is not None:
        hi = min(hi, sig.maximum)
    return lo, hi


def channel_to_signal(value: float, ch: ChannelMap) -> float:
    """Invert a channel mapping (value = signal * scale + offset) for sending."""
    if ch.type == "bool":
        return 1.0 if value else 0.0
    signal = (value - ch.offset) / ch.scale
    return abs(signal) if ch.abs else signal


@dataclass
class _Outgoing:
    """A message the simulator sends, with where each signal's value comes from."""

    message: Any  # cantools Message
    arbitration_id: int
    period_s: float
    next_due: float = 0.0
    defaults: dict[str, float] = field(default_factory=dict)
    limits: dict[str, tuple[float, float]] = field(default_factory=dict)
    channels: list[tuple[str, ChannelMap]] = field(default_factory=list)
    alarms: list[tuple[str, AlarmMap]] = field(default_factory=list)
    echoes: list[tuple[str, str]] = field(default_factory=list)  # (signal, command name)


@dataclass
class _Request:
    """What the simulated BMS last received for one command."""

    name: str
    spec: CommandMap
    tolerance: float
    echo: float
    last_rx: float | None = None  # monotonic time of the last non-idle cyclic setpoint

    def is_idle(self, value: float) -> bool:
        return self.spec.idle is not None and abs(value - self.spec.idle) <= self.tolerance


class DbcSimulator(DeviceSimulator):
    """A simulated BMS for a profile whose source is a DBC file or inline messages."""

    protocol: ClassVar[str] = "dbc"

    def __init__(self, device: DeviceConfig, profile: Profile, bus: BusConfig, model: BatteryModel) -> None:
        super().__init__(device, profile, bus, model)
        configure_model(profile, model)
        self.default_charge_voltage = model.charge_max_voltage
        self.offset = device.id_offset
        self.sent = 0
        self.received = 0
        self._bus: can.BusABC | None = None
        self._requests: dict[str, _Request] = {}
        self._incoming: dict[int, tuple[Any, list[_Request]]] = {}
        self._keepalive_keys: set[int] = set()
        self._last_keepalive = 0.0
        self._keepalive_warned = False
        self._outgoing = self._plan()

    # -- set-up -----------------------------------------------------------------------------

    def _plan(self) -> list[_Outgoing]:
        m = self.profile.model
        db = self.profile.db
        for name, cmd in m.commands.items():
            if cmd.message is None or cmd.signal is None:
                continue
            msg = self.profile.message(cmd.message)
            sig = msg.get_signal_by_name(cmd.signal)
            initial = cmd.idle if cmd.idle is not None else max(0.0, signal_limits(sig)[0])
            req = _Request(name, cmd, abs(sig.conversion.scale) / 2, initial)
            self._requests[name] = req
            key = frame_key(msg.frame_id + self.offset, msg.is_extended_frame)
            self._incoming.setdefault(key, (msg, []))[1].append(req)
        for spec in m.transmit:
            msg = self.profile.message(spec.message)
            self._keepalive_keys.add(frame_key(msg.frame_id + self.offset, msg.is_extended_frame))
        edge_sent = {c.message for c in m.commands.values()} | {t.message for t in m.transmit}
        return [self._outgoing_of(msg) for msg in db.messages if msg.name not in edge_sent]

    def _outgoing_of(self, msg: Any) -> _Outgoing:
        m = self.profile.model
        settings = m.messages.get(msg.name)
        if settings is not None and settings.period_ms is not None:
            period = settings.period_ms / 1000.0
        elif msg.cycle_time:
            period = msg.cycle_time / 1000.0
        else:
            period = DEFAULT_PERIOD_S
        out = _Outgoing(msg, msg.frame_id + self.offset, period)
        for sig in msg.signals:
            lo, hi = signal_limits(sig)
            out.limits[sig.name] = (lo, hi)
            initial = float(sig.initial) if isinstance(sig.initial, int | float) else 0.0
            out.defaults[sig.name] = min(max(initial, lo), hi)
        out.channels = [(n, c) for n, c in m.channels.items() if c.message == msg.name and c.signal]
        out.alarms = [(n, a) for n, a in m.alarms.items() if any(s.message == msg.name for s in a.sources)]
        out.echoes = [
            (c.ack.signal, n) for n, c in m.commands.items()
            if c.ack.type == "echo" and c.ack.message == msg.name and c.ack.signal
        ]
        return out

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            self._bus = can.Bus(**self.bus_config.can_kwargs())
        except Exception as e:
            raise BusError(
                f"simulator {self.device.name}: cannot open bus {self.bus_config.name}"
                f" ({self.bus_config.interface}:{self.bus_config.channel}): {e}"
            ) from e
        self._last_keepalive = time.monotonic()
        self._start_loop()

    def stop(self) -> None:
        self._stop_loop()
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.shutdown()

    def inject(self, fault: str) -> None:
        super().inject(fault)
        if fault == "overtemp":
            self.model.temperature = max(self.model.temperature, OVERTEMP_C)

    def keepalive_age(self) -> float | None:
        """Seconds since the last keepalive (or since start); None if the profile has none."""
        if not self._keepalive_keys:
            return None
        return time.monotonic() - self._last_keepalive

    # -- the simulator thread ---------------------------------------------------------------

    def _run(self) -> None:
        bus = self._bus
        assert bus is not None
        last = time.monotonic()
        for out in self._outgoing:
            out.next_due = last
        while not self._stop.is_set():
            now = time.monotonic()
            self.model.step(now - last)
            last = now
            self._watchdog(now)
            self._check_keepalive(now)
            self._send_due(bus, now)
            wait = min((o.next_due for o in self._outgoing), default=now + POLL_S) - time.monotonic()
            try:
                self._receive(bus, min(max(wait, 0.0), POLL_S))
            except can.CanError as e:
                if self._stop.is_set():
                    break
                log.warning("simulator %s: receive failed: %s", self.device.name, e)
                self._stop.wait(POLL_S)

    def _send_due(self, bus: can.BusABC, now: float) -> None:
        due = [o for o in self._outgoing if now >= o.next_due]
        if not due:
            return
        values = self.model.channels()
        for out in due:
            out.next_due += out.period_s
            if out.next_due <= now:  # fell behind (or silent): resume on the period grid from now
                out.next_due = now + out.period_s
            if self.silent:
                continue
            frame = can.Message(
                arbitration_id=out.arbitration_id,
                data=self.encode(out, values),
                is_extended_id=out.message.is_extended_frame,
            )
            try:
                bus.send(frame)
                self.sent += 1
            except can.CanError as e:
                log.debug("simulator %s: send of 0x%X failed: %s", self.device.name, out.arbitration_id, e)

    def encode(self, out: _Outgoing, channels: dict[str, float]) -> bytes:
        """The payload of one outgoing message from the model's channel values."""
        values = dict(out.defaults)
        for name, ch in out.channels:
            if name in channels and ch.signal is not None:
                values[ch.signal] = channel_to_signal(channels[name], ch)
        for name, alarm in out.alarms:
            self._set_alarm(values, out.message.name, alarm, self.model.alarm_level(name))
        for signal, command in out.echoes:
            values[signal] = self._requests[command].echo
        for name, (lo, hi) in out.limits.items():
            values[name] = min(max(values[name], lo), hi)
        data: bytes = out.message.encode(values, scaling=True, strict=False)
        return data

    @staticmethod
    def _set_alarm(values: dict[str, float], message: str, alarm: AlarmMap, level: int) -> None:
        """Raise the source(s) of the highest level not above `level` (level 0: none)."""
        candidates = [s for s in alarm.sources if s.level <= level]
        if not candidates:
            return
        top = max(s.level for s in candidates)
        for s in candidates:
            if s.level == top and s.message == message:
                values[s.signal] = float(s.value if s.value is not None else 1)

    # -- receiving commands -----------------------------------------------------------------

    def _receive(self, bus: can.BusABC, timeout: float) -> None:
        msg = bus.recv(timeout)
        handled = 0
        while msg is not None:
            self.received += 1
            if not self.silent:
                self._handle(msg)
            handled += 1
            if handled >= DRAIN:
                return
            msg = bus.recv(0.0)

    def _handle(self, frame: can.Message) -> None:
        key = frame_key(frame.arbitration_id, frame.is_extended_id)
        if key in self._keepalive_keys:
            self._last_keepalive = time.monotonic()
            self._keepalive_warned = False
        entry = self._incoming.get(key)
        if entry is None:
            return
        message, requests = entry
        try:
            decoded = message.decode(bytes(frame.data), decode_choices=False, scaling=True)
        except Exception as e:  # a wrong DLC or layout: a real device would ignore the frame
            log.debug("simulator %s: cannot decode %s: %s", self.device.name, message.name, e)
            return
        now = time.monotonic()
        for req in requests:
            value = float(decoded[req.spec.signal])
            req.echo = value
            if req.is_idle(value):
                req.last_rx = None
                self._revert(req.name)
                continue
            if req.spec.ttl_s is not None:
                req.last_rx = now
            self._apply(req.name, value)

    def _apply(self, name: str, value: float) -> None:
        action = _ACTIONS.get(name)
        if action is None:
            log.debug("simulator %s: command %s = %s has no effect here", self.device.name, name, value)
            return
        log.debug("simulator %s: %s = %s", self.device.name, name, value)
        action(self, value)

    def _revert(self, name: str) -> None:
        """A command's "no request": limits fall back to the defaults; state commands keep."""
        m = self.model
        if name == "SetChargeCurrent":
            m.set_charge_current(m.default_charge_max_current)
        elif name == "SetDischargeCurrent":
            m.set_discharge_current(m.default_discharge_max_current)
        elif name == "SetChargeVoltage":
            m.set_charge_voltage(self.default_charge_voltage)

    def _watchdog(self, now: float) -> None:
        for req in self._requests.values():
            if req.last_rx is None or req.spec.period_ms is None:
                continue
            if now - req.last_rx > WATCHDOG_PERIODS * req.spec.period_ms / 1000.0:
                log.info("simulator %s: %s stopped arriving; back to the default", self.device.name, req.name)
                req.last_rx = None
                if req.spec.idle is not None:
                    req.echo = req.spec.idle
                self._revert(req.name)

    def _check_keepalive(self, now: float) -> None:
        if not self._keepalive_keys or self._keepalive_warned:
            return
        if now - self._last_keepalive > KEEPALIVE_WARN_S:
            self._keepalive_warned = True
            log.warning("simulator %s: no keepalive for %.0f s (still sending)", self.device.name,
                        now - self._last_keepalive)


def configure_model(profile: Profile, model: BatteryModel) -> None:
    """Apply the profile's ``options.simulator`` to the model (size and default limits)."""
    options = profile.model.options.get("simulator", {})
    if not isinstance(options, dict):
        raise ProfileError(f"profile {profile.name}: options.simulator: expected an object, found {options!r}")
    for key, value in options.items():
        if key not in MODEL_OPTIONS:
            raise ProfileError(
                f"profile {profile.name}: options.simulator.{key}: unknown; expected one of"
                f" {', '.join(MODEL_OPTIONS)}"
            )
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise ProfileError(f"profile {profile.name}: options.simulator.{key}: expected a number, found {value!r}")
        setattr(model, key, int(value) if key == "cells" else float(value))
        if key in ("charge_max_current", "discharge_max_current"):
            setattr(model, "default_" + key, float(value))


_ACTIONS: dict[str, Callable[[DbcSimulator, float], None]] = {
    "SetChargeCurrent": lambda s, v: s.model.set_charge_current(v),
    "SetDischargeCurrent": lambda s, v: s.model.set_discharge_current(v),
    "SetChargeVoltage": lambda s, v: s.model.set_charge_voltage(v),
    "EnableBalancing": lambda s, v: s.model.set_balancing(bool(v)),
    "ResetFaults": lambda s, v: s.model.reset_faults() if v else None,
}
