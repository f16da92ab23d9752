"""The J1939 HVESS simulator: a BMS ECU built on can-j1939, on its own python-can connection.

It claims an address with a realistic NAME (the device's ``j1939_name``/``source_address``, else
the profile's ``options.demo_device``), sends the HVESS parameter groups at the profile's periods
from the battery model, answers requests (HVES1CFG and HVES1HIST are 16 bytes: BAM through the
library's transport protocol), sends DM1 every second and on change (BAM with more than one DTC),
clears DTCs on DM11 with an ACK, applies Proprietary A limit setpoints with an ACK, and obeys
HVES1C1 (the bus connection status and the contactors follow the connect command).

Faults:

* ``overtemp``: DTC 520200 FMI 0 (red stop lamp) while injected; the pack heats up too;
* ``silent``: nothing is sent, not even address claims or answers;
* ``dtc2``: two latched warning DTCs (amber lamp), so DM1 goes by BAM; DM11 clears them;
* ``nack_dm11``: DM11 is refused with a NACK;
* ``conflict``: another ECU with a lower (stronger) NAME claims the BMS's address, so the BMS
  moves to the next address (an arbitrary-address-capable NAME keeps its identity).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import can
import j1939

from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.j1939 import device_addressing, message_pgn, profile_options
from emsbms.protocols.j1939_dm import AckControl, Dtc, LampState, ack_payload, dm1_payload
from emsbms.protocols.j1939_names import (
    ADDRESS_GLOBAL,
    PGN_DM1,
    PGN_DM11,
    PGN_PROPRIETARY_A,
    make_name,
)
from emsbms.protocols.j1939_stack import GuardedCA
from emsbms.sim.base import DeviceSimulator
from emsbms.sim.battery import BatteryModel
from emsbms.site import BusConfig

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = 0xF3
DEFAULT_NAME = make_name(arbitrary_address_capable=1, industry_group=1, function=160, manufacturer_code=741,
                         identity_number=0x1F3A)
POLL_S = 0.005
DM1_PERIOD_S = 1.0
CONNECT_DELAY_S = 0.1  # connecting -> connected, disconnecting -> disconnected
OVERTEMP = Dtc(520200, 0)
DTC2 = (Dtc(520201, 16), Dtc(520202, 18))
PGN_HVES1C1 = 0x1B00


class BusConnection:
    """HVES1S1 bus connection status values."""

    DISCONNECTED = 0
    CONNECTED = 1
    CONNECTING = 2
    DISCONNECTING = 3


class _SimEcu(j1939.ElectronicControlUnit):  # type: ignore[misc]
    """can-j1939's ECU with a mute switch (the ``silent`` fault)."""

    muted = False

    def connect(self, *args: Any, **kwargs: Any) -> Any:
        """As the library's, with a short notifier timeout so that stopping is quick."""
        self._bus = can.Bus(*args, **kwargs)
        self._notifier = can.Notifier(self._bus, self._listeners, 0.05)
        return self._bus

    def send_message(self, can_id: int, extended_id: bool, data: Any, fd_format: bool = False) -> None:
        if self.muted or self._bus is None:
            return
        super().send_message(can_id, extended_id, data, fd_format)


@dataclass
class _Periodic:
    name: str
    pgn: int
    priority: int
    period_s: float
    next_s: float = 0.0


