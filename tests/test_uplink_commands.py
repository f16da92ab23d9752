"""Commands from the cloud: at most once (a SQLite ledger), never late, validated by the edge, never an exception.

A real Edge on a virtual bus with a simulated BMS, and a separate node that captures what is sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.edge import Edge
from emsbms.sim.runner import Simulation
from emsbms.types import CommState
from emsbms.uplink.commands import CommandHandler, Ledger, parse_command
from tests.conftest import virtual_site, wait

LV_COMMAND = 0x618  # acme-lv-bytemap SetChargeCurrent: one frame, 0.1 A/bit little-endian, no acknowledgement


def now() -> int:
    return time.time_ns() // 1000


def cmd(id: str, value: Any, deadline_us: int | None = None, address: str = "lv/SetChargeCurrent") -> bytes:
    body = {"id": id, "address": address, "value": value, "deadline_us": deadline_us or now() + 10_000_000}
    return json.dumps(body).encode()


def result(raw: bytes | None) -> dict[str, Any]:
    assert raw is not None
    out = json.loads(raw)
    assert isinstance(out, dict)
    return out


class Capture:
    """Every frame with the command's ID that a separate node on the bus receives."""

    def __init__(self, bus: can.BusABC) -> None:
        self.bus = bus
        self.frames: list[str] = []

    def until(self, data_hex: str) -> list[str]:
        """Collect frames until one carrying `data_hex` arrives (the marker that ends a test)."""
        def got() -> bool:
            m = self.bus.recv(0.05)
            if m is not None and m.arbitration_id == LV_COMMAND:
                self.frames.append(bytes(m.data).hex().upper())
            return data_hex in self.frames
        assert wait(got, 10.0), self.frames
        return self.frames


@contextmanager
def lv_edge(tmp_path: Path) -> Iterator[tuple[Edge, Capture, Path]]:
    site = virtual_site(["can0"], [{"name": "lv", "bus": "can0", "profile": "acme-lv-bytemap"}])
    with Simulation(site), Edge(site) as edge, can.Bus(interface="virtual", channel=site.bus("can0").channel) as bus:
        assert edge.wait_until(lambda s: s.value("lv/CommState") == CommState.OK, 10.0)  # commands need OK
        yield edge, Capture(bus), tmp_path / "edge.db"


def test_a_redelivered_id_sends_its_frame_once_and_is_answered_with_the_first_result(tmp_path: Path) -> None:
    with lv_edge(tmp_path) as (edge, capture, db):
        handler = CommandHandler(edge, db)
        first = handler.handle(cmd("c-1", 20), now())
        again = handler.handle(cmd("c-1", 20), now())  # a QoS 1 redelivery
        other = handler.handle(cmd("c-1", 35), now())  # the same id, another value: still the first result
        result(handler.handle(cmd("c-2", 30), now()))  # the marker: 30 A
        frames = capture.until("2C01")
        handler.close()
    assert frames == ["C800", "2C01"]  # 20 A once, then the marker
    assert again == first and other == first
    body = result(first)
    assert body["id"] == "c-1" and body["status"] == "sent" and body["address"] == "lv/SetChargeCurrent"
    assert body["value"] == 20.0 and "no acknowledgement" in body["detail"]
    assert isinstance(body["took_us"], int) and body["took_us"] >= 0


def test_the_ledger_survives_a_restart_and_answers_a_command_the_crash_interrupted_as_unknown(tmp_path: Path) -> None:
    with lv_edge(tmp_path) as (edge, capture, db):
        first = CommandHandler(edge, db)
        done = first.handle(cmd("done-1", 20), now())
        first.close()
        crashed = Ledger(db)  # a process that recorded "running" and died before the result
        assert crashed.claim(parse_command(cmd("crash-1", 25)), now()) is None
        crashed.close()
        restarted = CommandHandler(edge, db)
        repeat = restarted.handle(cmd("done-1", 20), now())
        interrupted = result(restarted.handle(cmd("crash-1", 25), now()))
        interrupted_again = result(restarted.handle(cmd("crash-1", 25), now()))
        result(restarted.handle(cmd("marker", 30), now()))
        frames = capture.until("2C01")
        restarted.close()
    assert repeat == done
    assert frames == ["C800", "2C01"]  # 25 A (FA00) never sent
    assert interrupted["status"] == "unknown" and interrupted["id"] == "crash-1"
    assert "restarted while this command ran" in interrupted["detail"]
    assert interrupted_again == interrupted


def test_a_command_past_its_deadline_is_expired_and_sends_nothing(tmp_path: Path) -> None:
    with lv_edge(tmp_path) as (edge, capture, db):
        handler = CommandHandler(edge, db)
        arrived = now()
        late = result(handler.handle(cmd("late-1", 25, deadline_us=arrived - 1_500_000), arrived))
        late_again = result(handler.handle(cmd("late-1", 25, deadline_us=arrived - 1_500_000), now()))
        result(handler.handle(cmd("marker", 30), now()))
        frames = capture.until("2C01")
        handler.close()
    assert frames == ["2C01"]
    assert late["status"] == "expired" and late["id"] == "late-1"
    assert "1.500 s after its deadline; not executed" in late["detail"]
    assert late_again == late


