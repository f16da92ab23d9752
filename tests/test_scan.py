"""The unified scan: passive scoring, and scan-and-commission against simulators of all three protocols."""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path

import can
import pytest

from emsbms.commissioning.passive import Traffic, expected_messages, match_traffic, score
from emsbms.demo import site_toml
from emsbms.edge import Edge
from emsbms.profile.loader import load_profile
from emsbms.sim.runner import Simulation
from emsbms.site import load_site
from tests.test_db import invoke

# pylon-lv as PROTOCOLS.md and dbc/pylon_lv.dbc define it: (ID, DLC) of what the battery sends
PYLON = [(0x351, 8), (0x355, 6), (0x356, 6), (0x359, 7), (0x35A, 8), (0x35C, 2), (0x35E, 8), (0x372, 8), (0x373, 8),
         (0x379, 2)]
OPTIONAL = {0x35A, 0x372, 0x373, 0x379}  # genuine units may send only the other six


def traffic(frames: list[tuple[int, int]], offset: int = 0, period: float = 1.0, count: int = 3) -> Traffic:
    t = Traffic(seconds=3.0)
    for i in range(count):
        for can_id, dlc in frames:
            t.add(can.Message(arbitration_id=can_id + offset, dlc=dlc, data=bytes(dlc), timestamp=100.0 + i * period,
                              is_extended_id=False))
    return t


def test_expected_messages_leave_out_what_the_edge_sends() -> None:
    pylon = expected_messages(load_profile("pylon-lv"))
    assert sorted((e.key, e.length) for e in pylon) == PYLON  # not 0x305, the edge's keepalive
    assert {e.name: e.min_dlc for e in pylon}["PYLON_Limits"] == 6
    assert sorted(e.key for e in expected_messages(load_profile("acme-hv"))) == list(range(0x4A0, 0x4A6))


def test_a_shifted_id_pattern_is_found_with_its_offset() -> None:
    heard = traffic(PYLON, offset=0x100)
    matches = match_traffic(heard, [load_profile(n) for n in ("pylon-lv", "acme-hv", "acme-lv-bytemap")])
    best = matches[0]
    assert (best.profile, best.id_offset, best.coverage) == ("pylon-lv", 0x100, 1.0)
    assert best.confidence == pytest.approx(0.9)  # a perfect fit, times 0.9 for a bridge offset
    assert score(heard, load_profile("pylon-lv"), 0) is None  # nothing heard at the profile's own IDs
    assert all(m.profile != "pylon-lv" or m.alternative_to for m in matches[1:])


def test_wrong_lengths_and_rates_lower_the_confidence() -> None:
    pylon = load_profile("pylon-lv")
    exact = score(traffic(PYLON), pylon, 0)
    assert exact is not None and exact.confidence == pytest.approx(1.0)
    padded = score(traffic([(i, 8) for i, _ in PYLON]), pylon, 0)  # excess bytes are ignored: a right length
    assert padded is not None and padded.dlc_ok == 1.0 and padded.confidence == pytest.approx(1.0)
    short = [(i, 3 if i == 0x355 else d) for i, d in PYLON]  # below PYLON_SocSoh's min_dlc 4
    m = score(traffic(short), pylon, 0)
    assert m is not None and m.dlc_ok == pytest.approx(9 / 10)
    messages = 0.5 + 0.25 * 9 / 10 + 0.25
    assert m.confidence == pytest.approx(messages + (1 - messages) * 0.2)  # every optional message heard
    fast = score(traffic(PYLON, period=0.25, count=12), pylon, 0)  # four times the profile's 1 s rate
    assert fast is not None and fast.rate_ok == 0.0 and fast.confidence == pytest.approx(0.75 + 0.25 * 0.2)
    few = score(traffic(PYLON[:2]), pylon, 0)  # 2 of the 6 required messages, no optional one
    assert few is not None and few.confidence == pytest.approx(2 / 6 * 1.0 * 2 / 3)
    required = score(traffic([f for f in PYLON if f[0] not in OPTIONAL]), pylon, 0)
    assert required is not None and required.confidence == pytest.approx(1.0)


def three_protocols(tag: str) -> dict[str, object]:
    return {
        "site": {"org": "test", "name": "scan"},
        "bus": [{"name": f"can{i}", "interface": "virtual", "channel": f"scan-{tag}-{i}"} for i in range(3)],
        "device": [
            {"name": "sim_pylon", "bus": "can0", "profile": "pylon-lv"},
            {"name": "sim_lv", "bus": "can0", "profile": "acme-lv-bytemap", "id_offset": 0x20},
            {"name": "sim_co", "bus": "can1", "profile": "cia418-bms", "node_id": 5},
            {"name": "sim_j", "bus": "can2", "profile": "j1939-hvess", "j1939_name": 0x9000A0005CA01F3A,
             "source_address": 0xF3},
        ],
    }


