"""Cross-process: `emsbms simulate` in one process, `emsbms read` / `emsbms write` in others.

The processes share CAN buses over python-can's udp_multicast interface; every bus has its own
port (Linux hands a multicast datagram to every socket bound to the port, whatever the group).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from emsbms.demo import site_toml

pytestmark = pytest.mark.slow

GROUP = "239.74.163.2"


def emsbms_command() -> list[str]:
    """The installed `emsbms` script of this interpreter, or the same entry point through -c."""
    script = Path(sys.executable).with_name("emsbms")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from emsbms.cli import main; main()"]


def run_cli(site: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*emsbms_command(), "--site", str(site), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture(scope="module")
def simulated_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A two-bus udp_multicast site and an `emsbms simulate` process serving it."""
    base = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47990, 2)
    tables = {
        "site": {"org": "test", "name": "xproc"},
        "bus": [
            {"name": "can0", "interface": "udp_multicast", "channel": GROUP, "port": base},
            {"name": "can1", "interface": "udp_multicast", "channel": GROUP, "port": base + 1},
        ],
        "device": [
            {"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
            {"name": "hv_0", "bus": "can1", "profile": "acme-hv"},
        ],
    }
    site = tmp_path_factory.mktemp("xproc") / "site.toml"
    site.write_text(site_toml(tables), encoding="utf-8")
    sim = subprocess.Popen([*emsbms_command(), "--site", str(site), "simulate", "--duration", "120"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        yield site
    finally:
        sim.send_signal(signal.SIGTERM)
        try:
            _, err = sim.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            sim.kill()
            _, err = sim.communicate()
        assert sim.returncode == 0, err  # SIGTERM is a clean stop


def test_read_json_across_processes(simulated_site: Path) -> None:
    r = run_cli(simulated_site, "read", "bms_0/Soc", "bms_0/Voltage", "bms_0/Temperature", "bms_0/MaxCellVoltage",
                "hv_0/Voltage", "hv_0/Capacity", "--json", "--timeout", "20")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    units = {a: v["unit"] for a, v in doc.items()}
    assert units == {"bms_0/Soc": "%", "bms_0/Voltage": "V", "bms_0/Temperature": "°C", "bms_0/MaxCellVoltage": "V",
                     "hv_0/Voltage": "V", "hv_0/Capacity": "Ah"}
    assert all(v["quality"] == "ok" for v in doc.values())
    values = {a: v["value"] for a, v in doc.items()}
    assert 0 <= values["bms_0/Soc"] <= 100
    assert 48.0 <= values["bms_0/Voltage"] <= 57.6  # 16 LFP cells
    assert 15.0 <= values["bms_0/Temperature"] <= 45.0
    assert 3.0 <= values["bms_0/MaxCellVoltage"] <= 3.6  # volts, not millivolts
    assert 288.0 <= values["hv_0/Voltage"] <= 345.6  # 96 cells
    assert values["hv_0/Capacity"] == 120


def test_write_acked_and_rejected_across_processes(simulated_site: Path) -> None:
    r = run_cli(simulated_site, "write", "hv_0/SetChargeCurrent", "42.5", "--json", "--timeout", "20")
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert (doc["address"], doc["value"], doc["status"]) == ("hv_0/SetChargeCurrent", 42.5, "acked")
    r = run_cli(simulated_site, "write", "hv_0/SetChargeCurrent", "500", "--json", "--timeout", "20")
    assert r.returncode == 4, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert doc["status"] == "rejected"
    assert "above the maximum 200" in doc["detail"]


def count_rows(db: Path, sql: str) -> int:
    try:
        with sqlite3.connect(db, timeout=5) as conn:
            return int(conn.execute(sql).fetchone()[0] or 0)
    except sqlite3.OperationalError:  # not created yet, or busy
        return 0


def test_run_stops_on_sigterm_and_flushes(simulated_site: Path, tmp_path: Path) -> None:
    db = tmp_path / "edge.db"
    run = subprocess.Popen([*emsbms_command(), "--site", str(simulated_site), "run", "--db", str(db)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if count_rows(db, "SELECT COUNT(*) FROM samples WHERE address = 'hv_0/Voltage'") >= 3:
                break
            time.sleep(0.1)
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=20)
    finally:
        if run.poll() is None:
            run.kill()
    assert run.returncode == 0, err
    assert count_rows(db, "SELECT COUNT(*) FROM samples WHERE address = 'hv_0/Voltage' AND unit = 'V'") >= 3
    # every queued update reached the file: the run's total matches the rows, and none was dropped
    total = count_rows(db, "SELECT COUNT(*) FROM samples")
    assert count_rows(db, "SELECT samples FROM runs") == total > 0
    assert count_rows(db, "SELECT dropped FROM runs") == 0
    assert count_rows(db, "SELECT COUNT(*) FROM runs WHERE stopped_us >= started_us") == 1
    assert f"{total} samples written to {db}, 0 dropped" in err