class J1939Simulator(DeviceSimulator):
    """A simulated HVESS BMS that is a J1939 ECU."""

    protocol: ClassVar[str] = "j1939"
    FAULTS: ClassVar[tuple[str, ...]] = ("overtemp", "silent", "dtc2", "nack_dm11", "conflict")

    def __init__(self, device: DeviceConfig, profile: Profile, bus: BusConfig, model: BatteryModel) -> None:
        super().__init__(device, profile, bus, model)
        opts = profile_options(profile)
        demo = opts.demo_device
        name, address = device_addressing(device)
        self.preferred_address = address if address is not None else (demo.source_address if demo else DEFAULT_ADDRESS)
        self.name = name if name is not None else (demo.j1939_name if demo else DEFAULT_NAME)
        for key, value in opts.simulator.model_dump(exclude_none=True).items():
            setattr(model, key, value)
            if key in ("charge_max_current", "discharge_max_current"):
                setattr(model, "default_" + key, value)
        self._messages = {m.name: m for m in profile.db.messages}
        self._by_pgn = {message_pgn(m.frame_id): m for m in profile.db.messages}
        self._periodic = [
            _Periodic(name, message_pgn(self._messages[name].frame_id), (self._messages[name].frame_id >> 26) & 7,
                      s.period_ms / 1000)
            for name, s in profile.model.messages.items() if s.period_ms and not s.on_request
        ]
        self._lock = threading.RLock()
        self._ecu: _SimEcu | None = None
        self.ca: GuardedCA | None = None
        self._intruder: tuple[_SimEcu, GuardedCA] | None = None
        self._long: deque[tuple[int, int, list[int]]] = deque()  # (pgn, priority, data) waiting for TP
        self.bus_connection = BusConnection.CONNECTED
        self._transition_s = 0.0
        self._latched: dict[tuple[int, int], Dtc] = {}
        self._occurrences: dict[tuple[int, int], int] = {}
        self._dm1_sent: tuple[Dtc, ...] | None = None
        self._next_dm1 = 0.0
        self._energy = [0.0, 0.0]  # discharged, charged kWh
        self.received: Counter[int] = Counter()  # command frames handled, by PGN

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        ecu = _SimEcu()
        try:
            ecu.connect(**self.bus_config.can_kwargs())
        except Exception:
            ecu.stop()
            raise
        self._ecu = ecu
        self.ca = GuardedCA(self.name, self.preferred_address, lambda address, name: None)
        ecu.add_ca(controller_application=self.ca)
        self.ca.subscribe(self._on_message)
        self.ca.subscribe_request(self._on_request)
        self.ca.start()
        self._start_loop()

    def stop(self) -> None:
        self._stop_loop()
        self._drop_intruder()
        if self._ecu is not None:
            _shutdown(self._ecu, self.ca)
            self._ecu = None

    @property
    def address(self) -> int | None:
        """The address the simulated BMS holds now (None while claiming)."""
        return self.ca.address if self.ca is not None else None

    # -- faults ------------------------------------------------------------------------------

    def inject(self, fault: str) -> None:
        super().inject(fault)
        with self._lock:
            if fault == "silent" and self._ecu is not None:
                self._ecu.muted = True
            elif fault == "dtc2":
                for d in DTC2:
                    self._latch(d)
            elif fault == "overtemp":
                self._latch(OVERTEMP)
            elif fault == "conflict":
                self._start_intruder()

    def clear(self, fault: str) -> None:
        super().clear(fault)
        with self._lock:
            if fault == "silent" and self._ecu is not None:
                self._ecu.muted = False
            elif fault == "overtemp":
                self._latched.pop((OVERTEMP.spn, OVERTEMP.fmi), None)
            elif fault == "dtc2":
                for d in DTC2:
                    self._latched.pop((d.spn, d.fmi), None)
            elif fault == "conflict":
                self._drop_intruder()

    def _latch(self, dtc: Dtc) -> None:
        key = (dtc.spn, dtc.fmi)
        if key not in self._latched:
            self._occurrences[key] = self._occurrences.get(key, 0) + 1
            self._latched[key] = Dtc(dtc.spn, dtc.fmi, min(self._occurrences[key], 126))

    def _start_intruder(self) -> None:
        """Another ECU with a stronger NAME claims our address (the BMS then moves on)."""
        if self._intruder is not None or self.ca is None:
            return
        target = self.ca.address if self.ca.address is not None else self.preferred_address
        ecu = _SimEcu()
        ecu.connect(**self.bus_config.can_kwargs())
        ca = GuardedCA(make_name(industry_group=1, function=160, manufacturer_code=741, identity_number=1),
                       target, lambda address, name: None)
        ecu.add_ca(controller_application=ca)
        ca.start()
        self._intruder = (ecu, ca)

    def _drop_intruder(self) -> None:
        if self._intruder is not None:
            _shutdown(*self._intruder)
            self._intruder = None

    # -- the loop ----------------------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            try:
                with self._lock:
                    self._step(now - last, now)
                    last = now
                    if self.silent or self.ca is None or self.ca.address is None:
                        continue
                    self._send_due(now)
            except Exception:
                log.exception("simulator %s: cycle failed (continuing)", self.device.name)

    def _step(self, dt: float, now: float) -> None:
        self.model.step(dt)
        if self.bus_connection != BusConnection.CONNECTED:
            self.model.current = 0.0
        power = self.model.voltage * self.model.current / 1000 * dt / 3600
        self._energy[0 if power < 0 else 1] += abs(power)
        if self.bus_connection in (BusConnection.CONNECTING, BusConnection.DISCONNECTING) and now >= self._transition_s:
            self._set_connection(
                BusConnection.CONNECTED if self.bus_connection == BusConnection.CONNECTING
                else BusConnection.DISCONNECTED, now)
        if "overtemp" in self.faults:
            self._latch(OVERTEMP)

    def _send_due(self, now: float) -> None:
        for p in self._periodic:
            if now >= p.next_s:
                p.next_s = max(p.next_s + p.period_s, now) if p.next_s else now + p.period_s
                self._send(p.pgn, p.priority, self._encode(p.name))
        dtcs = tuple(sorted(self._latched.values()))
        if now >= self._next_dm1 or dtcs != self._dm1_sent:
            self._next_dm1 = now + DM1_PERIOD_S
            self._dm1_sent = dtcs
            self._queue_or_send(PGN_DM1, 6, self._dm1(dtcs))
        if self._long:
            pgn, priority, data = self._long[0]
            if self._send(pgn, priority, data):
                self._long.popleft()

    def _send(self, pgn: int, priority: int, data: list[int], destination: int = ADDRESS_GLOBAL) -> bool:
        assert self.ca is not None
        pf, ps = (pgn >> 8) & 0xFF, pgn & 0xFF
        if pf < 240:
            ps = destination
        try:
            return bool(self.ca.send_pgn((pgn >> 16) & 1, pf, ps, priority, data))
        except RuntimeError:  # lost the address meanwhile
            return False

    def _queue_or_send(self, pgn: int, priority: int, data: list[int]) -> None:
        """Single frames go now; longer ones wait their turn (one BAM at a time per sender)."""
        if len(data) <= 8:
            self._send(pgn, priority, data)
            return
        for i, (queued, _, _) in enumerate(self._long):
            if queued == pgn:  # still waiting (a started transfer leaves the queue): send the newest
                self._long[i] = (pgn, 7, data)
                return
        self._long.append((pgn, 7, data))

    def _dm1(self, dtcs: tuple[Dtc, ...]) -> list[int]:
        red = any(d.fmi in (0, 1) for d in dtcs)
        amber = bool(dtcs) and not red
        lamps = {"RedStopLamp": LampState.ON if red else LampState.OFF,
                 "AmberWarningLamp": LampState.ON if amber else LampState.OFF}
        return dm1_payload(lamps, dtcs)

    # -- values ------------------------------------------------------------------------------

    def _encode(self, message_name: str) -> list[int]:
        msg = self._messages[message_name]
        values = _VALUES.get(message_name, _none)(self)
        clamped = {}
        for sig in msg.signals:
            v = values.get(sig.name)
            if v is None:  # not available
                clamped[sig.name] = ((1 << sig.length) - 1) * sig.conversion.scale + sig.conversion.offset
                continue
            lo = sig.minimum if sig.minimum is not None else v
            hi = sig.maximum if sig.maximum is not None else v
            clamped[sig.name] = min(max(v, lo), hi)
        return list(msg.encode(clamped, padding=True, strict=False))

    def _set_connection(self, status: int, now: float) -> None:
        if status == self.bus_connection:
            return
        self.bus_connection = status
        self._transition_s = now + CONNECT_DELAY_S
        for p in self._periodic:
            if p.name == "HVES1S1":
                p.next_s = now  # HVES1S1 is also sent on change

    # -- received ----------------------------------------------------------------------------

    def _on_message(self, priority: int, pgn: int, sa: int, timestamp: float, data: Any) -> None:
        if self.silent:
            return
        raw = bytes(data)
        with self._lock:
            if pgn == PGN_HVES1C1 and raw:
                self.received[pgn] += 1
                self._connect_command(raw[0] & 3, time.monotonic())
            elif pgn == PGN_PROPRIETARY_A and len(raw) >= 6:
                self.received[pgn] += 1
                self._setpoints(raw)
                self._send(0xE800, 6, ack_payload(AckControl.ACK, PGN_PROPRIETARY_A, sa))

    def _connect_command(self, command: int, now: float) -> None:
        if command in (1, 2) and self.bus_connection in (BusConnection.DISCONNECTED, BusConnection.DISCONNECTING):
            self._set_connection(BusConnection.CONNECTING, now)
        elif command == 0 and self.bus_connection in (BusConnection.CONNECTED, BusConnection.CONNECTING):
            self._set_connection(BusConnection.DISCONNECTING, now)

    def _setpoints(self, raw: bytes) -> None:
        actions: dict[str, Callable[[float], None]] = {
            "ChargeCurrentSetpoint": self.model.set_charge_current,
            "DischargeCurrentSetpoint": self.model.set_discharge_current,
            "ChargeVoltageSetpoint": self.model.set_charge_voltage,
        }
        msg = self._by_pgn[PGN_PROPRIETARY_A]
        values = msg.decode(raw.ljust(msg.length, b"\xff"), decode_choices=False)
        raws = msg.decode(raw.ljust(msg.length, b"\xff"), decode_choices=False, scaling=False)
        for sig in msg.signals:
            action = actions.get(sig.name)
            if action is not None and raws[sig.name] < 0xFB00:  # 0xFFFF: not available = no change
                action(float(values[sig.name]))

    def _on_request(self, src: int, dest: int, pgn: int) -> None:
        if self.silent:
            return
        with self._lock:
            if pgn == PGN_DM11:
                self.received[pgn] += 1
                self._dm11(src)
            elif pgn == PGN_DM1:
                self._queue_or_send(PGN_DM1, 6, self._dm1(tuple(sorted(self._latched.values()))))
            elif pgn in self._by_pgn and self._by_pgn[pgn].senders != ["EMS"]:
                msg = self._by_pgn[pgn]
                self._queue_or_send(pgn, (msg.frame_id >> 26) & 7, self._encode(msg.name))
            elif dest != ADDRESS_GLOBAL:
                self._send(0xE800, 6, ack_payload(AckControl.NACK, pgn, src))

    def _dm11(self, src: int) -> None:
        if "nack_dm11" in self.faults:
            self._send(0xE800, 6, ack_payload(AckControl.NACK, PGN_DM11, src))
            return
        self._latched.clear()
        self.faults.discard("dtc2")
        self.model.reset_faults()
        self._send(0xE800, 6, ack_payload(AckControl.ACK, PGN_DM11, src))


