"""The command line, in process: every command against simulators on python-can virtual buses."""

from __future__ import annotations

import dataclasses
import json
import re
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from emsbms import demo
from emsbms.cli import app
from emsbms.demo import demo_tables, site_toml
from emsbms.edge import Edge
from emsbms.profile import load_profile
from emsbms.sim.runner import Simulation
from emsbms.site import Site, load_site
from emsbms.types import Reading

runner = CliRunner()


def site_tables(tag: str) -> dict[str, Any]:
    return {
        "site": {"org": "test", "name": "cli"},
        "bus": [{"name": f"can{i}", "interface": "virtual", "channel": f"cli-{tag}-can{i}"} for i in range(3)],
        "device": [
            {"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
            {"name": "hv_0", "bus": "can1", "profile": "acme-hv"},
            {"name": "lv_0", "bus": "can2", "profile": "acme-lv-bytemap"},
        ],
    }


def write_site(path: Path, tables: dict[str, Any]) -> Path:
    path.write_text(site_toml(tables), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def live_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Simulation]]:
    """A site file and a running simulation of its three devices (shared by the module)."""
    path = write_site(tmp_path_factory.mktemp("cli") / "site.toml", site_tables(uuid.uuid4().hex[:8]))
    with Simulation(load_site(path)) as sim:
        yield path, sim


@pytest.fixture
def idle_site(tmp_path: Path) -> Path:
    """A site file whose buses nobody else uses: nothing will ever answer."""
    return write_site(tmp_path / "idle.toml", site_tables(uuid.uuid4().hex[:8]))


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


# -- read ------------------------------------------------------------------------------------------


def test_read_json_values(live_site: tuple[Path, Simulation]) -> None:
    path, sim = live_site
    started_us = time.time_ns() // 1000
    r = invoke("--site", str(path), "read", "bms_0/Soc", "bms_0/Voltage", "hv_0/Soc", "lv_0/Temperature",
               "--json", "--timeout", "15")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert list(doc) == ["bms_0/Soc", "bms_0/Voltage", "hv_0/Soc", "lv_0/Temperature"]
    assert {a: v["unit"] for a, v in doc.items()} == {
        "bms_0/Soc": "%", "bms_0/Voltage": "V", "hv_0/Soc": "%", "lv_0/Temperature": "°C"}
    assert all(v["quality"] == "ok" and v["timestamp_us"] >= started_us for v in doc.values())
    # pylon sends SoC as whole percent: the simulator's model is within one percent of it
    assert abs(doc["bms_0/Soc"]["value"] - sim.simulators["bms_0"].model.soc) <= 1.0
    # 16 LFP cells: 48..57 V; the HV pack has 96 cells
    assert 48.0 <= doc["bms_0/Voltage"]["value"] <= 57.0
    assert 0.0 <= doc["hv_0/Soc"]["value"] <= 100.0


def test_read_text_output(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "read", "hv_0/Capacity", "--timeout", "15")
    assert r.exit_code == 0, r.output
    assert re.fullmatch(r"hv_0/Capacity  120 Ah  ok\n", r.stdout), r.stdout


def test_read_timeout_names_the_missing_address(idle_site: Path) -> None:
    r = invoke("--site", str(idle_site), "read", "bms_0/Soc", "--json", "--timeout", "0.3")
    assert r.exit_code == 3
    assert json.loads(r.stdout) == {"bms_0/Soc": None}
    assert "timeout: no value within 0.3 s for bms_0/Soc" in r.stderr


def test_read_unknown_address_exits_2(idle_site: Path) -> None:
    r = invoke("--site", str(idle_site), "read", "bms_9/Soc")
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: unknown device 'bms_9'")
    assert "devices: bms_0, hv_0, lv_0; buses: can0, can1, can2" in r.stderr  # buses apart (issue 13)
    r = invoke("--site", str(idle_site), "read", "bms_0/Bogus")
    assert r.exit_code == 2
    assert "unknown channel 'bms_0/Bogus'; bms_0 has:" in r.stderr and "Soc" in r.stderr


