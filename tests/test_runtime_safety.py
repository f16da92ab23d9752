"""Runtime safety: nothing reaches a device that is not heard, a failing bus or a bad datagram stops
nothing else, and every adapter exception is counted where the fuzzer sees it.

Every command test checks the captured bus: a separate python-can node on the same virtual bus.
"""

from __future__ import annotations

import json
import os
import random
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest
from typer.testing import CliRunner

from emsbms.can.bus import BusState
from emsbms.can.config import BusConfig
from emsbms.cli import app
from emsbms.demo import site_toml
from emsbms.diag import fuzz
from emsbms.edge import Edge
from emsbms.errors import CommandRejected
from emsbms.profile import load_profile
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter
from emsbms.protocols.j1939_names import pgn_and_destination
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site
from emsbms.types import CommandStatus, CommState, Quality
from tests.conftest import virtual_site, wait

OK_NEEDED = "commands need CommState OK; nothing sent"


class Capture:
    """Every frame seen by a separate node on a virtual bus, with its timestamp (the send time)."""

    def __init__(self, channel: str) -> None:
        self.bus = can.Bus(interface="virtual", channel=channel)
        self.frames: list[can.Message] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            m = self.bus.recv(0.02)
            if m is not None:
                self.frames.append(m)

    def matching(self, keep: Callable[[can.Message], bool], after_us: int = 0) -> list[can.Message]:
        return [m for m in list(self.frames) if keep(m) and round(m.timestamp * 1e6) >= after_us]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)
        self.bus.shutdown()


@contextmanager
def capturing(channel: str) -> Iterator[Capture]:
    cap = Capture(channel)
    try:
        yield cap
    finally:
        cap.close()


def captured(site: Site, bus: str = "can0") -> Any:
    return capturing(site.bus(bus).channel)


def state(edge: Edge, device: str) -> object:
    return edge.snapshot().value(f"{device}/CommState")


def dbc(edge: Edge, device: str) -> DbcAdapter:
    adapter = edge.adapters[device]
    assert isinstance(adapter, DbcAdapter)
    return adapter


def transitions_to(edge: Edge, device: str, target: CommState) -> list[int]:
    """Timestamps (µs) of the device's transitions to `target`, filled as they happen."""
    seen: list[int] = []
    edge.subscribe(f"{device}/CommState",
                   lambda _a, r: seen.append(r.timestamp_us) if r.value == target else None)
    return seen


# -- commands only to a device that is OK ------------------------------------------------------------------

J1939_PGN_PROPA = 0xEF00

UNHEARD = [
    pytest.param({"name": "lv", "bus": "can0", "profile": "acme-lv-bytemap"}, "SetChargeCurrent", 20.0,
                 lambda m: m.arbitration_id == 0x618, id="dbc-without-ack"),
    pytest.param({"name": "co", "bus": "can0", "profile": "cia418-bms", "node_id": 1}, "SetChargeCurrent", 30.0,
                 lambda m: m.arbitration_id == 0x201 or (m.arbitration_id == 0x601 and m.data[0] & 0xE0 == 0x20),
                 id="canopen"),  # an RPDO, or an SDO download (the worker's identity uploads are no command)
    pytest.param({"name": "j", "bus": "can0", "profile": "j1939-hvess", "source_address": 0xF3},
                 "SetChargeCurrent", 30.0,
                 lambda m: m.is_extended_id and pgn_and_destination(m.arbitration_id)[0] == J1939_PGN_PROPA,
                 id="j1939"),
]


@pytest.mark.parametrize(("device", "command", "value", "is_command_frame"), UNHEARD)
def test_a_device_never_heard_takes_no_command(
    device: dict[str, Any], command: str, value: float, is_command_frame: Callable[[can.Message], bool]
) -> None:
    site = virtual_site(["can0"], [device])
    name = device["name"]
    with captured(site) as cap, Edge(site) as edge:
        if device["profile"] == "j1939-hvess":  # the edge's own address is claimed: only the device is missing
            assert wait(lambda: edge.snapshot().value(f"{name}/EdgeAddress") == 0xE0)
        assert state(edge, name) == CommState.WAITING
        result = edge.write(f"{name}/{command}", value, timeout=0.5)
        time.sleep(0.3)  # an observation window for frames the write might have caused
        sent = cap.matching(is_command_frame)
    assert result.status is CommandStatus.REJECTED
    assert result.detail == f"{name} is WAITING (never heard since start): {OK_NEEDED}"
    assert result.frames == ()
    assert sent == []


