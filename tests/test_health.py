"""Bus health: error frames by class, frame bit lengths and load, bus-off and reopen via FaultyBus."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import can
import pytest

from emsbms import Edge
from emsbms.can.bus import BusState
from emsbms.can.faults import FaultyBus
from emsbms.can.health import (
    CAN_ERR_ACK,
    CAN_ERR_BUSOFF,
    CAN_ERR_CNT,
    CAN_ERR_CRTL,
    CAN_ERR_LOSTARB,
    CAN_ERR_PROT,
    CAN_ERR_RESTARTED,
    ErrorState,
    LatencyMeter,
    LoadMeter,
    decode_error_frame,
    frame_bits,
    frame_bits_unstuffed,
    state_from_counters,
)
from emsbms.site import BusConfig
from tests.conftest import virtual_site, wait


@pytest.mark.parametrize(
    ("can_id", "data", "classes", "details", "state", "counters"),
    [
        (CAN_ERR_CRTL | CAN_ERR_CNT, [0, 0x08, 0, 0, 0, 0, 97, 3], ("controller", "error counters"),
         ("tx warning",), ErrorState.ERROR_WARNING, (97, 3)),
        (CAN_ERR_CRTL | CAN_ERR_CNT, [0, 0x10, 0, 0, 0, 0, 12, 130], ("controller", "error counters"),
         ("rx passive",), ErrorState.ERROR_PASSIVE, (12, 130)),
        (CAN_ERR_BUSOFF, [0] * 8, ("bus-off",), (), ErrorState.BUS_OFF, (None, None)),
        (CAN_ERR_RESTARTED, [0] * 8, ("restarted",), (), ErrorState.ERROR_ACTIVE, (None, None)),
        (CAN_ERR_PROT, [0, 0, 0x04, 0x0A, 0, 0, 0, 0], ("protocol violation",),
         ("bit stuffing error", "location 0x0A"), None, (None, None)),
        (CAN_ERR_ACK, [0] * 8, ("no ack",), (), None, (None, None)),
        (CAN_ERR_CNT, [0, 0, 0, 0, 0, 0, 140, 0], ("error counters",), (), ErrorState.ERROR_PASSIVE, (140, 0)),
    ],
)
def test_error_frames_by_class(can_id: int, data: list[int], classes: tuple[str, ...], details: tuple[str, ...],
                               state: ErrorState | None, counters: tuple[int | None, int | None]) -> None:
    info = decode_error_frame(can_id, bytes(data))
    assert info.classes == classes
    assert info.details == details
    assert info.state is state
    assert (info.tx_errors, info.rx_errors) == counters


def test_lost_arbitration_bit() -> None:
    assert decode_error_frame(CAN_ERR_LOSTARB, bytes([7, 0, 0, 0, 0, 0, 0, 0])).lost_arbitration_bit == 7


def test_state_from_counters_thresholds() -> None:
    assert [state_from_counters(t, 0) for t in (0, 95, 96, 127, 128, 255, 256)] == [
        ErrorState.ERROR_ACTIVE, ErrorState.ERROR_ACTIVE, ErrorState.ERROR_WARNING, ErrorState.ERROR_WARNING,
        ErrorState.ERROR_PASSIVE, ErrorState.ERROR_PASSIVE, ErrorState.BUS_OFF]


def test_frame_bits_match_hand_counts() -> None:
    assert frame_bits_unstuffed(False, 8) == 111 and frame_bits_unstuffed(True, 8) == 131
    # 0x555 with 0xAA data alternates bits: no stuffing in header or data; + 2 estimated CRC stuff bits
    assert frame_bits(0x555, False, bytes([0xAA] * 8)) == 111 + 2
    # eight zero bytes: SOF..DLC of ID 0x555 DLC 8 has no run of 5; data: 64 zeros after DLC's '0' ...
    zeros = frame_bits(0x555, False, bytes(8))
    assert 111 + 2 + 12 <= zeros <= 111 + 2 + 17
    assert frame_bits(0x7FF, False, b"") < frame_bits(0x7FF, False, bytes(8))
    assert frame_bits(0x18FF50E5, True, bytes([0xAA] * 8)) >= 131


def test_load_meter_against_known_rates() -> None:
    meter = LoadMeter(bitrate=500_000, window_s=1.0)
    bits = frame_bits(0x555, False, bytes([0xAA] * 8))  # 113 bits
    for i in range(2000):  # 2000 frames in one second
        meter.add(i / 2000, bits)
    assert meter.load(0.9999) == pytest.approx(100.0 * 2000 * bits / 500_000)  # 45.2 %
    assert meter.load(1.5) == pytest.approx(100.0 * 1000 * bits / 500_000, rel=0.01)  # half the window left


def test_latency_percentiles() -> None:
    m = LatencyMeter(size=100)
    for v in range(1, 101):
        m.add(v)
    assert (m.percentile(50), m.percentile(99)) == (50, 99)


def _faulty_factory(store: dict[str, FaultyBus]) -> Callable[[BusConfig], Any]:
    def factory(config: BusConfig) -> FaultyBus:
        bus = FaultyBus(inner_bus=can.Bus(interface="virtual", channel=config.channel))
        store[config.name] = bus
        return bus
    return factory


def test_bus_off_and_restart_through_error_frames() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    buses: dict[str, FaultyBus] = {}
    states: list[object] = []
    with Edge(site, bus_factory=_faulty_factory(buses)) as edge:
        edge.subscribe("can0/State", lambda a, r: states.append(r.value))
        assert wait(lambda: edge.snapshot().value("can0/State") == BusState.ERROR_ACTIVE)
        buses["can0"].go_bus_off()
        # the polled controller state and the error frame arrive on their own paths: wait for both
        assert wait(lambda: edge.snapshot().value("can0/State") == BusState.BUS_OFF)
        assert wait(lambda: edge.snapshot().value("can0/ErrorFrames") == 1)
        assert edge.snapshot().value("can0/State") == BusState.BUS_OFF
        buses["can0"].recover()
        assert wait(lambda: edge.snapshot().value("can0/State") == BusState.ERROR_ACTIVE)
    assert BusState.BUS_OFF in states and states[-1] == BusState.ERROR_ACTIVE


def test_recv_failure_reopens_with_other_bus_unaffected() -> None:
    site = virtual_site(["can0", "can1"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
                                            {"name": "bms_1", "bus": "can1", "profile": "pylon-lv"}])
    buses: dict[str, FaultyBus] = {}
    states: list[object] = []
    peer1 = can.Bus(interface="virtual", channel=site.buses[1].channel)
    with Edge(site, bus_factory=_faulty_factory(buses)) as edge:
        edge.subscribe("can0/State", lambda a, r: states.append(r.value))
        first = buses["can0"]
        first.raise_on_recv = can.CanOperationError("adapter unplugged")
        assert wait(lambda: edge.snapshot().value("can0/Reopens") == 1)
        assert buses["can0"] is not first  # a new bus from the factory
        assert wait(lambda: edge.snapshot().value("can0/State") == BusState.ERROR_ACTIVE)
        assert "adapter unplugged" in str(edge.snapshot().value("can0/LastError"))
        peer1.send(can.Message(arbitration_id=0x355, data=bytes([33, 0, 90, 0]), is_extended_id=False))
        assert edge.read("bms_1/Soc", timeout=5).value == 33
    peer1.shutdown()
    assert BusState.DOWN in states


def test_bus_load_and_latency_channels_from_traffic() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    with Edge(site) as edge:
        assert wait(lambda: edge.snapshot().value("can0/BusLoad") is not None)  # published from one window on
        for _ in range(200):
            peer.send(can.Message(arbitration_id=0x356, data=bytes([0xAA] * 6), is_extended_id=False))
        # the load is published every tick over a sliding window: wait for the window to hold the burst
        assert wait(lambda: (edge.snapshot().value("can0/BusLoad") or 0) >= 3.8)
        snap = edge.snapshot()
        load = snap.value("can0/BusLoad")
        # 200 rx frames of 97 bits plus at most a few keepalives, in a 1 s window at 500 kbit/s
        assert isinstance(load, float) and 3.8 <= load <= 4.2
        p50, p99 = snap.value("can0/LatencyP50"), snap.value("can0/LatencyP99")
        assert isinstance(p50, int) and isinstance(p99, int) and 0 <= p50 <= p99
        assert snap["can0/BusLoad"].unit == "%" and snap["can0/LatencyP99"].unit == "µs"
    peer.shutdown()


def test_a_slow_subscriber_never_blocks_the_reader_overflow_is_counted() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    with Edge(site, queue_size=10) as edge:
        edge.subscribe("bms_0/Soc", lambda a, r: time.sleep(0.05))  # a slow consumer
        for i in range(300):
            peer.send(can.Message(arbitration_id=0x355, data=bytes([i % 100, 0, 90, 0]), is_extended_id=False))
        runner = edge.runners["can0"]
        assert wait(lambda: runner.rx == 300)  # the reader took every frame off the bus
        assert runner.dropped > 0
        assert wait(lambda: edge.snapshot().value("can0/Dropped") == runner.dropped, 10)
    peer.shutdown()


def test_the_bus_state_is_published_when_the_edge_starts_before_any_frame() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    edge = Edge(site)
    assert edge.snapshot().value("can0/State") is None
    with edge:  # start() returns with the state known: a reader never sees a bus without one
        snap = edge.snapshot()
        assert snap.value("can0/State") is BusState.UNKNOWN  # virtual reports no controller state
        assert snap.value("can0/RxFrames") == 0 and snap.value("can0/BusLoad") is None