def _shutdown(ecu: _SimEcu, ca: Any) -> None:
    """Stop a CA's timers, the ECU's notifier and bus, and its job thread."""
    try:
        if ca is not None:
            ca.stop()
        if ecu._bus is not None:
            ecu.disconnect()
    finally:
        ecu.stop()


def _none(s: J1939Simulator) -> dict[str, float | None]:
    return {}


def _d1(s: J1939Simulator) -> dict[str, float | None]:
    m = s.model
    return {"HVESSAvailableDischargePower": m.voltage * m.discharge_max_current / 1000,
            "HVESSAvailableChargePower": m.voltage * m.charge_max_current / 1000,
            "HVESSVoltageLevel": m.voltage, "HVESSCurrent": m.current}


def _d2(s: J1939Simulator) -> dict[str, float | None]:
    c = s.model.channels()
    return {"HVESSFastUpdateSoC": c["Soc"], "HVESSHighestCellVoltage": c["MaxCellVoltage"],
            "HVESSLowestCellVoltage": c["MinCellVoltage"], "HVESSCellVoltageDiffStatus": 0}


def _d3(s: J1939Simulator) -> dict[str, float | None]:
    c = s.model.channels()
    return {"HVESSHighestCellTemperature": c["MaxCellTemperature"], "HVESSLowestCellTemperature":
            c["MinCellTemperature"], "HVESSAverageCellTemperature": c["Temperature"], "HVESSCellTempDiffStatus": 0}