def test_a_stale_device_takes_no_command() -> None:
    site = virtual_site(["can0"], [{"name": "hv", "bus": "can0", "profile": "acme-hv"}])
    peer = can.Bus(interface="virtual", channel=site.bus("can0").channel)
    with captured(site) as cap, Edge(site) as edge:
        dbc(edge, "hv").supervisor.timeout_us = 3_600_000_000  # never LOST here: STALE stays
        peer.send(can.Message(arbitration_id=0x4A0, data=bytes(8), is_extended_id=False))  # ACME_Pack once
        assert wait(lambda: state(edge, "hv") == CommState.STALE)
        result = edge.write("hv/SetChargeCurrent", 10.0, timeout=0.5)
        time.sleep(0.3)
        sent = cap.matching(lambda m: m.arbitration_id == 0x4B0)
    peer.shutdown()
    assert result.status is CommandStatus.REJECTED
    assert result.detail == (f"hv is STALE (its data is not fresh: a supervised message is overdue): {OK_NEEDED}")
    assert sent == []


def test_cli_write_to_an_absent_device_without_ack_is_rejected_not_sent(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    path = tmp_path / "site.toml"
    path.write_text(site_toml({
        "site": {"org": "test", "name": "safety"},
        "bus": [{"name": "can0", "interface": "virtual", "channel": f"safety-{tag}"}],
        "device": [{"name": "lv_0", "bus": "can0", "profile": "acme-lv-bytemap"}],
    }), encoding="utf-8")
    with capturing(f"safety-{tag}") as cap:
        r = CliRunner().invoke(app, ["--site", str(path), "write", "lv_0/SetChargeCurrent", "20", "--json",
                                     "--timeout", "0.3"])
        sent = cap.matching(lambda m: m.arbitration_id == 0x618)
    assert r.exit_code == 4, r.output
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected"
    assert doc["detail"] == f"lv_0 is WAITING (never heard since start): {OK_NEEDED}"
    assert sent == []


@pytest.mark.parametrize("value", [10**400, -(10**400), "50"], ids=["10**400", "-10**400", "a string"])
def test_a_value_no_float_holds_is_rejected_before_anything(value: object) -> None:
    site = virtual_site(["can0"], [{"name": "hv", "bus": "can0", "profile": "acme-hv"}])
    with running_ok(site) as (_, edge), captured(site) as cap:
        try:
            result = edge.write("hv/SetChargeCurrent", value, timeout=0.5)  # type: ignore[arg-type]
        except CommandRejected as e:  # also acceptable: a refusal as an exception
            detail = str(e)
        else:
            assert result.status is CommandStatus.REJECTED
            detail = result.detail
        time.sleep(0.3)
        sent = cap.matching(lambda m: m.arbitration_id == 0x4B0)
    shown = {10**400: "an integer of 401 digits", -(10**400): "a negative integer of 401 digits"}
    if isinstance(value, int | float):
        found = shown[value] if isinstance(value, int) else repr(value)
        expected = f"hv/SetChargeCurrent: expected a finite number, found {found}"
    else:
        expected = f"hv/SetChargeCurrent: expected a number, found {value!r}"
    assert detail.startswith(expected), detail
    assert sent == []


@contextmanager
def running_ok(site: Site) -> Iterator[tuple[Simulation, Edge]]:
    """The simulated devices of `site` and the edge, once every device is OK."""
    with Simulation(site) as sim, Edge(site) as edge:
        names = [d.name for d in site.devices]
        assert wait(lambda: all(state(edge, n) == CommState.OK for n in names)), edge.snapshot()
        yield sim, edge


# -- cyclic setpoints stop when the device is LOST -----------------------------------------------------------


def test_dbc_setpoints_stop_at_lost_and_do_not_come_back() -> None:
    site = virtual_site(["can0"], [{"name": "hv", "bus": "can0", "profile": "acme-hv"}])
    def setpoint(m: can.Message) -> bool:  # EMS_Setpoints, every 100 ms while a setpoint is active
        return m.arbitration_id == 0x4B0

    with running_ok(site) as (sim, edge), captured(site) as cap:
        lost = transitions_to(edge, "hv", CommState.LOST)
        result = edge.write("hv/SetChargeCurrent", 30.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result.detail
        assert wait(lambda: len(cap.matching(setpoint)) >= 3)  # repeated while the device is heard
        sim.inject("hv", "silent")
        assert wait(lambda: lost)
        time.sleep(0.6)  # an observation window of six setpoint periods
        after_lost = cap.matching(setpoint, after_us=lost[0])
        command_quality = edge.snapshot()["hv/SetChargeCurrent"].quality
        sim.clear("hv", "silent")
        assert wait(lambda: state(edge, "hv") == CommState.OK)
        back = round(time.time() * 1e6)
        time.sleep(0.6)
        after_back = cap.matching(setpoint, after_us=back)
        before = cap.matching(setpoint)
    assert len(before) >= 3
    assert after_lost == []
    assert after_back == []  # not resumed: the device must be commanded again
    assert command_quality is Quality.STALE


def test_canopen_rpdo_setpoint_stops_at_lost_and_does_not_come_back() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "cia418-bms", "node_id": 1,
                                    "options": {"heartbeat_producer_ms": 300, "heartbeat_consumer_ms": 900}}])
    def rpdo(m: can.Message) -> bool:  # RPDO1 carries the limits, every 500 ms while a setpoint is active
        return m.arbitration_id == 0x201

    with running_ok(site) as (sim, edge), captured(site) as cap:
        lost = transitions_to(edge, "bms_0", CommState.LOST)
        result = edge.write("bms_0/SetDischargeCurrent", 70.0, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result.detail
        assert wait(lambda: len(cap.matching(rpdo)) >= 1)
        sim.inject("bms_0", "silent")
        assert wait(lambda: lost)
        time.sleep(1.1)  # two RPDO periods
        after_lost = cap.matching(rpdo, after_us=lost[0])
        sim.clear("bms_0", "silent")
        assert wait(lambda: state(edge, "bms_0") == CommState.OK)
        back = round(time.time() * 1e6)
        time.sleep(1.1)
        after_back = cap.matching(rpdo, after_us=back)
        quality = edge.snapshot()["bms_0/SetDischargeCurrent"].quality
    assert after_lost == []
    assert after_back == []
    assert quality is Quality.STALE


def test_j1939_setpoints_stop_at_lost_and_do_not_come_back() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "j1939-hvess",
                                    "j1939_name": 0x9000A0005CA01F3A}])

    def connect(m: can.Message) -> bool:  # HVES1C1, PGN 0x1B00, repeated every 20 ms while active
        return m.is_extended_id and pgn_and_destination(m.arbitration_id)[0] == 0x1B00

    with running_ok(site) as (sim, edge), captured(site) as cap:
        lost = transitions_to(edge, "bms_0", CommState.LOST)
        result = edge.write("bms_0/Connect", 1, timeout=3.0)
        assert result.status is CommandStatus.ACKED, result.detail
        assert wait(lambda: len(cap.matching(connect)) >= 5)
        sim.inject("bms_0", "silent")
        assert wait(lambda: lost)
        time.sleep(0.3)  # fifteen periods
        after_lost = cap.matching(connect, after_us=lost[0])
        sim.clear("bms_0", "silent")
        assert wait(lambda: state(edge, "bms_0") == CommState.OK)
        back = round(time.time() * 1e6)
        time.sleep(0.3)
        after_back = cap.matching(connect, after_us=back)
    assert after_lost == []
    assert after_back == []


