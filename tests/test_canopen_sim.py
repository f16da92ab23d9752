"""The CANopen simulator and the edge end to end on python-can virtual buses.

SDO abort paths, NMT, heartbeat loss and recovery, EMCY, PDO remapping at runtime, identity,
fresh reads and commands. Timing assertions use wait-for-condition loops with generous limits.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import can
import canopen
import pytest
from canopen.sdo.exceptions import SdoAbortedError

from emsbms import CommandStatus, CommState, Edge, EmsbmsError, ReadTimeout
from emsbms.profile.loader import load_profile
from emsbms.protocols.canopen import SdoAbort
from emsbms.protocols.canopen_codes import NmtState
from emsbms.sim.canopen_sim import CanopenSimulator
from emsbms.sim.runner import Simulation
from emsbms.site import Site
from emsbms.types import AlarmLevel, Quality
from tests.conftest import virtual_site
from tests.conftest import wait as wait_for

EDS = str(load_profile("cia418-bms").source_path)



def site_of(node_id: int = 1, tag: str | None = None, **device: Any) -> Site:
    return virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "cia418-bms",
                                    "node_id": node_id, **device}], tag=tag)


@contextmanager
def running(site: Site, edge_site: Site | None = None) -> Iterator[tuple[CanopenSimulator, Edge]]:
    with Simulation(site) as simulation, Edge(edge_site or site) as edge:
        sim = simulation.simulators["bms_0"]
        assert isinstance(sim, CanopenSimulator)
        yield sim, edge


@contextmanager
def tool_on(site: Site, node_id: int = 1) -> Iterator[canopen.RemoteNode]:
    """A configuration tool (an SDO client and NMT master) on the device's bus."""
    network = canopen.Network()
    network.NOTIFIER_CYCLE = 0.1  # quick disconnect
    network.connect(interface="virtual", channel=site.bus("can0").channel)
    try:
        node = network.add_node(node_id, EDS)
        node.sdo.RESPONSE_TIMEOUT = 2.0
        yield node
    finally:
        network.disconnect()


def value(edge: Edge, name: str) -> object:
    return edge.snapshot().value(f"bms_0/{name}")


def fresh_after(edge: Edge, name: str, since_us: int, timeout: float = 5.0) -> Any:
    return edge.read(f"bms_0/{name}", timeout=timeout, after_us=since_us).value


def now_us() -> int:
    return time.time_ns() // 1000


# -- the simulated device alone -----------------------------------------------------------------------


def test_sdo_abort_codes_of_the_simulated_device() -> None:
    site = site_of()
    with Simulation(site) as simulation, tool_on(site) as tool:
        sim = simulation.simulators["bms_0"]
        cases = [
            (lambda: tool.sdo.download(0x6081, 0, b"\x32"), 0x06010002),  # read-only
            (lambda: tool.sdo.upload(0x5555, 0), 0x06020000),  # no such object
            (lambda: tool.sdo.upload(0x6020, 9), 0x06090011),  # no such sub-index
            (lambda: tool.sdo.download(0x4806, 0, (2500).to_bytes(2, "little")), 0x06090031),  # above HighLimit
            (lambda: tool.sdo.download(0x480C, 0, (300).to_bytes(2, "little")), 0x06090032),  # below LowLimit
            (lambda: tool.sdo.download(0x4806, 0, (1500).to_bytes(2, "little")), 0x06090031),  # above 0x6020sub3
            (lambda: tool.sdo.download(0x480C, 0, (420).to_bytes(2, "little")), 0x06090032),  # below the DVL
        ]
        for call, code in cases:
            with pytest.raises(SdoAbortedError) as e:
                call()
            assert e.value.code == code
        tool.sdo.download(0x4806, 0, (600).to_bytes(2, "little"))
        assert sim.model.charge_max_current == 60.0
        assert int.from_bytes(tool.sdo.upload(0x4806, 0), "little") == 600
        assert tool.sdo.upload(0x6081, 0)[0] == round(sim.model.soc)


def test_nmt_boot_up_pre_operational_then_operational_on_start() -> None:
    site = site_of(node_id=4, nmt_master=True)  # the device waits for an NMT master
    bus = site.bus("can0")
    with can.Bus(interface="virtual", channel=bus.channel) as listener, Simulation(site) as simulation, \
            tool_on(site, 4) as tool:
        sim = simulation.simulators["bms_0"]
        assert isinstance(sim, CanopenSimulator)
        seen: list[can.Message] = []

        def collect(until: Callable[[], bool]) -> None:
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and not until():
                m = listener.recv(0.05)
                if m is not None:
                    seen.append(m)

        collect(lambda: sum(1 for m in seen if m.arbitration_id == 0x704) >= 2)
        states = [m.data[0] for m in seen if m.arbitration_id == 0x704]
        assert states[:2] == [0x00, 0x7F]  # boot-up, then pre-operational heartbeats
        assert not [m for m in seen if m.arbitration_id == 0x184]  # no TPDO before NMT start
        tool.nmt.send_command(0x01)
        collect(lambda: any(m.arbitration_id == 0x184 for m in seen))
        assert sim.nmt_state == "OPERATIONAL"
        assert [m for m in seen if m.arbitration_id == 0x184]