# -- write -----------------------------------------------------------------------------------------


def test_write_acked(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "write", "hv_0/SetChargeCurrent", "50", "--json", "--timeout", "10")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["address"] == "hv_0/SetChargeCurrent"
    assert doc["value"] == 50.0
    assert doc["status"] == "acked"


def test_write_bool_command_acked_in_text(live_site: tuple[Path, Simulation]) -> None:
    path, sim = live_site
    r = invoke("--site", str(path), "write", "hv_0/EnableBalancing", "true", "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("acked: ")
    assert sim.simulators["hv_0"].model.balancing is True


def test_write_out_of_range_is_rejected(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "write", "hv_0/SetChargeCurrent", "5000", "--json", "--timeout", "10")
    assert r.exit_code == 4
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected"
    assert "above the maximum 200" in doc["detail"]


def test_write_without_acknowledgement_is_sent(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "write", "lv_0/SetChargeCurrent", "20", "--json", "--timeout", "10")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["status"] == "sent"


def test_write_rejected_when_nobody_answers(idle_site: Path) -> None:
    r = invoke("--site", str(idle_site), "write", "hv_0/SetChargeCurrent", "50", "--json", "--timeout", "0.3")
    assert r.exit_code == 4  # never heard: refused with nothing sent (it used to wait for the echo: exit 3)
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected"
    assert doc["detail"] == "hv_0 is WAITING (never heard since start): commands need CommState OK; nothing sent"


def test_write_unknown_or_non_command_exits_2(idle_site: Path) -> None:
    r = invoke("--site", str(idle_site), "write", "hv_0/SetWarpSpeed", "9")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: unknown channel 'hv_0/SetWarpSpeed'")
    r = invoke("--site", str(idle_site), "write", "hv_0/Soc", "50")
    assert r.exit_code == 2
    assert ("error: hv_0/Soc is not a command channel; hv_0 commands: SetChargeCurrent, SetDischargeCurrent,"
            " EnableBalancing, ResetFaults") in r.stderr
    r = invoke("--site", str(idle_site), "write", "hv_0/SetChargeCurrent", "fifty")
    assert r.exit_code == 2
    assert "expected a number or true/false, found 'fifty'" in r.output


# -- run -------------------------------------------------------------------------------------------


def test_run_logs_rows_into_sqlite(live_site: tuple[Path, Simulation], tmp_path: Path) -> None:
    path, _ = live_site
    db = tmp_path / "edge.db"
    r = invoke("--site", str(path), "run", "--duration", "2", "--db", str(db))
    assert r.exit_code == 0, r.output
    assert f"samples written to {db}, 0 dropped" in r.stderr
    with sqlite3.connect(db) as conn:
        units = dict(conn.execute(
            "SELECT address, unit FROM samples WHERE address IN"
            " ('bms_0/Soc', 'bms_0/Voltage', 'hv_0/Current', 'lv_0/Temperature', 'can0/RxRate') GROUP BY address"
        ).fetchall())
        assert units == {"bms_0/Soc": "%", "bms_0/Voltage": "V", "hv_0/Current": "A",
                         "lv_0/Temperature": "°C", "can0/RxRate": "frames/s"}
        (soc,) = conn.execute("SELECT value FROM samples WHERE address = 'hv_0/Soc' LIMIT 1").fetchone()
        assert 0 <= soc <= 100
        # acme-hv sends its pack frame every 100 ms: 2 s give well over 5 rows
        (n,) = conn.execute("SELECT COUNT(*) FROM samples WHERE address = 'hv_0/Voltage'").fetchone()
        assert n >= 5
        assert conn.execute("SELECT unit, kind FROM channels WHERE address = 'hv_0/SetChargeCurrent'").fetchone() \
            == ("A", "command")


def test_run_uses_global_db_option_and_env_site(live_site: tuple[Path, Simulation], tmp_path: Path) -> None:
    path, _ = live_site
    db = tmp_path / "env.db"
    r = runner.invoke(app, ["--db", str(db), "run", "--duration", "0.5"], env={"EMSBMS_SITE": str(path)})
    assert r.exit_code == 0, r.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT site FROM runs").fetchone() == ("cli",)


# -- simulate --------------------------------------------------------------------------------------


def test_simulate_feeds_an_edge_and_injects_faults(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    path = write_site(tmp_path / "sim.toml", site_tables(tag))
    levels: list[int] = []
    with Edge(load_site(path)) as edge:
        def note(address: str, reading: Reading) -> None:
            levels.append(int(reading.value))  # type: ignore[arg-type]

        edge.subscribe("bms_0/Alarm/OverTemperature", note)
        started = time.time_ns() // 1000
        r = invoke("--site", str(path), "simulate", "--duration", "2", "--device", "bms_0", "--device", "hv_0",
                   "--fault", "bms_0:overtemp")
        assert r.exit_code == 0, r.output
        assert "simulate: bms_0, hv_0; faults: bms_0:overtemp" in r.stderr
        snap = edge.snapshot()
    assert snap["hv_0/Soc"].timestamp_us >= started
    assert snap["bms_0/Temperature"].value >= 55.0  # type: ignore[operator]
    assert 2 in levels
    assert "lv_0/Soc" not in snap  # not simulated


def test_simulate_rejects_bad_devices_and_faults(idle_site: Path) -> None:
    r = invoke("--site", str(idle_site), "simulate", "--device", "nope")
    assert r.exit_code == 2 and "--device 'nope': not a device" in r.stderr
    r = invoke("--site", str(idle_site), "simulate", "--fault", "bms_0:meltdown", "--duration", "0")
    assert r.exit_code == 2 and "unknown fault 'meltdown'" in r.stderr
    r = invoke("--site", str(idle_site), "simulate", "--fault", "bms_0")
    assert r.exit_code == 2 and "expected DEVICE:FAULT" in r.stderr


# -- monitor and demo ------------------------------------------------------------------------------


def test_monitor_shows_channels_and_buses(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "monitor", "--duration", "2.5", "--device", "hv_0")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    assert lines[0].startswith("emsbms monitor · cli  1 device  1 bus ")
    assert any(re.match(r"can1 +unknown ", line) for line in lines)  # hv_0's bus only
    assert not any(line.startswith("can0") for line in lines)
    assert any(line.startswith("─ hv_0 ") for line in lines)
    assert re.search(r" Capacity +120 Ah +[0-9.]+s ", r.stdout)
    assert "bms_0" not in r.stdout
    assert max(len(line) for line in lines) <= 80


def test_monitor_bus_filter_and_bad_filter(live_site: tuple[Path, Simulation]) -> None:
    path, _ = live_site
    r = invoke("--site", str(path), "monitor", "--duration", "0.3", "--bus", "can2")
    assert r.exit_code == 0, r.output
    assert "lv_0" in r.stdout and "hv_0" not in r.stdout
    r = invoke("--site", str(path), "monitor", "--bus", "can7")
    assert r.exit_code == 2 and "--bus 'can7': not a bus of the site; known: can0, can1, can2" in r.stderr


def test_demo_runs_and_exits_by_itself() -> None:
    t0 = time.monotonic()
    r = invoke("demo", "--duration", "2")
    assert r.exit_code == 0, r.output
    assert time.monotonic() - t0 < 20
    lines = r.stdout.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    # the device pane lists one device per shipped profile, and pylon-lv twice (identical IDs, two buses)
    column = lines[1].index("Device")
    devices = [line[column:].split()[0] for line in lines[2:] if line.startswith("can")]
    assert {"acme_hv", "acme_lv_bytemap", "pylon_lv", "pylon_lv_2"} <= set(devices)


def test_demo_write_site(tmp_path: Path) -> None:
    out = tmp_path / "demo.toml"
    r = invoke("demo", "--write-site", str(out))
    assert r.exit_code == 0, r.output
    site: Site = load_site(out)
    assert {b.interface for b in site.buses} == {"udp_multicast"}
    assert len({b.options["port"] for b in site.buses}) == len(site.buses)
    assert [d.profile for d in site.devices].count("pylon-lv") == 2


# -- profiles --------------------------------------------------------------------------------------


def test_profiles_list() -> None:
    r = invoke("profiles", "list")
    assert r.exit_code == 0
    assert re.search(r"^pylon-lv +1\.1\.0 +dbc ", r.stdout, re.M)
    names = [p["name"] for p in json.loads(invoke("profiles", "list", "--json").stdout)]
    assert {"pylon-lv", "acme-hv", "acme-lv-bytemap"} <= set(names)


def test_profiles_show() -> None:
    r = invoke("profiles", "show", "acme-hv")
    assert r.exit_code == 0
    assert re.search(r"^  SetChargeCurrent +0\.\.200 A  ack: echo, every 100 ms for 30 s$", r.stdout, re.M)
    assert re.search(r"^  Soc +% +ACME_Pack\.PackSoc$", r.stdout, re.M)
    doc = json.loads(invoke("profiles", "show", "pylon-lv", "--json").stdout)
    assert doc["name"] == "pylon-lv" and doc["channels"]["Soc"]["unit"] == "%"
    r = invoke("profiles", "show", "no-such-profile")
    assert r.exit_code == 2 and "unknown profile 'no-such-profile'" in r.stderr


def test_profiles_validate(tmp_path: Path) -> None:
    good = Path(__file__).parent.parent / "profiles" / "pylon-lv.json"
    r = invoke("profiles", "validate", str(good))
    assert r.exit_code == 0
    assert r.stdout.startswith("ok: pylon-lv 1.1.0 (dbc): 17 channels")
    doc = json.loads(good.read_text(encoding="utf-8"))
    doc["channels"]["Soc"]["scale"] = "big"
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(doc), encoding="utf-8")
    r = invoke("profiles", "validate", str(bad))
    assert r.exit_code == 2
    assert r.stderr.startswith("error: profile pylon-lv: channels.Soc.scale:")
    assert r.stderr.count("\n") == 1


# -- global options and errors ---------------------------------------------------------------------


def test_missing_site_is_a_usage_error() -> None:
    r = runner.invoke(app, ["read", "bms_0/Soc"], env={"EMSBMS_SITE": ""})
    assert r.exit_code == 2
    assert r.stderr == "error: no site file: give --site FILE (or set EMSBMS_SITE)\n"


def test_bad_site_is_one_line_and_debug_shows_the_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[bus]]\nname = "can0"\ninterface = "virtual"\n[[device]]\nname = "x"\nbus = "can9"\n'
                   'profile = "pylon-lv"\n', encoding="utf-8")
    r = invoke("--site", str(bad), "read", "x/Soc")
    assert r.exit_code == 2
    assert r.stderr == (f"error: {bad}: [[device]] #1 'x': key 'bus': 'can9' is not a defined bus; known: can0\n")
    r = invoke("--site", str(bad), "--debug", "read", "x/Soc")
    assert r.exit_code == 2
    assert "Traceback (most recent call last)" in r.stderr and "ConfigError" in r.stderr


