"""Issue 13: the command line as a new user meets it. Negative values, closed pipes, `read --fresh` on
a bus channel, global options after the command, flags shown as flags, did-you-mean addresses,
profile versions that do not switch silently, and --json on every command that reads or lists."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from emsbms.cli import app
from emsbms.cli.decode import finite_values
from emsbms.demo import site_toml
from emsbms.errors import ConfigError
from emsbms.profile import load_profile
from emsbms.sim.runner import Simulation
from emsbms.site import load_profiles, load_site
from emsbms.types import Quality, Sample
from tests.test_db import profile_copy, pylon_v2

runner = CliRunner()
EMSBMS = [sys.executable, "-c", "from emsbms.cli import main; main()"]


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False, env={"EMSBMS_SITE": "", **(env or {})})


def strict_json(text: str) -> Any:
    """JSON as a strict parser reads it: NaN and Infinity are refused."""
    def refuse(token: str) -> Any:
        raise AssertionError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def tables(tag: str) -> dict[str, Any]:
    return {
        "site": {"org": "test", "name": "snags"},
        "bus": [{"name": f"can{i}", "interface": "virtual", "channel": f"snags-{tag}-can{i}"} for i in range(2)],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
                   {"name": "hv_0", "bus": "can1", "profile": "acme-hv"}],
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("snags") / "site.toml"
    path.write_text(site_toml(tables(uuid.uuid4().hex[:8])), encoding="utf-8")
    with Simulation(load_site(path)):
        yield path


# -- negative values ----------------------------------------------------------------------------------


def test_a_negative_write_value_is_a_value_not_an_option(live: Path) -> None:
    r = invoke("--site", str(live), "write", "hv_0/SetChargeCurrent", "-77", "--json", "--timeout", "10")
    assert r.exit_code == 4, r.output  # it reached the device's limits: 0..200 A (it was `No such option: -7`)
    doc = strict_json(r.stdout)
    assert (doc["value"], doc["status"]) == (-77.0, "rejected")
    assert doc["detail"] == "hv_0/SetChargeCurrent = -77.0 A is below the minimum 0.0 A"
    r = invoke("--site", str(live), "write", "hv_0/SetChargeCurrent", "-1.5e1", "--timeout", "10")
    assert r.exit_code == 4 and "-15.0 A is below the minimum" in r.stdout


def test_a_real_unknown_option_of_write_is_still_refused(live: Path) -> None:
    r = invoke("--site", str(live), "write", "hv_0/SetChargeCurrent", "50", "--bogus")
    assert r.exit_code == 2
    assert "No such option: --bogus" in r.output


# -- closed pipes ---------------------------------------------------------------------------------------


def test_a_pipe_closed_before_anything_is_written_ends_quietly(tmp_path: Path) -> None:
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: every write fails with EPIPE
    try:
        done = subprocess.run([*EMSBMS, "--db", str(tmp_path / "none.db"), "profiles", "list"], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=120, check=False)
    finally:
        os.close(write_end)
    assert (done.returncode, done.stderr) == (141, "")  # it was `error: BrokenPipeError`, exit 1


def test_a_pipe_closed_after_one_line_ends_quietly(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(site_toml(tables("pipe")), encoding="utf-8")
    log = tmp_path / "big.log"  # 0x355 SoC 59 %, SoH 100 %: far more output than a pipe holds
    log.write_text("".join(f"({1700000000 + i / 1000:.6f}) snags-pipe-can0 355#3B006400\n" for i in range(20000)),
                   encoding="utf-8")
    proc = subprocess.Popen([*EMSBMS, "decode", str(log), "--site", str(site), "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    first = json.loads(proc.stdout.readline())
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 141
    assert err == ""
    assert first["address"].startswith("bms_0/")


# -- read --fresh on a bus channel ------------------------------------------------------------------------


def test_read_fresh_of_a_bus_channel(live: Path) -> None:
    started = time.time_ns() // 1000
    r = invoke("--site", str(live), "read", "can0/RxRate", "--fresh", "--json", "--timeout", "15")
    assert r.exit_code == 0, r.output  # it was `error: KeyError: 'can0'`
    doc = strict_json(r.stdout)["can0/RxRate"]
    assert doc["unit"] == "frames/s" and doc["timestamp_us"] >= started


# -- global options after the command -----------------------------------------------------------------------


def test_global_options_after_the_command(live: Path, tmp_path: Path) -> None:
    r = invoke("read", "bms_0/Soc", "--site", str(live), "--json", "--timeout", "15")
    assert r.exit_code == 0, r.output
    assert strict_json(r.stdout)["bms_0/Soc"]["quality"] == "ok"
    # after the command wins over before it
    r = invoke("--site", str(tmp_path / "missing.toml"), "read", "bms_0/Soc", "--site", str(live), "--timeout", "15")
    assert r.exit_code == 0, r.output
    db = tmp_path / "e.db"
    assert invoke("profiles", "import", str(profile_copy(tmp_path, version="9.0.0")), "--db", str(db)).exit_code == 0
    assert db.is_file()
    listed = strict_json(invoke("profiles", "list", "--json", "--db", str(db)).stdout)
    assert any(r["name"] == "pylon-lv" and r["version"] == "9.0.0" for r in listed)
    r = invoke("read", "bms_0/Bogus", "--site", str(live), "--debug", "-vv")
    assert r.exit_code == 2 and "Traceback" in r.stderr  # --debug after the command shows it


def test_help_shows_flags_as_flags_and_what_the_database_holds() -> None:
    r = invoke("--help")
    lines = {line.split()[0].rstrip(","): line for line in r.stdout.splitlines() if line.strip().startswith("-")}
    assert lines["--debug"].split()[:2] == ["--debug", "show"]
    assert lines["-v"].split()[:3] == ["-v,", "--verbose", "log"]
    assert "<bool>" not in r.stdout and "<int>" not in r.stdout
    assert "profile store, commissioned site" in r.stdout
    sub = invoke("read", "--help").stdout
    assert "--site FILE" in sub and "--db FILE" in sub  # the global options, after the command too


# -- typos ----------------------------------------------------------------------------------------------------


def test_a_typo_gets_the_channel_that_was_meant(tmp_path: Path) -> None:
    site = tmp_path / "site.toml"
    site.write_text(site_toml(tables(uuid.uuid4().hex[:8])), encoding="utf-8")
    r = invoke("--site", str(site), "read", "bms_0/SoC")
    assert (r.exit_code, r.stderr) == (2, "error: unknown channel 'bms_0/SoC'; did you mean bms_0/Soc?\n")
    r = invoke("--site", str(site), "read", "can1/rxrate")
    assert r.stderr == "error: unknown channel 'can1/rxrate'; did you mean can1/RxRate?\n"
    r = invoke("--site", str(site), "read", "Soc")
    assert r.stderr == ("error: 'Soc' is not an address: an address is DEVICE/Channel or BUS/Channel, e.g."
                        " bms_0/Soc; did you mean bms_0/Soc or hv_0/Soc?\n")
    r = invoke("--site", str(site), "read", "bms_1/Soc")
    assert r.stderr == ("error: unknown device 'bms_1' in 'bms_1/Soc'; did you mean bms_0/Soc? devices: bms_0, hv_0;"
                        " buses: can0, can1\n")
    r = invoke("--site", str(site), "write", "hv_0/setchargecurrent", "5")
    assert (r.exit_code, r.stderr) == (2, "error: unknown channel 'hv_0/setchargecurrent'; did you mean"
                                          " hv_0/SetChargeCurrent?\n")


# -- profile versions ------------------------------------------------------------------------------------------


def test_a_site_import_runs_the_version_its_file_names_and_a_later_import_does_not_switch_it(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    shipped = load_profile("pylon-lv").version
    halved = profile_copy(tmp_path, version="9.0.0", edit=pylon_v2)  # SoC scale 0.5: 59 % would read 29.5 %
    assert invoke("--db", str(db), "profiles", "import", str(halved)).exit_code == 0
    site = tmp_path / "site.toml"
    tag = uuid.uuid4().hex[:8]
    site.write_text(site_toml({**tables(tag), "device": [
        {"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
        {"name": "bms_1", "bus": "can1", "profile": "pylon-lv@9.0.0"}]}), encoding="utf-8")
    r = invoke("--db", str(db), "site", "import", str(site))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1:] == [
        f"  bms_0: runs pylon-lv {shipped} (pinned: pylon-lv@{shipped}; new device)",
        "  bms_1: runs pylon-lv 9.0.0 (pinned: pylon-lv@9.0.0; new device)"]
    devices = strict_json(invoke("--db", str(db), "devices", "list", "--json").stdout)
    assert [(d["name"], d["version"]) for d in devices] == [("bms_0", shipped), ("bms_1", "9.0.0")]

    # by hand, by name: it follows the newest stored version
    r = invoke("--db", str(db), "commission", "bms_2", "--bus", "can0", "--profile", "pylon-lv", "--id-offset", "0x400",
               "--json")
    assert r.exit_code == 0, r.output
    assert {k: v for k, v in strict_json(r.stdout).items() if k in ("ref", "pinned", "before", "after")} == {
        "ref": "pylon-lv", "pinned": False, "before": None, "after": "9.0.0"}
    newer = profile_copy(tmp_path, version="9.1.0", edit=pylon_v2)
    r = invoke("--db", str(db), "profiles", "import", str(newer))
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines()[1:] == [
        f"  bms_0: runs pylon-lv {shipped} (pinned: pylon-lv@{shipped}; unchanged)",
        "  bms_1: runs pylon-lv 9.0.0 (pinned: pylon-lv@9.0.0; unchanged)",
        "  bms_2: pylon-lv 9.0.0 -> pylon-lv 9.1.0 (follows the newest pylon-lv)"]
    # the exported site names the pinned versions, and --site runs the shipped one as it is
    out = tmp_path / "out.toml"
    assert invoke("--db", str(db), "site", "export", str(out)).exit_code == 0
    exported = load_site(out)
    assert [d.profile for d in exported.devices] == [f"pylon-lv@{shipped}", "pylon-lv", "pylon-lv@9.0.0"]
    with pytest.raises(ConfigError, match=re.escape(f"'bms_1': key 'profile': profile pylon-lv@9.0.0: the shipped"
                                                    f" pylon-lv is version {shipped}; other versions are in an edge")):
        load_profiles(exported)
    assert load_profiles(replace(exported, devices=exported.devices[:1]))["bms_0"].version == shipped
    doc = strict_json(invoke("--db", str(db), "site", "import", str(site), "--json").stdout)
    assert [(d["name"], d["before"]["version"], d["after"] and d["after"]["version"]) for d in doc["devices"]] == [
        ("bms_0", shipped, shipped), ("bms_1", "9.0.0", "9.0.0"), ("bms_2", "9.1.0", None)]


# -- --json everywhere -----------------------------------------------------------------------------------------


def test_every_reading_or_listing_command_has_json(live: Path, tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    v1 = profile_copy(tmp_path, version="9.0.0")
    v2 = profile_copy(tmp_path, version="9.1.0", edit=pylon_v2)
    docs = {
        "profiles import": invoke("--db", str(db), "profiles", "import", str(v1), str(v2), "--json"),
        "profiles list": invoke("--db", str(db), "profiles", "list", "--json"),
        "profiles show": invoke("--db", str(db), "profiles", "show", "pylon-lv", "--json"),
        "profiles validate": invoke("profiles", "validate", str(v2), "--json"),
        "profiles diff": invoke("--db", str(db), "profiles", "diff", "pylon-lv", "9.0.0", "9.1.0", "--json"),
        "site import": invoke("--db", str(db), "site", "import", str(live), "--json"),
        "devices list": invoke("--db", str(db), "devices", "list", "--json"),
        "read": invoke("--site", str(live), "read", "bms_0/Soc", "--json", "--timeout", "15"),
        "write": invoke("--site", str(live), "write", "hv_0/SetChargeCurrent", "20", "--json", "--timeout", "10"),
        "fuzz": invoke("fuzz", "--frames", "300", "--json"),
    }
    assert {name: r.exit_code for name, r in docs.items()} == dict.fromkeys(docs, 0)
    parsed = {name: strict_json(r.stdout) for name, r in docs.items()}
    assert parsed["profiles validate"]["version"] == "9.1.0" and parsed["profiles validate"]["ok"] is True
    assert [d["name"] for d in parsed["devices list"]] == ["bms_0", "hv_0"]
    assert parsed["read"]["bms_0/Soc"]["unit"] == "%"
    assert parsed["write"]["status"] == "acked"


def test_decode_json_writes_null_for_a_value_that_is_not_a_number() -> None:
    samples = [Sample("x/F", float("nan"), 1), Sample("x/G", float("-inf"), 2, Quality.OK), Sample("x/H", 2.5, 3)]
    assert [s.value for s in finite_values(samples)] == [None, None, 2.5]
