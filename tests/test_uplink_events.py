"""The `events` topic through a real Mosquitto: a real `emsbms run` sends its event log (here a device
lost when its simulator stops, and recovered when it comes back) through the outbox, with its own
`seq` stream 0, 1, 2, ... per session.

Without Mosquitto the test skips, unless EMSBMS_REQUIRE_MOSQUITTO=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from emsbms.demo import site_toml
from emsbms.uplink.broker import Broker
from emsbms.uplink.messages import Topics
from tests.conftest import wait
from tests.test_uplink_mqtt import CLOUD, EDGE, OTHER, Watcher, emsbms_command, require_mosquitto, stop_process

pytestmark = pytest.mark.slow

PLANT_1 = Topics("acme", "plant-1")


def events(watcher: Watcher) -> list[dict[str, Any]]:
    """Every events message received, as JSON."""
    return [json.loads(p) for p in watcher.payloads(PLANT_1.events)]


def entries(watcher: Watcher, source: str) -> list[str]:
    """The texts of the events of `source`, in the order of their messages' seq."""
    return [e["text"] for m in sorted(events(watcher), key=lambda m: m["seq"]) for e in m["events"]
            if e["source"] == source]


def simulate(site: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*emsbms_command(), "--site", str(site), "simulate", "--duration", "300"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_comm_loss_and_recovery_go_to_events_with_their_own_seq(tmp_path: Path) -> None:
    require_mosquitto()
    broker = Broker(tmp_path / "broker", [EDGE, OTHER, CLOUD])
    broker.start()
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(43000, 47990)
    (tmp_path / "uplink.secret").write_text(EDGE.password + "\n", encoding="utf-8")
    site = tmp_path / "site.toml"
    site.write_text(site_toml({
        "site": {"org": "acme", "name": "plant-1"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": "239.74.163.3", "port": port}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    }) + f'\n[uplink]\nurl = "{broker.url}"\nusername = "{EDGE.name}"\npassword_file = "uplink.secret"\n',
        encoding="utf-8")
    watcher = Watcher(broker, CLOUD, ["ems/acme/plant-1/#"])
    sim = simulate(site)
    run = subprocess.Popen([*emsbms_command(), "--site", str(site), "run", "--db", str(tmp_path / "edge.db")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait(lambda: "online: first frames received" in entries(watcher, "bms_0"), 60), \
            (entries(watcher, "bms_0"), watcher.payloads(PLANT_1.state))
        stop_process(sim)  # its frames stop: LOST after the profile's 5 s timeout
        assert wait(lambda: "comm lost: no frame within its timeout" in entries(watcher, "bms_0"), 60), \
            entries(watcher, "bms_0")
        sim = simulate(site)
        assert wait(lambda: any(t.startswith("comm recovered after ") for t in entries(watcher, "bms_0")), 60), \
            entries(watcher, "bms_0")
        texts = entries(watcher, "bms_0")
        assert texts.index("comm lost: no frame within its timeout") < texts.index(
            next(t for t in texts if t.startswith("comm recovered after ")))
        got = events(watcher)
        assert sorted(m["seq"] for m in got) == list(range(len(got)))  # 0, 1, 2, ...: no hole, no repeat
        assert {m["session"] for m in got} == {got[0]["session"]}
        assert all(m["historical"] is False for m in got)
        lost = next(e for m in got for e in m["events"] if e["text"] == "comm lost: no frame within its timeout")
        assert (lost["kind"], lost["severity"], lost["repeat"]) == ("comm", "alarm", 1)
        err = stop_process(run)
        assert run.returncode == 0, err
    finally:
        if run.poll() is None:
            stop_process(run)
        stop_process(sim)
        watcher.close()
        broker.stop(signal.SIGKILL)