def test_a_value_beyond_the_profile_limit_is_rejected_by_the_edge_and_sends_nothing(tmp_path: Path) -> None:
    with lv_edge(tmp_path) as (edge, capture, db):
        handler = CommandHandler(edge, db)
        high = result(handler.handle(cmd("high-1", 150), now()))
        not_a_command = result(handler.handle(cmd("soc-1", 50, address="lv/Soc"), now()))
        result(handler.handle(cmd("marker", 30), now()))
        frames = capture.until("2C01")
        handler.close()
    assert frames == ["2C01"]
    assert high["status"] == "rejected" and "maximum 100.0 A" in high["detail"]
    assert not_a_command["status"] == "rejected" and "lv/Soc is not a command channel" in not_a_command["detail"]


@pytest.mark.parametrize(
    ("payload", "id", "detail"),
    [
        (b"SetChargeCurrent=20", None, "cmd: expected a JSON object, found text that is not JSON"),
        (b"\xff\xfe", None, "cmd: expected a JSON object, found text that is not JSON"),
        (b"[1, 2]", None, "cmd: expected a JSON object, found list"),
        (b'{"address": "lv/SetChargeCurrent", "value": 20, "deadline_us": 1}', None,
         "cmd: key 'id': expected a non-empty string, found nothing"),
        (b'{"id": 7, "address": "lv/SetChargeCurrent", "value": 20, "deadline_us": 1}', None,
         "cmd: key 'id': expected a non-empty string, found int 7"),
        (b'{"id": "v-1", "address": "lv/SetChargeCurrent", "value": "20", "deadline_us": 1}', "v-1",
         "cmd v-1: key 'value': expected a number, found str '20'"),
        (b'{"id": "v-2", "address": "lv/SetChargeCurrent", "value": NaN, "deadline_us": 1}', "v-2",
         "cmd v-2: key 'value': expected a finite number, found nan"),
        (b'{"id": "v-3", "address": "lv/SetChargeCurrent", "value": true, "deadline_us": 1}', "v-3",
         "cmd v-3: key 'value': expected a number, found bool true"),
        (b'{"id": "d-1", "address": "lv/SetChargeCurrent", "value": 20}', "d-1",
         "cmd d-1: key 'deadline_us': expected an integer (µs since the epoch), found nothing"),
        (b'{"id": "a-1", "value": 20, "deadline_us": 1}', "a-1",
         "cmd a-1: key 'address': expected 'device/Channel', found nothing"),
    ],
)
def test_a_malformed_payload_is_rejected_naming_what_was_expected_and_found(
    tmp_path: Path, payload: bytes, id: str | None, detail: str
) -> None:
    site = virtual_site(["can0"], [{"name": "lv", "bus": "can0", "profile": "acme-lv-bytemap"}])
    handler = CommandHandler(Edge(site), tmp_path / "edge.db")  # never started: nothing may be written
    body = result(handler.handle(payload, now()))
    handler.close()
    assert body["status"] == "rejected"
    assert body["id"] == id
    assert body["detail"].startswith(detail), body["detail"]
    assert body["detail"].endswith("; nothing sent")


def test_done_ledger_rows_are_kept_for_the_retention_after_their_deadline_then_dropped(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "edge.db", retention_us=60_000_000)
    t0 = 1_000_000_000_000
    for i in range(3):
        c = parse_command(cmd(f"old-{i}", 1, deadline_us=t0 + i))
        assert ledger.claim(c, t0) is None
        ledger.finish(c.id, b'{"status":"sent"}')
    running = parse_command(cmd("running-1", 1, deadline_us=t0))
    assert ledger.claim(running, t0) is None  # never finished: kept, it answers "unknown" after a restart
    assert ledger.count() == 4
    later = t0 + 60_000_001  # the retention has passed for deadline t0, not for t0 + 1
    assert ledger.claim(parse_command(cmd("new-1", 1, deadline_us=later + 1)), later) is None
    assert ledger.count() == 4  # old-0 dropped, new-1 added; running-1 kept although its deadline is t0
    kept = ledger.claim(parse_command(cmd("old-1", 1, deadline_us=t0 + 1)), later)
    assert kept == ("done", '{"status":"sent"}', True)
    assert ledger.claim(parse_command(cmd("old-0", 1, deadline_us=t0)), later) is None  # forgotten: claimed anew
    ledger.close()


def test_an_acknowledged_command_reports_acked_with_the_time_the_edge_took(tmp_path: Path) -> None:
    site = virtual_site(["can0"], [{"name": "hv", "bus": "can0", "profile": "acme-hv"}])
    with Simulation(site) as sim, Edge(site) as edge:
        assert edge.wait_until(lambda s: s.value("hv/CommState") == CommState.OK, 10.0)  # commands need OK
        handler = CommandHandler(edge, tmp_path / "edge.db")
        body = result(handler.handle(cmd("b-1", 1, address="hv/EnableBalancing"), now()))
        handler.close()
        balancing = sim.simulators["hv"].model.balancing
    assert body["status"] == "acked" and body["id"] == "b-1", body
    assert "BalancingRequestEcho" in body["detail"]
    assert body["took_us"] > 0
    assert balancing is True
