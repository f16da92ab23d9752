"""Commissioning: devices stored with their bus and profile; collisions, bad addressing and taken names refused."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from emsbms.commissioning.commission import commission, suggest_name
from emsbms.db import EdgeDb
from emsbms.errors import ConfigError
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig
from tests.test_db import invoke, profile_copy

NAME = "0x9000A0005CA01F3A"


@pytest.fixture
def db(tmp_path: Path) -> Path:
    """A database with bus can0 (virtual) and device bms_0 (pylon-lv) on it."""
    path = tmp_path / "e.db"
    r = invoke(path, "commission", "bms_0", "--bus", "can0", "--profile", "pylon-lv", "--interface", "virtual",
               "--channel", f"com-{uuid.uuid4().hex[:8]}")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[0] == "commissioned bms_0 on bus can0 with profile pylon-lv 1.1.0"
    return path


def devices(path: Path) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = json.loads(invoke(path, "devices", "list", "--json").stdout)
    return rows


def test_a_colliding_device_is_refused_and_nothing_is_stored(db: Path) -> None:
    r = invoke(db, "commission", "bms_1", "--bus", "can0", "--profile", "pylon-lv")
    assert r.exit_code == 2
    assert r.stderr == (f"error: cannot commission 'bms_1' on bus 'can0': database {db}: [[device]] #2 'bms_1':"
                        " key 'bus' expected IDs no other device on bus 'can0' uses, found frame 0x351 (received),"
                        " already used by device 'bms_0' (received); put it on another bus or give it an id_offset\n")
    assert [d["name"] for d in devices(db)] == ["bms_0"]


def test_an_id_offset_or_another_bus_makes_room(db: Path) -> None:
    assert invoke(db, "commission", "bms_1", "--bus", "can0", "--profile", "pylon-lv", "--id-offset", "0x100",
                  ).exit_code == 0
    r = invoke(db, "commission", "bms_2", "--bus", "can1", "--profile", "pylon-lv", "--interface", "virtual")
    assert r.exit_code == 0 and r.stdout.splitlines()[1:] == [
        "bms_2: runs pylon-lv 1.1.0 (follows the newest pylon-lv; new device)",
        "stored bus can1 (virtual:can1, 500000 bit/s)"]
    rows = devices(db)
    assert [(d["name"], d["bus"], d.get("id_offset"), d["found_by"]) for d in rows] == [
        ("bms_0", "can0", None, "by hand"), ("bms_1", "can0", "0x100", "by hand"), ("bms_2", "can1", None, "by hand")]
    assert invoke(db, "devices", "list").stdout.splitlines()[1].split() == [
        "bms_1", "can0", "pylon-lv", "1.1.0", "id_offset=0x100", "by", "hand"]


def test_profiles_that_allow_shared_ids_may_share_a_bus(tmp_path: Path, db: Path) -> None:
    shared = profile_copy(tmp_path, name="shared-lv", edit=lambda d: d.update(allow_shared_ids=True))
    assert invoke(db, "commission", "s_0", "--bus", "can1", "--profile", str(shared), "--interface", "virtual"
                  ).exit_code == 0
    r = invoke(db, "commission", "s_1", "--bus", "can1", "--profile", "shared-lv")
    assert r.exit_code == 0, r.output
    r = invoke(db, "commission", "p_1", "--bus", "can1", "--profile", "pylon-lv")  # pylon-lv does not allow it
    assert r.exit_code == 2 and "found frame 0x351 (received), already used by device 's_0'" in r.stderr


def test_j1939_devices_with_the_same_name_are_refused(db: Path) -> None:
    args = ["--bus", "can2", "--profile", "j1939-hvess", "--interface", "virtual"]
    assert invoke(db, "commission", "hv_0", *args, "--name", NAME).exit_code == 0
    r = invoke(db, "commission", "hv_1", *args, "--name", NAME.lower())
    assert r.exit_code == 2
    assert r.stderr == (f"error: cannot commission 'hv_1' on bus 'can2': database {db}: [[device]] #3 'hv_1': key"
                        f" 'j1939_name' expected one no other device on bus 'can2' has, found {NAME}, already"
                        " device 'hv_0'\n")
    assert invoke(db, "commission", "hv_1", *args, "--name", "0x9000A0005CA01F3B").exit_code == 0
    assert [d.get("j1939_name") for d in devices(db)][1:] == [NAME, "0x9000A0005CA01F3B"]


def test_addressing_that_does_not_fit_the_protocol_is_refused(db: Path) -> None:
    r = invoke(db, "commission", "c_0", "--bus", "can0", "--profile", "cia418-bms")
    assert r.exit_code == 2
    assert r.stderr.endswith("device c_0: profile cia418-bms (canopen) needs node_id 1..127; found None\n")
    r = invoke(db, "commission", "c_0", "--bus", "can0", "--profile", "j1939-hvess", "--source-address", "0x1FF")
    assert r.exit_code == 2 and "expected 0..253; found 0x1FF" in r.stderr
    assert invoke(db, "commission", "c_0", "--bus", "can0", "--profile", "cia418-bms", "--node-id", "9").exit_code == 0


def test_names_and_buses_are_checked(tmp_path: Path, db: Path) -> None:
    r = invoke(db, "commission", "bms_0", "--bus", "can0", "--profile", "acme-hv")
    assert r.exit_code == 2 and "device 'bms_0' is already commissioned (bus can0, profile pylon-lv)" in r.stderr
    r = invoke(db, "commission", "can0", "--bus", "can0", "--profile", "acme-hv")
    assert r.exit_code == 2 and "device name 'can0' is the name of a bus" in r.stderr
    r = invoke(db, "commission", "x", "--bus", "can7", "--profile", "acme-hv")
    assert r.exit_code == 2
    assert r.stderr == ("error: bus 'can7' is not in the database (stored: can0); give --interface/--channel/--bitrate,"
                        " or --site with a [[bus]] of that name\n")
    site = tmp_path / "site.toml"
    site.write_text('[[bus]]\nname = "can7"\ninterface = "virtual"\nchannel = "seven"\nbitrate = 250000\n',
                    encoding="utf-8")
    r = invoke(db, "--site", str(site), "commission", "x", "--bus", "can7", "--profile", "acme-hv")
    assert r.exit_code == 0 and "stored bus can7 (virtual:seven, 250000 bit/s)" in r.stdout
    r = invoke(db, "commission", "y", "--bus", "can7", "--profile", "acme-lv-bytemap", "--interface", "virtual",
               "--channel", "other")
    assert r.exit_code == 2 and "bus 'can7' is already stored as virtual:seven at 250000 bit/s" in r.stderr


def test_a_profile_file_is_stored_and_a_version_can_be_pinned(tmp_path: Path, db: Path) -> None:
    v2 = profile_copy(tmp_path, version="2.0.0")
    r = invoke(db, "commission", "p2", "--bus", "can0", "--profile", str(v2), "--id-offset", "-0x10")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("commissioned p2 on bus can0 with profile pylon-lv 2.0.0 (id_offset -16)")
    r = invoke(db, "commission", "p1", "--bus", "can0", "--profile", "pylon-lv@1.1.0", "--id-offset", "0x200")
    assert r.exit_code == 0, r.output
    rows = {d["name"]: (d["profile"], d["version"]) for d in devices(db)}
    # bms_0 follows the newest stored version; p1 stays on the version it names
    assert rows == {"bms_0": ("pylon-lv", "2.0.0"), "p2": ("pylon-lv", "2.0.0"), "p1": ("pylon-lv@1.1.0", "1.1.0")}


def test_decommission(db: Path) -> None:
    r = invoke(db, "decommission", "bms_0")
    assert r.exit_code == 0 and r.stdout == "decommissioned bms_0 (bus can0, profile pylon-lv)\n"
    assert devices(db) == []
    r = invoke(db, "decommission", "bms_0")
    assert r.exit_code == 2 and r.stderr == "error: no commissioned device 'bms_0'; commissioned: none\n"
    assert invoke(db, "devices", "list").stdout == f"no devices commissioned in {db}\n"


def test_library_commission_checks_before_storing(tmp_path: Path) -> None:
    with EdgeDb(tmp_path / "e.db") as edge_db:
        bus = BusConfig("can0", "virtual", "lib")
        done = commission(edge_db, DeviceConfig("a", "can0", "acme-hv"), bus)
        assert done.new_bus and done.new_profile and done.profile.name == "acme-hv"
        again = commission(edge_db, DeviceConfig("b", "can0", "acme-hv", id_offset=0x40))
        assert not again.new_bus and not again.new_profile
        with pytest.raises(ConfigError, match=r"found frame 0x4A0 \(received\), already used by device 'a'"):
            commission(edge_db, DeviceConfig("c", "can0", "acme-hv", id_offset=0))
        assert [d.name for d in edge_db.site.devices()] == ["a", "b"]
    assert suggest_name("pylon-lv", ["pylon_lv", "pylon_lv_2"]) == "pylon_lv_3"
    assert suggest_name("cia418-bms", []) == "cia418_bms"