def test_scan_and_commission_every_protocol_then_run_from_the_database(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    site_file.write_text(site_toml(three_protocols(uuid.uuid4().hex[:8])), encoding="utf-8")
    db = tmp_path / "e.db"
    with Simulation(load_site(site_file)) as sim:
        sim_j = sim.simulators["sim_j"]
        deadline = time.monotonic() + 5.0
        while getattr(sim_j, "address", None) is None and time.monotonic() < deadline:
            time.sleep(0.02)
        r = invoke(db, "--site", str(site_file), "scan", "--listen", "2.5", "--timeout", "1.0", "--json",
                   "--commission", "--yes")
        assert r.exit_code == 0, r.output
        doc = json.loads(r.stdout)
        got = {(c["device"], c["bus"], c["profile"], c["method"]) for c in doc["commissioned"]}
        assert got == {("pylon_lv", "can0", "pylon-lv", "passive"), ("acme_lv_bytemap", "can0", "acme-lv-bytemap",
                        "passive"), ("cia418_bms", "can1", "cia418-bms", "canopen"),
                       ("j1939_hvess", "can2", "j1939-hvess", "j1939")}
        by_device = {c["device"]: c for c in doc["commissioned"]}
        assert by_device["acme_lv_bytemap"]["id_offset"] == 0x20
        assert by_device["cia418_bms"]["node_id"] == 5
        assert (by_device["j1939_hvess"]["j1939_name"], by_device["j1939_hvess"]["source_address"]) == (
            "0x9000A0005CA01F3A", 0xF3)
        assert [b["frames_heard"] > 0 for b in doc["buses"]] == [True, True, True]
        rows = json.loads(invoke(db, "devices", "list", "--json").stdout)
        assert {d["name"]: d["found_by"].split()[:2] for d in rows} == {
            "pylon_lv": ["scan:", "passive"], "acme_lv_bytemap": ["scan:", "passive"],
            "cia418_bms": ["scan:", "canopen"], "j1939_hvess": ["scan:", "j1939"]}
        with Edge.from_db(db) as edge:
            for device in ("pylon_lv", "acme_lv_bytemap", "cia418_bms", "j1939_hvess"):
                assert edge.read(f"{device}/Soc", timeout=10.0).value is not None, device
        again = json.loads(invoke(db, "scan", "--bus", "can0", "--method", "passive", "--listen", "2.5",
                                  "--json").stdout)  # from the database's buses: now known devices
        known = {c["profile"]: c["device"] for c in again["buses"][0]["candidates"] if c["alternative_to"] is None}
        assert known == {"pylon-lv": "pylon_lv", "acme-lv-bytemap": "acme_lv_bytemap"}


def test_scan_commission_asks_and_names(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    tables = three_protocols(uuid.uuid4().hex[:8])
    site_file.write_text(site_toml(tables), encoding="utf-8")
    db = tmp_path / "e.db"
    with Simulation(load_site(site_file), devices=["sim_pylon", "sim_lv"]):
        r = invoke(db, "--site", str(site_file), "scan", "--bus", "can0", "--method", "passive", "--listen", "2.5",
                   "--commission", input="y\nmy_pylon\nn\n")
    assert r.exit_code == 0, r.output
    assert "commissioned my_pylon on bus can0 with profile pylon-lv 1.1.0" in r.stderr
    assert "my_pylon: runs pylon-lv 1.1.0 (follows the newest pylon-lv; new device)" in r.stderr.splitlines()
    assert [(d["name"], d["profile"]) for d in json.loads(invoke(db, "devices", "list", "--json").stdout)] == [
        ("my_pylon", "pylon-lv")]
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"bus can0 (virtual:{tables['bus'][0]['channel']}): ")  # type: ignore[index]
    assert lines[1].split()[:3] == ["1.00", "pylon-lv", "1.1.0"]


def listen_while(channel: str, action: threading.Thread) -> list[can.Message]:
    got: list[can.Message] = []
    with can.Bus(interface="virtual", channel=channel) as bus:
        action.start()
        while action.is_alive():
            msg = bus.recv(0.05)
            if msg is not None:
                got.append(msg)
        action.join()
    return got


def test_passive_listening_sends_nothing_and_methods_send_only_what_they_need(tmp_path: Path) -> None:
    channel = f"quiet-{uuid.uuid4().hex[:8]}"
    results: list[int] = []

    def scan(*args: str) -> threading.Thread:
        return threading.Thread(target=lambda: results.append(invoke(
            tmp_path / "e.db", "scan", "--interface", "virtual", "--channel", channel, *args).exit_code))

    assert listen_while(channel, scan("--method", "passive", "--listen", "0.5")) == []
    sent = listen_while(channel, scan("--method", "canopen", "--timeout", "0.2"))
    assert sorted(m.arbitration_id for m in sent) == list(range(0x601, 0x680))  # one SDO upload per node ID
    assert {bytes(m.data) for m in sent} == {bytes([0x40, 0x00, 0x10, 0x00, 0, 0, 0, 0])}
    sent = listen_while(channel, scan("--method", "j1939", "--timeout", "0.2"))
    assert [(m.arbitration_id, bytes(m.data)) for m in sent] == [(0x18EAFFFE, bytes([0x00, 0xEE, 0x00]))]
    assert results == [0, 0, 0]
    assert not (tmp_path / "e.db").exists()  # a scan without --commission never creates the database


def test_a_bus_that_cannot_be_opened_is_reported(tmp_path: Path) -> None:
    r = invoke(tmp_path / "e.db", "scan", "--interface", "no_such_interface", "--channel", "x", "--listen", "0.1")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: bus x: scan: cannot open bus x (no_such_interface:x):")
    assert "failed: scan: cannot open bus x" in r.stdout
