"""The scan recognises real units: required vs optional messages, and identity evidence (0x35E, 0x1000, NAME)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import can
import canopen
import pytest

from emsbms.commissioning.canopen import CanopenNode, best_profile, shipped_canopen_identities
from emsbms.commissioning.evidence import Evidence
from emsbms.commissioning.j1939 import best_profile as best_j1939
from emsbms.commissioning.j1939 import shipped_j1939_matches
from emsbms.commissioning.passive import HIGH_CONFIDENCE, Traffic, score
from emsbms.commissioning.scan import Method, scan_bus
from emsbms.profile.loader import load_profile
from emsbms.protocols.canopen_od import load_od
from emsbms.protocols.j1939_names import decode_name, make_name
from emsbms.site import BusConfig
from tests.test_db import invoke


def core_frames(name: bytes = b"PYLON   ") -> list[tuple[int, bytes]]:
    """The six frames a genuine Pylontech sends and nothing else (values as PROTOCOLS.md lays them out)."""
    return [
        (0x351, bytes.fromhex("3802f4012003c001")),  # CVL 56.8 V, CCL 50.0 A, DCL 80.0 A, DVL 44.8 V
        (0x355, bytes.fromhex("3b0062000c17")),  # SoC 59 %, SoH 98 %, SoC 59.00 % (newer firmware: 6 bytes)
        (0x356, bytes.fromhex("5a1485fffa00")),  # 52.10 V, -12.3 A, 25.0 °C
        (0x359, bytes.fromhex("0000000002504e")),  # no alarms, 2 modules, "PN"
        (0x35C, bytes.fromhex("c000")),  # charge and discharge enabled
        (0x35E, name),
    ]


def heard(frames: list[tuple[int, bytes]], count: int = 3) -> Traffic:
    t = Traffic(seconds=3.0)
    for i in range(count):
        for can_id, data in frames:
            t.add(can.Message(arbitration_id=can_id, data=data, timestamp=100.0 + i, is_extended_id=False))
    return t


def test_a_unit_sending_only_the_required_messages_scores_high() -> None:
    pylon = load_profile("pylon-lv")
    nameless = score(heard(core_frames(bytes(8))), pylon, 0)  # 0x35E all zeros: no identity either way
    assert nameless is not None
    assert (nameless.required_heard, nameless.expected, nameless.coverage) == (6, 6, 1.0)
    assert nameless.identity.evidence is Evidence.UNKNOWN
    assert nameless.confidence == pytest.approx(1.0)  # 0.667 before: 6 of 9 messages counted
    assert nameless.optional_heard == 0 and nameless.optional >= 3  # 0x372, 0x373, 0x379 (and more) optional


def test_the_manufacturer_in_0x35E_moves_the_score() -> None:
    pylon = load_profile("pylon-lv")
    few = core_frames()[3:]  # 0x359, 0x35C, 0x35E: half the required messages, a middling message score
    matching = score(heard(few), pylon, 0)
    other = score(heard([*few[:2], (0x35E, b"ACME    ")]), pylon, 0)
    padded = score(heard([*few[:2], (0x35E, b"PYTES")]), pylon, 0)  # 5 bytes, another maker the profile names
    assert matching is not None and other is not None and padded is not None
    assert matching.messages == other.messages == pytest.approx(0.5)  # 3/6 required, all lengths and rates ok
    assert matching.identity.evidence is Evidence.MATCH and padded.identity.evidence is Evidence.MATCH
    assert matching.confidence == pytest.approx(0.5 + 0.5 * 0.5)
    assert other.identity.evidence is Evidence.MISMATCH
    assert other.confidence == pytest.approx(0.5 * 0.7)
    assert other.evidence().endswith("; messages 0.50; 0x35E 'ACME' is not PYLON/PYTES: 0.50 -> 0.35")
    assert matching.evidence().endswith("0x35E 'PYLON' matches PYLON/PYTES: 0.50 -> 0.75")
    full_other = score(heard(core_frames(b"ACME    ")), pylon, 0)
    assert full_other is not None and full_other.confidence == pytest.approx(0.7)  # below HIGH_CONFIDENCE 0.8


@contextmanager
def peer(channel: str, frames: list[tuple[int, bytes]], period: float = 1.0) -> Iterator[None]:
    """A device on a virtual bus that sends `frames` every `period` seconds until the block ends."""
    stop = threading.Event()

    def run() -> None:
        with can.Bus(interface="virtual", channel=channel) as bus:
            while not stop.is_set():
                for can_id, data in frames:
                    bus.send(can.Message(arbitration_id=can_id, data=data, is_extended_id=False))
                stop.wait(period)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def scan_cli(db: Path, channel: str, *extra: str) -> list[str]:
    return ["scan", "--interface", "virtual", "--channel", channel, "--method", "passive", "--listen", "2.5", *extra]


def test_scan_commission_yes_takes_a_unit_that_sends_only_the_core_frames(tmp_path: Path) -> None:
    channel = f"pylon-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "e.db"
    with peer(channel, core_frames()):
        r = invoke(db, *scan_cli(db, channel, "--json", "--commission", "--yes"))
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    best = doc["buses"][0]["candidates"][0]
    assert (best["profile"], best["required_heard"], best["expected"], best["identity"]) == ("pylon-lv", 6, 6, "match")
    assert best["confidence"] >= HIGH_CONFIDENCE and best["high"] is True
    assert "6/6 required messages heard (0x351, 0x355, 0x356, 0x359, 0x35C, 0x35E)" in best["evidence"]
    assert [(c["device"], c["profile"], c["before"], c["after"], c["pinned"]) for c in doc["commissioned"]] == [
        ("pylon_lv", "pylon-lv", None, "1.1.0", False)]
    rows = json.loads(invoke(db, "devices", "list", "--json").stdout)
    assert [(d["name"], d["profile"], d["bus"]) for d in rows] == [("pylon_lv", "pylon-lv", channel)]


def test_scan_yes_skips_a_unit_naming_another_manufacturer_and_says_why(tmp_path: Path) -> None:
    channel = f"acme-{uuid.uuid4().hex[:8]}"
    db = tmp_path / "e.db"
    with peer(channel, core_frames(b"ACME    ")):
        r = invoke(db, *scan_cli(db, channel, "--commission", "--yes"))
    assert r.exit_code == 0, r.output
    line = next(x for x in r.stdout.splitlines() if "pylon-lv" in x)
    assert "0x35E 'ACME' is not PYLON/PYTES" in line and "6/6 required messages heard" in line
    assert float(line.split()[0]) < HIGH_CONFIDENCE
    assert "skipped" in r.stderr and "pylon-lv" in r.stderr
    assert json.loads(invoke(db, "devices", "list", "--json").stdout) == []


# -- CANopen: the device profile number in 0x1000 ------------------------------------------------------


def test_canopen_profile_number_is_evidence_without_a_full_identity() -> None:
    ids = shipped_canopen_identities()
    own = best_profile(CanopenNode(1, device_type=0x1A2, vendor_id=0x454D5342, product_code=0x418), ids)
    unread = best_profile(CanopenNode(1, device_type=0x000201A2), ids)  # 418 in the low 16 bits, no 0x1018
    other = best_profile(CanopenNode(1, device_type=0x1A2, vendor_id=0x1234, product_code=0x418), ids)
    assert own is not None and own[:2] == ("cia418-bms", 1.0)
    assert unread is not None and unread[:2] == ("cia418-bms", 0.6)
    assert unread[2] == ("device_profile 418 matches, vendor_id unknown (profile: 0x454D5342),"
                         " product_code unknown (profile: 0x00000418)")
    assert other is not None and other[:2] == ("cia418-bms", 0.4)
    assert "vendor_id 0x00001234 is not 0x454D5342" in other[2]
    assert best_profile(CanopenNode(1, device_type=0x191, vendor_id=0x454D5342, product_code=0x418), ids) is None


def test_canopen_scan_of_real_nodes_scores_by_profile_number_and_identity() -> None:
    channel = f"co-{uuid.uuid4().hex[:8]}"
    eds = load_profile("cia418-bms").source_path
    assert eds is not None
    network = canopen.Network()
    network.connect(interface="virtual", channel=channel)
    try:
        other_maker = load_od(eds, 4)
        vendor = other_maker.get_variable(0x1018, 1)
        assert vendor is not None
        vendor.default = 0x00ABCDEF  # another vendor's CiA 418 battery
        io_module = load_od(eds, 6)
        device_type = io_module.get_variable(0x1000)
        assert device_type is not None
        device_type.default = 0x00000191  # CiA 401: not a battery
        for node_id, od in ((2, load_od(eds, 2)), (4, other_maker), (6, io_module)):
            network.add_node(canopen.LocalNode(node_id, od))
        result = scan_bus(BusConfig("can0", "virtual", channel), [load_profile("cia418-bms")], [Method.CANOPEN],
                          timeout=0.5)
    finally:
        network.disconnect()
    got = {c.node_id: (c.profile, c.confidence) for c in result.candidates}
    assert got == {2: ("cia418-bms", 1.0), 4: ("cia418-bms", 0.4), 6: (None, 0.0)}
    four = next(c for c in result.candidates if c.node_id == 4)
    assert four.evidence.endswith("device_profile 418 matches, vendor_id 0x00ABCDEF is not 0x454D5342,"
                                  " product_code 0x00000418 matches")
    assert not four.high


# -- J1939: the NAME's function ------------------------------------------------------------------------


def test_j1939_function_is_evidence_for_another_makers_ecu() -> None:
    matches = shipped_j1939_matches()
    own = decode_name(make_name(industry_group=1, function=160, manufacturer_code=741, identity_number=7))
    other = decode_name(make_name(industry_group=1, function=160, manufacturer_code=99, identity_number=7))
    engine = decode_name(make_name(industry_group=1, function=0, manufacturer_code=741))
    assert best_j1939(own, matches) == ("j1939-hvess", 0.9, "industry_group 1 matches, function 160 matches,"
                                        " manufacturer_code 741 matches")
    found = best_j1939(other, matches)
    assert found is not None and found[:2] == ("j1939-hvess", 0.4)
    assert "manufacturer_code 99 is not 741" in found[2]
    assert best_j1939(engine, matches) is None

