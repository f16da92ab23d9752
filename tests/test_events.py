"""The event log: registry transitions and command results in, events out (pure), and its wiring."""

from __future__ import annotations

import logging
import time
import uuid

import can
from canopen.emcy import EmcyError

from emsbms import load_profile
from emsbms.can.bus import BusState
from emsbms.edge.events import Event, EventKind, EventLog, EventLogHandler, Severity
from emsbms.edge.registry import Registry
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.canopen_od import CanopenOptions
from emsbms.protocols.canopen_services import EmcyAlarms
from emsbms.protocols.j1939 import J1939Adapter
from emsbms.types import AlarmLevel, CommandResult, CommandStatus, CommState, Quality, Reading, Sample

T0 = 1_700_000_000_000_000


def feed(log: EventLog, address: str, value: object, t_s: float = 0.0) -> list[Event]:
    return log.feed(address, Reading(value, "", T0 + int(t_s * 1e6), Quality.OK))  # type: ignore[arg-type]


def texts(events: list[Event]) -> list[str]:
    return [e.text for e in events]


def test_comm_loss_and_recovery() -> None:
    log = EventLog()
    assert feed(log, "bms/CommState", CommState.WAITING) == []  # the first value is the baseline
    [online] = feed(log, "bms/CommState", CommState.OK, 0.5)
    assert (online.kind, online.severity, online.text) == (EventKind.COMM, Severity.INFO,
                                                           "online: first frames received")
    assert feed(log, "bms/CommState", CommState.OK, 0.7) == []  # no transition
    [lost] = feed(log, "bms/CommState", CommState.LOST, 10.0)
    assert (lost.severity, lost.text, lost.timestamp_us) == (Severity.ALARM, "comm lost: no frame within its timeout",
                                                             T0 + 10_000_000)
    # heard again (some messages still overdue: STALE), then every message again (OK): one event
    [back] = feed(log, "bms/CommState", CommState.STALE, 15.25)
    assert (back.severity, back.text) == (Severity.OK, "comm recovered after 5.2 s")  # 15.25 - 10.0
    assert feed(log, "bms/CommState", CommState.OK, 15.5) == []
    feed(log, "bms/CommState", CommState.LOST, 16.0)
    assert texts(feed(log, "bms/CommState", CommState.OK, 17.5)) == ["comm recovered after 1.5 s"]
    [stale] = feed(log, "bms/CommState", CommState.STALE, 20.0)
    assert (stale.severity, stale.text) == (Severity.WARNING, "stale: some messages overdue")
    assert texts(feed(log, "bms/CommState", CommState.OK, 21.0)) == ["comm ok: every message on time"]


def test_a_device_never_heard() -> None:
    log = EventLog()
    feed(log, "bms/CommState", CommState.WAITING)
    assert texts(feed(log, "bms/CommState", CommState.LOST, 3.0)) == ["not heard within its timeout: LOST"]


def test_alarm_levels_and_what_is_skipped() -> None:
    log = EventLog()
    assert feed(log, "bms/Alarm/OverTemperature", AlarmLevel.OK) == []
    [warn] = feed(log, "bms/Alarm/OverTemperature", AlarmLevel.WARNING, 1)
    assert (warn.kind, warn.severity, warn.text) == (EventKind.ALARM, Severity.WARNING, "OverTemperature warning")
    assert feed(log, "bms/Alarm/OverTemperature", AlarmLevel.WARNING, 2) == []
    [alarm] = feed(log, "bms/Alarm/OverTemperature", AlarmLevel.ALARM, 3)
    assert (alarm.severity, alarm.text) == (Severity.ALARM, "OverTemperature ALARM (was warning)")
    [clear] = feed(log, "bms/Alarm/OverTemperature", AlarmLevel.OK, 4)
    assert (clear.severity, clear.text) == (Severity.OK, "OverTemperature cleared")
    # an alarm already active when first seen is an event
    assert texts(feed(log, "bms/Alarm/SystemError", AlarmLevel.ALARM)) == ["SystemError ALARM"]
    # told by other events: CommLoss by CommState, DiagnosticLamps by DM1
    assert feed(log, "bms/Alarm/CommLoss", AlarmLevel.ALARM, 5) == []
    assert feed(log, "bms/Alarm/DiagnosticLamps", AlarmLevel.ALARM, 5) == []
    assert texts(feed(log, "hv/Alarm/NameNotClaimed", AlarmLevel.ALARM)) == [
        "NameNotClaimed (J1939 NAME holds no address) ALARM"]


