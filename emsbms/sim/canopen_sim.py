"""The CANopen simulator: a CiA 418 battery module built on canopen.LocalNode with the profile's EDS.

What the library's LocalNode does not do, this simulator adds:

- NMT: boot-up, then pre-operational with heartbeats (the producer time is 0x1017); NMT start
  makes it operational. A device with ``nmt_master = false`` goes operational by itself, as many
  BMS do. Reset node / reset communication reboot it (and restore the default PDO mapping).
- TPDOs: sent while operational, every event timer (0x1800+n sub 5) of the mapping it holds
  now, filled from the battery model. A configuration tool may remap them over SDO at runtime
  (the CiA 301 procedure: disable, write the entries, enable); the next cycle uses the new map.
- SDO writes are checked against LowLimit/HighLimit (abort 0x06090032 too low, 0x06090031 too
  high) and device rules: the charge current limit may not exceed 0x6020sub3, the charge voltage
  limit may not be below the discharge voltage limit and vice versa. Accepted limits go to the
  battery model. Uploads of measured objects return the live model values.
- RPDO1 (current limits) is applied like SDO writes; when it stops for longer than its event
  timer (0x1400 sub 5) the limits fall back to their defaults.
- EMCY: 0x4210 while the over-temperature alarm is at level 2 (fault ``overtemp``), 0x5000 for
  the fault ``emcy``; 0x0000 (error reset) when they clear. ``silent`` drops everything it sends.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import can
import canopen
from canopen.objectdictionary import NUMBER_TYPES, ObjectDictionary, ODVariable
from canopen.pdo import PdoBase, PdoMap
from canopen.sdo.exceptions import SdoAbortedError

from emsbms.errors import BusError, ConfigError
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.canopen_codes import (
    ABORT_NO_OBJECT,
    ABORT_TOO_HIGH,
    ABORT_TOO_LOW,
    NMT_RESET_COMMUNICATION,
    NMT_RESET_NODE,
    register_bits,
)
from emsbms.protocols.canopen_od import device_options, is_nmt_master, load_od
from emsbms.sim.base import DeviceSimulator
from emsbms.sim.battery import BatteryModel
from emsbms.sim.dbc_sim import configure_model
from emsbms.site import BusConfig

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

log = logging.getLogger(__name__)

POLL_S = 0.01
OVERTEMP_C = 56.0
EMCY_FAULT_CODE = 0x5000  # device hardware: the injected "emcy" fault
EMCY_OVERTEMP_CODE = 0x4210  # excess device temperature
ABORT_NOT_MAPPABLE = 0x06040041

Reader = Callable[[BatteryModel], float]


def _status(m: BatteryModel) -> float:
    bits = (m.current > 0.5) | (m.current < -0.5) << 1 | m.balancing << 2 | bool(m.faults) << 3
    return float(bits)


# (index, subindex) -> the model value in the object's physical unit (raw = value / Factor)
LIVE: dict[tuple[int, int], Reader] = {
    (0x6000, 0): _status,
    (0x6010, 0): lambda m: m.temperature,
    (0x6020, 2): lambda m: m.capacity_ah,
    (0x6020, 4): lambda m: float(m.cells),
    (0x6060, 0): lambda m: m.voltage,
    (0x6070, 0): lambda m: m.charge_max_current if m.channels()["AllowCharge"] else 0.0,
    (0x6081, 0): lambda m: m.soc,
    (0x4802, 0): lambda m: m.channels()["AllowCharge"],
    (0x4803, 0): lambda m: m.channels()["AllowDischarge"],
    (0x4804, 0): lambda m: m.current,
    (0x4806, 0): lambda m: m.charge_max_current,
    (0x4807, 0): lambda m: m.discharge_max_current,
    (0x4808, 0): lambda m: m.channels()["MinCellTemperature"],
    (0x4809, 0): lambda m: m.channels()["MaxCellTemperature"],
    (0x480A, 0): lambda m: m.channels()["MinCellVoltage"] * 1000,
    (0x480B, 0): lambda m: m.channels()["MaxCellVoltage"] * 1000,
    (0x480C, 0): lambda m: m.charge_max_voltage,
    (0x480D, 0): lambda m: m.discharge_min_voltage,
    (0x480E, 0): lambda m: m.soh,
    (0x480F, 0): lambda m: float(m.balancing),
}


class _SimBus(can.BusABC):
    """The simulator's own bus connection: IDs shifted by id_offset; nothing goes out while silent."""

    def __init__(self, inner: can.BusABC, offset: int, silent: Callable[[], bool]) -> None:
        self._inner = inner
        self._offset = offset
        self._silent = silent
        self.channel_info = f"emsbms simulator on {inner.channel_info}"
        super().__init__(channel=getattr(inner, "channel", "sim"))

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self._silent():
            return
        if self._offset:
            can_id = msg.arbitration_id + self._offset
            msg = can.Message(arbitration_id=can_id, data=msg.data, is_extended_id=can_id > 0x7FF,
                              is_remote_frame=msg.is_remote_frame)
        self._inner.send(msg, timeout)

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        msg = self._inner.recv(timeout)
        if msg is None or msg.arbitration_id < self._offset:
            return None, False
        if self._offset:
            msg.arbitration_id -= self._offset
            msg.is_extended_id = msg.arbitration_id > 0x7FF
        return msg, False

    def shutdown(self) -> None:
        self._inner.shutdown()
        super().shutdown()