def test_bus_that_cannot_open_exits_2(tmp_path: Path) -> None:
    path = write_site(tmp_path / "nobus.toml", {
        "bus": [{"name": "can0", "interface": "no-such-interface", "channel": "x"}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    })
    r = invoke("--site", str(path), "read", "bms_0/Soc", "--timeout", "0.1")
    assert r.exit_code == 2  # refused with the site now, before any bus is opened (tests/test_site_safety.py)
    assert r.stderr.startswith(f"error: {path}: [[bus]] #1 'can0': key 'interface' expected a python-can interface")
    assert r.stderr.endswith(", virtual), found 'no-such-interface'\n")


def test_version_and_verbose() -> None:
    r = invoke("--version")
    assert r.exit_code == 0 and r.stdout.startswith("emsbms 0.")
    r = invoke("-vv", "profiles", "list")
    assert r.exit_code == 0


def test_every_command_is_registered() -> None:
    r = invoke("--help")
    for name in ("demo", "run", "simulate", "read", "write", "profiles", "monitor"):
        assert name in r.stdout
    assert threading.active_count() >= 1


# -- the demo site -----------------------------------------------------------------------------------


def test_demo_site_is_built_from_profile_options() -> None:
    pylon = load_profile("pylon-lv")
    hexed = dataclasses.replace(pylon, model=pylon.model.model_copy(update={
        "name": "x-bms", "options": {"demo_device": {"source_address": "0xF3", "node_id": 5, "colour": "red"}}}))
    tables = demo_tables([pylon, hexed], tag="t1")
    assert [(d["name"], d["bus"]) for d in tables["device"]] == [
        ("pylon_lv", "can0"), ("pylon_lv_2", "can1"), ("x_bms", "can2")]
    assert tables["device"][2]["source_address"] == 0xF3 and tables["device"][2]["node_id"] == 5
    assert "colour" not in tables["device"][2]  # not an addressing key
    assert [b["channel"] for b in tables["bus"]] == [f"emsbms-demo-t1-can{i}" for i in range(3)]


def test_demo_skips_a_profile_without_simulator(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    def no_acme(protocol: str) -> type:
        raise ImportError("No module named 'emsbms.sim.nothing'")

    monkeypatch.setattr(demo, "simulator_class", no_acme)
    with caplog.at_level("WARNING", logger="emsbms.demo"):
        assert demo.available_profiles() == []
    assert "demo: skipping profile pylon-lv: no simulator for protocol dbc" in caplog.text


def test_demo_leaves_out_a_device_whose_simulator_fails(monkeypatch: pytest.MonkeyPatch,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    site = demo.demo_site()
    original = Simulation.start

    def start(self: Simulation) -> Simulation:
        if "pylon_lv_2" in self.simulators:
            raise OSError("bus gone")
        return original(self)

    monkeypatch.setattr(Simulation, "start", start)
    with caplog.at_level("WARNING", logger="emsbms.demo"):
        running, kept = demo.start_simulations(site)
    demo.stop_simulations(running)
    assert [d.name for d in kept.devices] == [d.name for d in site.devices if d.name != "pylon_lv_2"]
    assert len(kept.buses) == len(site.buses) - 1
    assert "demo: skipping pylon_lv_2: its simulator did not start: bus gone" in caplog.text


def test_demo_site_runs_a_canopen_and_a_j1939_bms_with_values() -> None:
    from emsbms.demo import demo_site, start_simulations, stop_simulations
    from emsbms.edge import Edge

    site = demo_site()
    protocols = {d.name: load_profile(d.profile).protocol for d in site.devices}
    assert protocols["cia418_bms"] == "canopen" and protocols["j1939_hvess"] == "j1939"
    running, site = start_simulations(site)
    try:
        with Edge(site) as edge:
            for device in ("cia418_bms", "j1939_hvess", "pylon_lv", "pylon_lv_2"):
                soc = edge.read(f"{device}/Soc", timeout=10.0)
                assert soc.unit == "%" and 0 <= float(soc.value) <= 100  # type: ignore[arg-type]
            assert edge.read("pylon_lv/Soc", 5.0).value != edge.read("pylon_lv_2/Soc", 5.0).value
    finally:
        stop_simulations(running)