def test_identity_mismatch() -> None:
    log = EventLog()
    feed(log, "node/Alarm/Identity", AlarmLevel.OK)
    [bad] = feed(log, "node/Alarm/Identity", AlarmLevel.ALARM, 1)
    assert (bad.kind, bad.severity) == (EventKind.IDENTITY, Severity.ALARM)
    assert bad.text == "identity mismatch: 0x1000/0x1018 differ from the profile; values marked invalid"
    [good] = feed(log, "node/Alarm/Identity", AlarmLevel.OK, 2)
    assert (good.severity, good.text) == (Severity.OK, "identity check passed")


def emcy_samples(alarms: EmcyAlarms, active: list[EmcyError], register: int, ts: int) -> list[Sample]:
    return alarms.samples(active, register, ts)


def test_emcy_from_the_canopen_channels_in_their_order() -> None:
    # the adapter publishes EmcyCode, EmcyRegister, EmcyText, Alarm/Emcy, Alarm/<mapped>: one event per EMCY
    options = CanopenOptions.model_validate({"emcy_alarms": {"0x4200-0x42FF": {"alarm": "OverTemperature",
                                                                               "level": 2}}})
    alarms = EmcyAlarms("node/", options)
    log = EventLog()

    def apply(samples: list[Sample]) -> list[Event]:
        out: list[Event] = []
        for s in samples:
            out += log.feed(s.address, Reading(s.value, "", s.timestamp_us, s.quality))
        return out

    assert apply(alarms.cleared(T0)) == []  # the start-up values: nothing happened
    overtemp = EmcyError(0x4210, 0x09, b"", 0.0)
    events = apply(emcy_samples(alarms, [overtemp], 0x09, T0 + 1))
    assert [(e.kind, e.severity) for e in events] == [(EventKind.EMCY, Severity.ALARM),
                                                     (EventKind.ALARM, Severity.ALARM)]
    assert events[0].text.startswith("EMCY 0x4210 ") and events[0].text.endswith(" · error register 0x09")
    assert events[1].text == "OverTemperature ALARM"
    assert apply(emcy_samples(alarms, [overtemp], 0x09, T0 + 2)) == []  # the same EMCY again
    # a second, unmapped EMCY: the level stays 2, the code changes
    hardware = EmcyError(0x5000, 0x01, b"", 0.0)
    [second] = apply(emcy_samples(alarms, [overtemp, hardware], 0x01, T0 + 3))
    assert second.text.startswith("EMCY 0x5000 ") and second.text.endswith("error register 0x01")
    cleared = apply(alarms.cleared(T0 + 4))
    assert texts(cleared) == ["EMCY cleared (error reset)", "OverTemperature cleared"]