# -- a bus that fails at start ------------------------------------------------------------------------------


def test_a_bus_that_cannot_open_at_start_is_down_and_retried_while_the_others_run() -> None:
    site = virtual_site(["can0", "can1"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
                                            {"name": "bms_1", "bus": "can1", "profile": "pylon-lv"}])
    unplugged = threading.Event()
    unplugged.set()
    attempts: list[str] = []

    def factory(config: BusConfig) -> can.BusABC:
        attempts.append(config.name)
        if config.name == "can0" and unplugged.is_set():
            raise can.CanInitializationError("no adapter on usb0")
        return can.Bus(interface="virtual", channel=config.channel)

    peer0 = can.Bus(interface="virtual", channel=site.bus("can0").channel)
    peer1 = can.Bus(interface="virtual", channel=site.bus("can1").channel)
    with Edge(site, bus_factory=factory) as edge:
        assert wait(lambda: edge.snapshot().value("can0/State") == BusState.DOWN)
        assert "no adapter on usb0" in str(edge.snapshot().value("can0/LastError"))
        peer1.send(can.Message(arbitration_id=0x355, data=bytes([61, 0, 95, 0]), is_extended_id=False))
        assert edge.read("bms_1/Soc", timeout=5).value == 61
        assert wait(lambda: attempts.count("can0") >= 3)  # retried with the backoff
        assert edge.snapshot().value("can0/State") == BusState.DOWN
        unplugged.clear()
        assert wait(lambda: edge.snapshot().value("can0/State") != BusState.DOWN)
        peer0.send(can.Message(arbitration_id=0x355, data=bytes([42, 0, 95, 0]), is_extended_id=False))
        assert edge.read("bms_0/Soc", timeout=5).value == 42
        assert edge.snapshot().value("can0/Reopens") == 1
    peer0.shutdown()
    peer1.shutdown()


