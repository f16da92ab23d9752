"""The edge on virtual buses, driven by a hand-written peer: decode, counters, keepalive, threads."""

from __future__ import annotations

import threading

import can
import pytest

from emsbms import Edge, UnknownAddressError
from emsbms.types import CommandStatus, Quality, Reading
from tests.conftest import virtual_site, wait


@pytest.fixture
def edge_and_peer() -> tuple[Edge, can.BusABC]:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}], tag="edge")
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    edge = Edge(site).start()
    yield edge, peer
    edge.stop()
    peer.shutdown()


def test_frame_to_channel_with_the_frame_timestamp(edge_and_peer: tuple[Edge, can.BusABC]) -> None:
    edge, peer = edge_and_peer
    listener = can.Bus(interface="virtual", channel=edge.site.buses[0].channel)
    msg = can.Message(arbitration_id=0x356, data=bytes.fromhex("5c1483ffea00"), is_extended_id=False)
    peer.send(msg)
    r = edge.read("bms_0/Voltage", timeout=5)
    assert (r.value, r.unit, r.quality) == (pytest.approx(52.12), "V", Quality.OK)
    heard = listener.recv(1.0)
    while heard is not None and heard.arbitration_id != 0x356:
        heard = listener.recv(1.0)
    listener.shutdown()
    assert heard is not None
    assert r.timestamp_us == round(heard.timestamp * 1e6)  # the frame's own timestamp, kept to the µs
    assert edge.read("bms_0/Current", timeout=5).value == pytest.approx(-12.5)


def test_bad_frames_and_unknown_ids_are_counted_not_raised(edge_and_peer: tuple[Edge, can.BusABC]) -> None:
    edge, peer = edge_and_peer
    for data in (b"", bytes(3), bytes(5)):  # PYLON_Limits: the profile's min_dlc 6 is strict
        peer.send(can.Message(arbitration_id=0x351, data=data, is_extended_id=False))
    peer.send(can.Message(arbitration_id=0x7FF, data=bytes(8), is_extended_id=False))
    peer.send(can.Message(arbitration_id=0x18FF50E5, data=bytes(8), is_extended_id=True))
    peer.send(can.Message(arbitration_id=0x355, data=bytes([64, 0, 99, 0]), is_extended_id=False))
    assert edge.read("bms_0/Soc", timeout=5).value == 64  # still decoding after the bad ones
    assert wait(lambda: edge.snapshot().value("can0/BadFrames") == 3
                and edge.snapshot().value("can0/UnknownIds") == 2)
    assert "PYLON_Limits (0x351) DLC 5, expected at least 6" in str(edge.snapshot().value("can0/LastError"))
    assert edge.registry.get("bms_0/ChargeMaxVoltage") is None  # never updated from a bad frame


def test_keepalive_goes_out(edge_and_peer: tuple[Edge, can.BusABC]) -> None:
    _, peer = edge_and_peer
    got = peer.recv(3.0)
    assert got is not None and (got.arbitration_id, bytes(got.data)) == (0x305, bytes(8))


def test_subscribe_and_unknown_addresses(edge_and_peer: tuple[Edge, can.BusABC]) -> None:
    edge, peer = edge_and_peer
    seen: list[Reading] = []
    with edge.subscribe("bms_0/So?", lambda a, r: seen.append(r)):
        peer.send(can.Message(arbitration_id=0x355, data=bytes([42, 0, 97, 0]), is_extended_id=False))
        assert wait(lambda: len(seen) == 2)
    assert sorted(r.value for r in seen) == [42, 97]  # type: ignore[type-var]
    with pytest.raises(UnknownAddressError, match="unknown device 'bms_9'"):
        edge.read("bms_9/Soc", timeout=0.1)
    with pytest.raises(UnknownAddressError, match="bms_0/Soc is not a command channel; bms_0 commands: none"):
        edge.write("bms_0/Soc", 5)


def test_write_to_a_lost_device_is_rejected_with_nothing_sent() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "acme-hv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    with Edge(site) as edge:
        adapter = edge.adapters["bms_0"]
        adapter.supervisor.timeout_us = 50_000  # nobody answers: LOST after 50 ms
        assert wait(lambda: edge.snapshot().value("bms_0/CommState") == "LOST")
        while peer.recv(0.05) is not None:
            pass
        result = edge.write("bms_0/SetChargeCurrent", 10.0, timeout=0.5)
        assert result.status is CommandStatus.REJECTED
        assert result.detail == "bms_0 is LOST (silent past its timeout): commands need CommState OK; nothing sent"
        assert peer.recv(0.3) is None
    peer.shutdown()


def test_no_thread_outlives_the_edge() -> None:
    before = set(threading.enumerate())
    site = virtual_site(["can0", "can1"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    with Edge(site):
        assert len(set(threading.enumerate()) - before) == 4  # a reader and a dispatcher per bus
    assert wait(lambda: not [t for t in threading.enumerate() if t.name.startswith("emsbms-")], 3)