def _d4(s: J1939Simulator) -> dict[str, float | None]:
    m = s.model
    return {"HVESSDischargeCapacity": m.capacity_ah * m.soc / 100, "HVESSChargeCapacity":
            m.capacity_ah * (100 - m.soc) / 100, "HVESSCellBalancingCount": 0}


def _d5(s: J1939Simulator) -> dict[str, float | None]:
    m = s.model
    return {"HVESSDischargeCurrentLimit": -m.discharge_max_current, "HVESSChargeCurrentLimit": m.charge_max_current,
            "HVESSMinimumCellSoC": max(0.0, m.soc - 0.5), "HVESSMaximumCellSoC": min(100.0, m.soc + 0.5)}


def _d6(s: J1939Simulator) -> dict[str, float | None]:
    m = s.model
    connected = s.bus_connection == BusConnection.CONNECTED
    return {"HVESSBusVoltage": m.voltage if connected else 0.0, "HVESSIgnitionVoltage": 24.0,
            "HVESSIntakeCoolantTemperature": 20.0, "HVESSOutletCoolantTemperature": 24.0,
            "HVESSElectronicsTemperature": 35.0, "HVESSPackTemperature": m.temperature}


def _s1(s: J1939Simulator) -> dict[str, float | None]:
    closed = 1.0 if s.bus_connection in (BusConnection.CONNECTED, BusConnection.DISCONNECTING) else 0.0
    return {"HVESSPositiveContactorState": closed, "HVESSNegativeContactorState": closed,
            "HVESSDisconnectForewarning": 0, "HVESSPrechargeRelayState": 0, "HVESSHVILStatus": 0,
            "HVESSSoCStatus": 0, "HVESSCellBalanceStatus": 0, "HVESSBalancingActive": float(s.model.balancing),
            "HVESSBusConnectionStatus": s.bus_connection, "HVESSOperationalStatus": 0}