# -- the edge with the simulated device ----------------------------------------------------------------


def test_values_identity_and_polled_objects_reach_the_edge() -> None:
    with running(site_of()) as (sim, edge):
        assert fresh_after(edge, "Soc", edge.started_us) == pytest.approx(sim.model.soc, abs=1)
        assert fresh_after(edge, "Voltage", edge.started_us) == pytest.approx(sim.model.voltage, abs=0.2)
        assert fresh_after(edge, "Capacity", edge.started_us) == 100.0  # 0x6020sub2 by SDO: in no TPDO
        assert fresh_after(edge, "VendorId", edge.started_us) == 0x454D5342
        assert fresh_after(edge, "DeviceType", edge.started_us) == 0x1A2
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)
        assert wait_for(lambda: value(edge, "NmtState") is NmtState.OPERATIONAL)  # from its first heartbeat
        assert value(edge, "Alarm/Identity") is AlarmLevel.OK


def test_commands_by_sdo_with_abort_codes_as_rejections() -> None:
    with running(site_of()) as (sim, edge):
        edge.read("bms_0/VendorId", timeout=5)  # configured
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)  # commands need OK
        ok = edge.write("bms_0/SetChargeCurrent", 60.0, timeout=3)
        assert ok.status is CommandStatus.ACKED, ok.detail
        assert sim.model.charge_max_current == 60.0
        t = now_us()
        assert wait_for(lambda: fresh_after(edge, "ChargeMaxCurrent", t) == 60.0)
        high = edge.write("bms_0/SetChargeCurrent", 150.0, timeout=3)  # above the pack's 100 A (0x6020sub3)
        assert high.status is CommandStatus.REJECTED and "0x06090031 value too high" in high.detail
        low = edge.write("bms_0/SetChargeVoltage", 42.0, timeout=3)  # below the discharge voltage limit
        assert low.status is CommandStatus.REJECTED and "0x06090032 value too low" in low.detail
        assert sim.model.charge_max_voltage == 56.8
        sim.od[0x480F].access_type = "ro"  # firmware that does not allow balancing control
        ro = edge.write("bms_0/EnableBalancing", 1, timeout=3)
        assert ro.status is CommandStatus.REJECTED and "0x06010002 write to a read-only object" in ro.detail
        del sim.od[0x4810]  # firmware without the fault-reset object
        missing = edge.write("bms_0/ResetFaults", 1, timeout=3)
        assert missing.status is CommandStatus.REJECTED and "0x06020000 object does not exist" in missing.detail


def test_limit_setpoint_is_held_by_rpdo() -> None:
    site = site_of()
    with can.Bus(interface="virtual", channel=site.bus("can0").channel) as listener, running(site) as (sim, edge):
        edge.read("bms_0/VendorId", timeout=5)
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)  # commands need OK
        result = edge.write("bms_0/SetDischargeCurrent", 70.0, timeout=3)
        assert result.status is CommandStatus.ACKED, result.detail
        deadline = time.monotonic() + 5
        rpdo = None
        while time.monotonic() < deadline and rpdo is None:
            m = listener.recv(0.1)
            if m is not None and m.arbitration_id == 0x201:
                rpdo = m
        assert rpdo is not None, "no RPDO1 repeat of the setpoint"
        assert bytes(rpdo.data)[2:4] == (700).to_bytes(2, "little")  # 0x4807 = 70.0 A
        assert sim.model.discharge_max_current == 70.0


def test_fresh_read_uploads_the_object_now() -> None:
    with running(site_of()) as (sim, edge):
        edge.read("bms_0/Capacity", timeout=5)  # configured, mapping read and first poll done: the worker idles
        before = now_us()
        reading = edge.read("bms_0/Voltage", timeout=2, fresh=True)
        assert reading.timestamp_us >= before
        assert reading.value == pytest.approx(sim.model.voltage, abs=0.2)
        with pytest.raises(EmsbmsError, match="kept by the edge"):
            edge.read("bms_0/CommState", timeout=1, fresh=True)
        del sim.od[0x6081]
        with pytest.raises(SdoAbort, match="0x06020000 object does not exist"):
            edge.read("bms_0/Soc", timeout=2, fresh=True)
        sim.inject("silent")
        with pytest.raises(ReadTimeout, match="no SDO response"):
            edge.read("bms_0/Voltage", timeout=0.3, fresh=True)