# -- junk on a udp_multicast bus -----------------------------------------------------------------------------

GROUP = "239.74.163.5"
JUNK = [b"", b"\xc1", b"junk!", b"\x81\xa3foo\x01", bytes(range(256))]  # none is a packed CAN message


def test_junk_datagrams_on_udp_multicast_are_counted_and_skipped_never_a_reopen() -> None:
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 52000)
    site = parse_site({"site": {"org": "test", "name": "udp"},
                       "bus": [{"name": "can0", "interface": "udp_multicast", "channel": GROUP, "port": port}],
                       "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}]})
    socs: list[object] = []
    junk = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL, 1)
    peer = can.Bus(interface="udp_multicast", channel=GROUP, port=port)
    try:
        with Edge(site) as edge:
            edge.subscribe("bms_0/Soc", lambda _a, r: socs.append(r.value))
            for soc in range(1, 41):
                junk.sendto(JUNK[soc % len(JUNK)], (GROUP, port))
                peer.send(can.Message(arbitration_id=0x355, data=bytes([soc, 0, 95, 0]), is_extended_id=False))
                assert wait(lambda soc=soc: soc in socs), f"frame {soc} lost; got {socs[-5:]}"  # type: ignore[misc]
            assert wait(lambda: edge.snapshot().value("can0/RxErrors") == 40)
            snap = edge.snapshot()
    finally:
        peer.shutdown()
        junk.close()
    assert socs == list(range(1, 41))  # every real frame, in order
    assert snap.value("can0/Reopens") == 0
    assert snap.value("can0/State") != BusState.DOWN
    assert "received data skipped: could not unpack received message" in str(snap.value("can0/LastError"))


# -- the fuzzer sees adapter exceptions ----------------------------------------------------------------------


class RaisingAdapter(DbcAdapter):
    """A DBC adapter with a bug: it raises on every frame."""

    def on_frame(self, msg: can.Message, now_us: int) -> Any:
        raise ZeroDivisionError("bug in the decoder")


def raising_adapters() -> list[Any]:
    return [RaisingAdapter(DeviceConfig("buggy", "fuzz", "pylon-lv"), load_profile("pylon-lv"))]


def test_fuzz_reports_the_adapter_exceptions_the_dispatcher_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fuzz, "fuzz_adapters", raising_adapters)
    report = fuzz.run(frames=500, seed=1)
    mine = report.device_ids  # the frames on the adapter's own IDs reach it; it raises on each
    assert report.exceptions == [f"buggy.on_frame: ZeroDivisionError ({mine}x)"]
    assert report.adapter_exceptions == mine > 0
    assert report.counted_bad == mine  # still counted: every frame is accounted for
    r = CliRunner().invoke(app, ["fuzz", "--frames", "500", "--seed", "1", "--json"])
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["exceptions"] == [f"buggy.on_frame: ZeroDivisionError ({mine}x)"]


def test_an_adapter_raising_in_tick_stops_no_other_device_on_its_bus() -> None:
    class TickBug(DbcAdapter):
        def tick(self, now_us: int) -> Any:
            raise RuntimeError("tick bug")

    site = virtual_site(["can0"], [{"name": "a", "bus": "can0", "profile": "pylon-lv"},
                                   {"name": "b", "bus": "can0", "profile": "acme-hv"}])
    with Edge(site) as edge:
        d = edge.dispatchers["can0"]
        bug = TickBug(edge.adapters["a"].device, edge.adapters["a"].profile)
        d.replace_adapter(edge.adapters["a"], bug)
        dbc(edge, "b").supervisor.timeout_us = 50_000
        assert wait(lambda: state(edge, "b") == CommState.LOST)  # b is still supervised
        assert wait(lambda: isinstance(n := edge.snapshot().value("can0/AdapterErrors"), int) and n > 0)
        assert set(d.caught) == {"a.tick: RuntimeError"}