def _d7(s: J1939Simulator) -> dict[str, float | None]:
    return {"HVESSDischargeEnergy": s._energy[0], "HVESSChargeEnergy": s._energy[1],
            "HVESSMaxChargeVoltageLimit": s.model.charge_max_voltage}


def _s2(s: J1939Simulator) -> dict[str, float | None]:
    m = s.model
    return {"DischargeLimitedBySoC": float(m.soc < 5), "DischargeLimitedByTemperature": float(m.temperature > 45),
            "DischargeLimitedByCellVoltage": 0, "DischargeLimitedByCurrent": 0,
            "ChargeLimitedBySoC": float(m.soc > 95), "ChargeLimitedByTemperature": float(m.temperature > 45),
            "ChargeLimitedByCellVoltage": 0, "ChargeLimitedByCurrent": 0}


def _cfg(s: J1939Simulator) -> dict[str, float | None]:
    n = s.model.cells
    return {"HVESSNominalVoltage": n * 3.2, "HVESSRecMaxOperatingVoltage": s.model.charge_max_voltage,
            "HVESSRecMinOperatingVoltage": s.model.discharge_min_voltage, "HVESSRecMaxSoC": 100.0,
            "HVESSRecMinSoC": 5.2, "HVESSMaxOperatingTemperature": 55.0, "HVESSMinOperatingTemperature": -20.0,
            "HVESSCellMaxVoltageLimit": 3.65, "HVESSCellMinVoltageLimit": 2.5}


def _hist(s: J1939Simulator) -> dict[str, float | None]:
    return {"HVESSStateOfHealth": s.model.soh, "HVESSContactorOpenUnderLoadCount": 3,
            "HVESSTotalEnergyThroughput": 12345.6, "HVESSTotalAccumulatedCharge": 45678.9}


_VALUES: dict[str, Callable[[J1939Simulator], dict[str, float | None]]] = {
    "HVES1D1": _d1, "HVES1D2": _d2, "HVES1D3": _d3, "HVES1D4": _d4, "HVES1D5": _d5, "HVES1D6": _d6,
    "HVES1S1": _s1, "HVES1D7": _d7, "HVES1S2": _s2, "HVES1CFG": _cfg, "HVES1HIST": _hist,
}