class CanopenSimulator(DeviceSimulator):
    """A simulated CiA 418 BMS: a canopen LocalNode on its own python-can connection."""

    protocol: ClassVar[str] = "canopen"
    FAULTS: ClassVar[tuple[str, ...]] = ("overtemp", "silent", "emcy")

    def __init__(self, device: DeviceConfig, profile: Profile, bus: BusConfig, model: BatteryModel) -> None:
        super().__init__(device, profile, bus, model)
        if device.node_id is None:
            raise ConfigError(f"simulator {device.name}: profile {profile.name} (canopen) needs node_id")
        assert profile.source_path is not None
        configure_model(profile, model)
        self.node_id = device.node_id
        self.auto_start = not is_nmt_master(device, device_options(device, profile))
        self.od: ObjectDictionary = load_od(profile.source_path, self.node_id)
        self.network: canopen.Network | None = None
        self.node: canopen.LocalNode | None = None
        self.emcy_sent: list[tuple[int, int]] = []  # (code, register) in the order sent
        self._lock = threading.RLock()
        self._mapping_dirty = False
        self._reboot: int | None = None
        self._due: dict[int, float] = {}
        self._emcy_active: dict[int, int] = {}
        self._last_rpdo: float | None = None
        self._rpdo_timeout_s = 0.0

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._thread is not None:
            return
        try:
            inner = can.Bus(**self.bus_config.can_kwargs())
        except Exception as e:
            raise BusError(f"simulator {self.device.name}: cannot open bus {self.bus_config.name}"
                           f" ({self.bus_config.interface}:{self.bus_config.channel}): {e}") from e
        network = canopen.Network(_SimBus(inner, self.device.id_offset, lambda: self.silent))
        network.NOTIFIER_CYCLE = POLL_S * 10  # how long stop() may wait for the receive thread
        node = canopen.LocalNode(self.node_id, self.od)
        network.add_node(node)
        untyped: Any = node  # canopen's callback registration is untyped
        untyped.add_read_callback(self._on_read)
        untyped.add_write_callback(self._on_write)
        network.subscribe(0, self._on_nmt)
        network.connect()
        self.network, self.node = network, node
        self._load_pdos()
        self._boot()
        self._start_loop()

    def stop(self) -> None:
        self._stop_loop()
        network, self.network = self.network, None
        if network is not None:
            network.disconnect()

    def inject(self, fault: str) -> None:
        super().inject(fault)
        if fault == "overtemp":
            with self._lock:
                self.model.temperature = max(self.model.temperature, OVERTEMP_C)

    @property
    def nmt_state(self) -> str:
        """The NMT state of the simulated node ('PRE-OPERATIONAL', 'OPERATIONAL', ...)."""
        assert self.node is not None
        return str(self.node.nmt.state)

    def _local(self) -> canopen.LocalNode:
        assert self.node is not None
        return self.node

    # -- NMT --------------------------------------------------------------------------------

    def _boot(self) -> None:
        """Boot-up message, then pre-operational (heartbeats start), then operational if autonomous."""
        nmt = self._local().nmt
        nmt.send_command(NMT_RESET_NODE)  # state 0: sends the boot-up frame
        nmt.state = "PRE-OPERATIONAL"  # starts the heartbeat producer (0x1017)
        if self.auto_start:
            nmt.state = "OPERATIONAL"
        log.info("simulator %s: node %d booted (%s)", self.device.name, self.node_id, nmt.state)

    def _on_nmt(self, can_id: int, data: bytearray, timestamp: float) -> None:
        if len(data) >= 2 and data[1] in (0, self.node_id) and data[0] in (NMT_RESET_NODE, NMT_RESET_COMMUNICATION):
            self._reboot = data[0]  # done on the simulator thread

    def _do_reboot(self, command: int) -> None:
        node = self._local()
        with self._lock:
            for index in list(node.data_store):
                if 0x1000 <= index < 0x2000 or command == NMT_RESET_NODE:
                    del node.data_store[index]
            if command == NMT_RESET_NODE:
                self.model.restore_default_limits()
            self._load_pdos()
        cast(Any, node.nmt).stop_heartbeat()
        self._boot()

    # -- object dictionary callbacks (the library's notifier thread) -----------------------

    def _on_read(self, index: int, subindex: int, od: ODVariable, **_: Any) -> int | None:
        if index == 0x1001:
            return self._register()
        reader = LIVE.get((index, subindex))
        if reader is None:
            return None
        with self._lock:
            return self._raw(od, reader(self.model))

    @staticmethod
    def _raw(od: ODVariable, value: float) -> int:
        raw = round(value / od.factor)
        if od.min is not None:
            raw = max(raw, od.min)
        if od.max is not None:
            raw = min(raw, od.max)
        size = len(od)
        signed = od.data_type in canopen.objectdictionary.SIGNED_TYPES
        low, high = (-(1 << (size - 1)), (1 << (size - 1)) - 1) if signed else (0, (1 << size) - 1)
        return int(min(max(raw, low), high))

    def _on_write(self, index: int, subindex: int, od: ODVariable, data: bytes, **_: Any) -> None:
        if 0x1400 <= index < 0x1C00:
            self._check_mapping_entry(index, subindex, data)
            self._mapping_dirty = True
            return
        if od.data_type not in NUMBER_TYPES:
            return
        raw = od.decode_raw(data)
        assert isinstance(raw, int | float)
        if od.min is not None and raw < od.min:
            raise SdoAbortedError(ABORT_TOO_LOW)
        if od.max is not None and raw > od.max:
            raise SdoAbortedError(ABORT_TOO_HIGH)
        with self._lock:
            self._apply(index, raw * od.factor)

    def _check_mapping_entry(self, index: int, subindex: int, data: bytes) -> None:
        if not (0x1600 <= index < 0x1800 or 0x1A00 <= index < 0x1C00) or subindex == 0:
            return
        entry = int.from_bytes(data[:4], "little")
        if entry == 0:
            return
        target = self.od.get_variable(entry >> 16, (entry >> 8) & 0xFF)
        if target is None:
            raise SdoAbortedError(ABORT_NO_OBJECT)
        if not target.pdo_mappable:
            raise SdoAbortedError(ABORT_NOT_MAPPABLE)

    def _apply(self, index: int, value: float) -> None:
        """Apply an accepted write (SDO or RPDO) to the model; raises SdoAbortedError on device rules."""
        m = self.model
        if index == 0x4806:
            if value > self._max_charge_current():
                raise SdoAbortedError(ABORT_TOO_HIGH)
            m.set_charge_current(value)
        elif index == 0x4807:
            m.set_discharge_current(value)
        elif index == 0x480C:
            if value < m.discharge_min_voltage:
                raise SdoAbortedError(ABORT_TOO_LOW)
            m.set_charge_voltage(value)
        elif index == 0x480D:
            if value > m.charge_max_voltage:
                raise SdoAbortedError(ABORT_TOO_HIGH)
            m.discharge_min_voltage = value
        elif index == 0x480F:
            m.set_balancing(bool(value))
        elif index == 0x4810 and value:
            m.reset_faults()

    def _max_charge_current(self) -> float:
        var = self.od.get_variable(0x6020, 3)
        return float(var.default) * var.factor if var is not None and var.default is not None else float("inf")

    def _on_rpdo(self, pdo_map: PdoMap) -> None:
        with self._lock:
            self._last_rpdo = time.monotonic()
            for var in pdo_map.map:
                try:
                    raw = var.raw
                    assert isinstance(raw, int | float)
                    od = var.od
                    if (od.min is not None and raw < od.min) or (od.max is not None and raw > od.max):
                        raise SdoAbortedError(ABORT_TOO_HIGH if od.max is not None and raw > od.max else ABORT_TOO_LOW)
                    self._apply(od.index, raw * od.factor)
                except Exception as e:  # a refused or undecodable value: the device ignores it
                    log.info("simulator %s: RPDO value for 0x%04X ignored (%s)", self.device.name, var.od.index, e)

    # -- PDOs -------------------------------------------------------------------------------

    def _load_pdos(self) -> None:
        """(Re)read the TPDO and RPDO configuration the node holds now."""
        node = self._local()
        self._mapping_dirty = False
        cast(Any, node.tpdo).read(from_od=False)
        self._due = {}
        rpdo = node.rpdo
        cast(Any, rpdo).read(from_od=False)
        for m in _maps(rpdo):
            if m.enabled and self._on_rpdo not in m.callbacks:
                m.add_callback(self._on_rpdo)
        first = _maps(rpdo)[0] if _maps(rpdo) else None
        self._rpdo_timeout_s = (first.event_timer or 0) / 1000 if first is not None else 0.0

    def remap_tpdo(self, number: int, entries: list[tuple[int, int, int]]) -> None:
        """Remap TPDO `number` to (index, subindex, bits) entries, as a configuration tool would."""
        sdo = self._local().sdo
        com, mapping = 0x1800 + number - 1, 0x1A00 + number - 1
        cob = int.from_bytes(sdo.upload(com, 1), "little")
        sdo.download(com, 1, (cob | 1 << 31).to_bytes(4, "little"))
        sdo.download(mapping, 0, b"\x00")
        for i, (index, sub, bits) in enumerate(entries, 1):
            sdo.download(mapping, i, (index << 16 | sub << 8 | bits).to_bytes(4, "little"))
        sdo.download(mapping, 0, bytes([len(entries)]))
        sdo.download(com, 1, (cob & 0x7FFFFFFF).to_bytes(4, "little"))

    def _send_tpdos(self, now: float) -> None:
        node = self._local()
        if node.nmt.state != "OPERATIONAL":
            return
        for m in _maps(node.tpdo):
            if not m.enabled or m.cob_id is None or not m.event_timer or (m.trans_type or 0) < 254 or not m.map:
                continue
            due = self._due.setdefault(m.cob_id, now)
            if now < due:
                continue
            self._due[m.cob_id] = due + m.event_timer / 1000 if due + m.event_timer / 1000 > now else now + 0.001
            self._fill(m)
            m.transmit()

    def _fill(self, m: PdoMap) -> None:
        node = self._local()
        with self._lock:
            for var in m.map:
                reader = LIVE.get((var.od.index, var.od.subindex))
                if reader is not None:
                    var.raw = self._raw(var.od, reader(self.model))
                else:
                    var.data = node.get_data(var.od.index, var.od.subindex)

    # -- EMCY -------------------------------------------------------------------------------

    def _register(self) -> int:
        bits = 0
        for code in self._emcy_active:
            bits |= register_bits(code)
        return bits

    def _emcy(self) -> None:
        wanted: dict[int, int] = {}
        with self._lock:
            if "emcy" in self.faults:
                wanted[EMCY_FAULT_CODE] = register_bits(EMCY_FAULT_CODE)
            if self.model.alarm_level("OverTemperature") >= 2:
                wanted[EMCY_OVERTEMP_CODE] = register_bits(EMCY_OVERTEMP_CODE)
        if wanted == self._emcy_active:
            return
        emcy = self._local().emcy
        cleared = self._emcy_active.keys() - wanted.keys()
        if cleared:
            self._emcy_active = {}
            emcy.reset(self._register_of(wanted))
            self.emcy_sent.append((0, self._register_of(wanted)))
        for code in wanted:
            if code not in self._emcy_active:
                self._emcy_active[code] = wanted[code]
                emcy.send(code, self._register())
                self.emcy_sent.append((code, self._register()))

    @staticmethod
    def _register_of(codes: dict[int, int]) -> int:
        bits = 0
        for b in codes.values():
            bits |= b
        return bits

    # -- the simulator thread ---------------------------------------------------------------

    def _run(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(POLL_S):
            now = time.monotonic()
            with self._lock:
                self.model.step(now - last)
                if "overtemp" in self.faults:
                    self.model.temperature = max(self.model.temperature, OVERTEMP_C)
            last = now
            try:
                self._cycle(now)
            except Exception:  # keep simulating whatever one cycle did
                log.exception("simulator %s: cycle failed", self.device.name)

    def _cycle(self, now: float) -> None:
        if self._reboot is not None:
            command, self._reboot = self._reboot, None
            self._do_reboot(command)
        if self._mapping_dirty:
            with self._lock:
                self._load_pdos()
        if self._last_rpdo is not None and self._rpdo_timeout_s and now - self._last_rpdo > self._rpdo_timeout_s:
            with self._lock:
                self._last_rpdo = None
                self.model.restore_default_limits()
            log.info("simulator %s: RPDO1 stopped: current limits back to defaults", self.device.name)
        self._emcy()
        self._send_tpdos(now)


def _maps(pdo: PdoBase) -> list[PdoMap]:
    assert pdo.map is not None
    return list(pdo.map.values())