def test_heartbeat_loss_and_recovery_within_twice_the_consumer_time() -> None:
    consumer_s = 1.5
    site = site_of(options={"heartbeat_producer_ms": 300, "heartbeat_consumer_ms": consumer_s * 1000})
    with running(site) as (sim, edge):
        edge.read("bms_0/VendorId", timeout=5)
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)
        changes: list[tuple[float, object]] = []
        edge.subscribe("bms_0/CommState", lambda a, r: changes.append((time.monotonic(), r.value)))
        silent_at = time.monotonic()
        sim.inject("silent")
        assert wait_for(lambda: value(edge, "CommState") is CommState.LOST, timeout=4 * consumer_s)
        lost_at = next(t for t, v in changes if v is CommState.LOST)
        assert 1.0 <= lost_at - silent_at <= 2 * consumer_s
        snap = edge.snapshot()
        assert snap["bms_0/Soc"].quality is Quality.STALE
        assert snap["bms_0/Voltage"].quality is Quality.STALE
        assert snap["bms_0/Alarm/CommLoss"].value is AlarmLevel.ALARM
        rejected = edge.write("bms_0/SetChargeCurrent", 40, timeout=1)
        assert rejected.status is CommandStatus.REJECTED and "LOST" in rejected.detail
        back_at = time.monotonic()
        sim.clear("silent")
        assert wait_for(lambda: value(edge, "CommState") is not CommState.LOST, timeout=4 * consumer_s)
        recovered_at = next(t for t, v in changes if t > back_at and v is not CommState.LOST)
        assert recovered_at - back_at <= 2 * consumer_s
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)
        assert edge.snapshot()["bms_0/Soc"].quality is Quality.OK


def test_emcy_raise_and_clear() -> None:
    with running(site_of()) as (sim, edge):
        edge.read("bms_0/Soc", timeout=5)
        sim.inject("emcy")
        assert wait_for(lambda: value(edge, "Alarm/Emcy") is AlarmLevel.ALARM)
        assert value(edge, "EmcyCode") == 0x5000
        assert value(edge, "EmcyText") == "device hardware"
        assert value(edge, "EmcyRegister") == 0x01
        assert value(edge, "Alarm/SystemError") is AlarmLevel.ALARM
        sim.clear("emcy")
        assert wait_for(lambda: value(edge, "Alarm/Emcy") is AlarmLevel.OK)
        assert value(edge, "EmcyCode") == 0 and value(edge, "Alarm/SystemError") is AlarmLevel.OK
        sim.inject("overtemp")
        assert wait_for(lambda: value(edge, "Alarm/OverTemperature") is AlarmLevel.ALARM)
        assert value(edge, "EmcyCode") == 0x4210 and value(edge, "EmcyRegister") == 0x09
        sim.clear("overtemp")
        sim.model.temperature = 30.0
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)  # commands need OK
        assert edge.write("bms_0/ResetFaults", 1, timeout=3).status is CommandStatus.ACKED
        assert wait_for(lambda: value(edge, "Alarm/OverTemperature") is AlarmLevel.OK)
        assert [code for code, _ in sim.emcy_sent] == [0x5000, 0x0000, 0x4210, 0x0000]


def test_pdo_remapped_at_runtime_by_a_configuration_tool() -> None:
    site = site_of(options={"heartbeat_producer_ms": 100})
    with running(site) as (sim, edge), tool_on(site) as tool:
        edge.read("bms_0/VendorId", timeout=5)
        edge.read("bms_0/Soc", timeout=5)
        tool.nmt.send_command(0x80)  # pre-operational: the tool reconfigures the node
        assert wait_for(lambda: value(edge, "NmtState") is NmtState.PRE_OPERATIONAL)
        tool.tpdo.read()
        tpdo1 = tool.tpdo[1]
        tpdo1.clear()
        for index in (0x6081, 0x6000, 0x6010, 0x6070, 0x4804):  # same 8 bytes, another order
            tpdo1.add_variable(index)
        tpdo1.cob_id = 0x1A1  # and off its predefined COB-ID (0x181)
        tpdo1.save()
        started = now_us()
        tool.nmt.send_command(0x01)
        soc = fresh_after(edge, "Soc", started)
        temperature = fresh_after(edge, "Temperature", started)
        assert soc == pytest.approx(sim.model.soc, abs=1)  # by the EDS mapping this byte is 0x6010's
        assert temperature == pytest.approx(sim.model.temperature, abs=0.5)
        assert fresh_after(edge, "Current", started) == pytest.approx(sim.model.current, abs=1.0)
        assert edge.snapshot().value("can0/BadFrames") == 0