def j1939_adapter() -> J1939Adapter:
    a = J1939Adapter(DeviceConfig("hv", "can-" + uuid.uuid4().hex[:8], "j1939-hvess", source_address=0xF3),
                     load_profile("j1939-hvess"))
    a.start(time.time_ns() // 1000)
    return a


def dm1(adapter: J1939Adapter, log: EventLog, hex_data: str) -> list[Event]:
    msg = can.Message(arbitration_id=0x18FECAF3, data=bytes.fromhex(hex_data), is_extended_id=True,
                      timestamp=time.time())
    out = adapter.on_frame(msg, time.time_ns() // 1000)
    assert out is not None
    events: list[Event] = []
    for s in out.samples:
        events += log.feed(s.address, Reading(s.value, "", s.timestamp_us, s.quality))
    return events


def test_dm1_from_the_j1939_channels_in_their_order() -> None:
    adapter, log = j1939_adapter(), EventLog()
    assert dm1(adapter, log, "00ff00000000ffff") == []  # no DTC, lamps off: the quiet baseline
    # red stop lamp on (bits 5-6 = 01: 0x10); SPN 520200 = 0x7F008 -> 08 F0, (0b111 << 5) | FMI 0 = E0; OC 1
    events = dm1(adapter, log, "10ff08f0e001ffff")
    [dm] = [e for e in events if e.kind is EventKind.DM1]
    assert (dm.severity, dm.text) == (Severity.ALARM, "DM1 1 DTC: SPN 520200 FMI 0 · red stop lamp")
    assert texts([e for e in events if e.kind is EventKind.ALARM]) == ["OverTemperature ALARM"]
    assert dm1(adapter, log, "10ff08f0e001ffff") == []  # DM1 repeats every second: no new event
    # occurrence count 2 (byte 6 = 02): the same DTC, counted again, no new event
    assert dm1(adapter, log, "10ff08f0e002ffff") == []
    cleared = dm1(adapter, log, "00ff00000000ffff")
    assert texts(cleared) == ["DM1 cleared: no active DTC, lamps off", "OverTemperature cleared"]


def test_command_results() -> None:
    log = EventLog()
    acked = log.command(CommandResult("hv/SetChargeCurrent", 50.0, CommandStatus.ACKED, "echo 50"), T0)
    assert (acked.source, acked.kind, acked.severity) == ("hv", EventKind.COMMAND, Severity.OK)
    assert acked.text == "SetChargeCurrent = 50 acked: echo 50"
    # the detail of a rejection repeats the command: left out
    rejected = log.command(CommandResult("hv/SetChargeCurrent", 5000.0, CommandStatus.REJECTED,
                                         "hv/SetChargeCurrent = 5000 A is above the maximum 200.0 A"), T0)
    assert (rejected.severity, rejected.text) == (Severity.ALARM,
                                                  "SetChargeCurrent = 5000 rejected: above the maximum 200.0 A")
    lost = log.command(CommandResult("hv/Connect", 1.0, CommandStatus.REJECTED, "hv is LOST: nothing sent"), T0)
    assert lost.text == "Connect = 1 rejected: hv is LOST: nothing sent"
    sent = log.command(CommandResult("lv/SetChargeCurrent", 20.0, CommandStatus.SENT), T0)
    assert (sent.severity, sent.text) == (Severity.INFO, "SetChargeCurrent = 20 sent")
    timeout = log.command(CommandResult("hv/Connect", 1.0, CommandStatus.TIMEOUT, "no acknowledgement"), T0)
    assert timeout.severity is Severity.WARNING


def test_ring_buffer_and_flapping_coalesced() -> None:
    log = EventLog(capacity=4)
    for i in range(6):
        feed(log, f"d{i}/Alarm/X", AlarmLevel.ALARM, i)
    assert [e.source for e in log.events()] == ["d2", "d3", "d4", "d5"]
    assert log.total == 6
    flappy = EventLog()
    feed(flappy, "j/CommState", CommState.OK)
    for i in range(3):
        feed(flappy, "j/CommState", CommState.STALE, 2 * i + 1)
        feed(flappy, "j/CommState", CommState.OK, 2 * i + 2)
    assert [(e.text, e.repeat) for e in flappy.events()] == [("stale: some messages overdue", 3),
                                                              ("comm ok: every message on time", 3)]
    assert flappy.events()[-1].timestamp_us == T0 + 6_000_000  # the latest occurrence
    assert flappy.total == 6


def test_attached_to_a_registry_and_drained_on_demand() -> None:
    registry = Registry()
    log = EventLog()
    subs = log.attach(registry, buses=["can0"])
    assert len(subs) == 5  # CommState, Alarm/*, Emcy*, Dm1/*, can0/State
    registry.apply([Sample("can0/State", BusState.ERROR_ACTIVE, T0), Sample("bms/CommState", CommState.OK, T0),
                    Sample("bms/Soc", 50.0, T0)])
    registry.apply([Sample("can0/State", BusState.BUS_OFF, T0 + 1), Sample("bms/CommState", CommState.LOST, T0 + 2)])
    assert log.events() == []  # the callbacks only queue: nothing happens until drained
    new = log.drain()
    assert [(e.source, e.kind, e.severity, e.text) for e in new] == [
        ("can0", EventKind.BUS, Severity.ALARM, "bus BUS_OFF (was ERROR_ACTIVE)"),
        ("bms", EventKind.COMM, Severity.ALARM, "comm lost: no frame within its timeout"),
    ]
    assert log.drain() == []
    for sub in subs:
        sub.cancel()


def test_inbox_overflow_is_counted() -> None:
    log = EventLog(inbox=3)
    for i in range(5):
        log.post(f"d{i}/Alarm/X", Reading(AlarmLevel.ALARM, "", T0, Quality.OK))
    assert log.dropped == 2
    assert [e.source for e in log.drain()] == ["d2", "d3", "d4"]  # the oldest went first


def test_log_warnings_become_events() -> None:
    log = EventLog()
    feed(log, "bms/CommState", CommState.OK)
    handler = EventLogHandler(log)
    logger = logging.getLogger("emsbms.test_events")
    logger.addHandler(handler)
    try:
        logger.warning("bms: node 5 refuses to give its PDO mapping")
        logger.warning("bms: EMCY 0x5000 (device hardware), error register 0x01")  # told by the EMCY event
        logger.error("something broke")
        logger.info("not shown")
    finally:
        logger.removeHandler(handler)
    events = log.drain()
    assert [(e.source, e.kind, e.severity, e.text) for e in events] == [
        ("bms", EventKind.LOG, Severity.WARNING, "node 5 refuses to give its PDO mapping"),
        ("test_events", EventKind.LOG, Severity.ALARM, "something broke"),
    ]


def test_an_event_made_elsewhere_is_logged_once_in_order() -> None:
    log = EventLog()
    raised = Event(1_000_000, "bms_0", EventKind.ALARM, Severity.ALARM, "hot: bms_0/MaxCellVoltage 3.71 > 3.6: active")
    log.post_event(raised)
    assert log.events() == []  # nothing before the drain: posting only appends to the inbox
    assert log.drain() == [raised]
    assert log.events() == [raised] and log.total == 1