def test_pdo_remapped_while_operational_is_noticed_by_its_length() -> None:
    site = site_of(options={"sdo_poll_ms": 200})
    with running(site) as (sim, edge):
        edge.read("bms_0/VendorId", timeout=5)
        edge.read("bms_0/MinCellVoltage", timeout=5)
        sim.remap_tpdo(2, [(0x6060, 0, 32)])  # TPDO2: the voltage only (4 bytes instead of 8)
        remapped = now_us()
        voltage = fresh_after(edge, "Voltage", remapped)
        assert voltage == pytest.approx(sim.model.voltage, abs=0.2)
        later = now_us()
        assert fresh_after(edge, "Voltage", later) == pytest.approx(sim.model.voltage, abs=0.2)
        # 0x480A is in no TPDO now: the edge polls it by SDO
        assert fresh_after(edge, "MinCellVoltage", later) == pytest.approx(sim.model.channels()["MinCellVoltage"],
                                                                           abs=0.01)


def test_nmt_master_edge_starts_the_waiting_device() -> None:
    with running(site_of(nmt_master=True)) as (sim, edge):
        assert wait_for(lambda: sim.nmt_state == "OPERATIONAL")
        assert edge.read("bms_0/Soc", timeout=5).value == pytest.approx(sim.model.soc, abs=1)
        assert wait_for(lambda: value(edge, "NmtState") is NmtState.OPERATIONAL)


def test_without_nmt_master_the_edge_waits_for_the_device() -> None:
    tag = "nmt" + str(time.monotonic_ns())
    device_site = site_of(tag=tag, nmt_master=True)  # the device waits for a master ...
    edge_site = site_of(tag=tag)  # ... that this edge is not
    with running(device_site, edge_site) as (sim, edge):
        assert wait_for(lambda: value(edge, "NmtState") is NmtState.PRE_OPERATIONAL)
        with pytest.raises(ReadTimeout):
            edge.read("bms_0/Soc", timeout=1.0)
        assert sim.nmt_state == "PRE-OPERATIONAL"
        assert value(edge, "CommState") is not CommState.OK


def test_identity_mismatch_raises_an_alarm_and_marks_values_invalid() -> None:
    site = site_of(options={"identity": {"vendor_id": "0x454D5342", "product_code": "0x00000419"}})
    with running(site) as (_, edge):
        assert wait_for(lambda: value(edge, "Alarm/Identity") is AlarmLevel.ALARM)
        assert value(edge, "ProductCode") == 0x418
        t = now_us()
        assert edge.read("bms_0/Soc", timeout=5, after_us=t).quality is Quality.INVALID


def test_device_behind_a_bridge_with_an_id_offset() -> None:
    site = site_of(node_id=2, id_offset=0x10000000)
    with can.Bus(interface="virtual", channel=site.bus("can0").channel) as listener, running(site) as (sim, edge):
        assert edge.read("bms_0/Soc", timeout=5).value == pytest.approx(sim.model.soc, abs=1)
        assert wait_for(lambda: value(edge, "CommState") is CommState.OK)  # commands need OK
        assert edge.write("bms_0/SetChargeCurrent", 30, timeout=3).status is CommandStatus.ACKED
        ids = set()
        deadline = time.monotonic() + 1
        while time.monotonic() < deadline:
            m = listener.recv(0.05)
            if m is not None:
                ids.add((m.arbitration_id, m.is_extended_id))
        assert (0x10000182, True) in ids and (0x10000602, True) in ids
        assert not {i for i, _ in ids if i < 0x10000000}


def test_command_to_an_absent_device_is_rejected_unsent() -> None:
    with Edge(site_of(node_id=9)) as edge:
        result = edge.write("bms_0/SetChargeVoltage", 55.0, timeout=0.5)
        assert result.status is CommandStatus.REJECTED  # never heard: no SDO download is even tried
        assert result.detail == "bms_0 is WAITING (never heard since start): commands need CommState OK; nothing sent"


def test_fresh_read_of_a_protocol_without_on_demand_reads_says_so() -> None:
    site = virtual_site(["can0"], [{"name": "lv", "bus": "can0", "profile": "pylon-lv"}])
    with Edge(site) as edge, pytest.raises(EmsbmsError, match="lv/Soc: cannot read on demand: protocol dbc"):
        edge.read("lv/Soc", timeout=0.2, fresh=True)
