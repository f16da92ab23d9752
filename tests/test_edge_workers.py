"""Bus groups in worker processes: the site keys, the plan, and a real grouped Edge on udp_multicast.

The simulators run in this process (emsbms.sim) on udp_multicast buses; each group's worker is a
real spawned process. One test SIGKILLs a worker and follows it: LOST, the event, the restart with
backoff, and the other group decoding all along.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from emsbms.can.config import BusConfig
from emsbms.edge import Edge
from emsbms.edge.events import EventLog, EventLogHandler
from emsbms.edge.workers import WorkerState
from emsbms.errors import ConfigError
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site
from emsbms.site.groups import plan_groups
from emsbms.types import CommandStatus, CommState, Quality, Reading
from tests.conftest import wait

GROUP = "239.74.163.3"


def tables(port: int, g0: object = "g1", g1: object = "g2", workers: object = "on") -> dict[str, Any]:
    bus0: dict[str, Any] = {"name": "can0", "interface": "udp_multicast", "channel": GROUP, "port": port}
    bus1: dict[str, Any] = {"name": "can1", "interface": "udp_multicast", "channel": GROUP, "port": port + 1}
    if g0 is not None:
        bus0["group"] = g0
    if g1 is not None:
        bus1["group"] = g1
    return {"site": {"org": "test", "name": "groups", "workers": workers}, "bus": [bus0, bus1],
            "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"},
                       {"name": "hv_0", "bus": "can1", "profile": "acme-hv"}]}


def test_group_and_workers_keys_are_validated() -> None:
    site = parse_site(tables(47000))
    assert (site.groups, site.workers) == ({"can0": "g1", "can1": "g2"}, "on")
    with pytest.raises(ConfigError, match=r"\[\[bus\]\] #1 'can0': key 'group' expected a name .* found int 3"):
        parse_site(tables(47000, g0=3))
    with pytest.raises(ConfigError, match=r"\[site\]: key 'workers' expected \"auto\", \"off\", \"on\" or an int"
                                          r" >= 1, found str 'many'"):
        parse_site(tables(47000, workers="many"))
    with pytest.raises(ConfigError, match=r"key 'workers' expected \"auto\", \"off\" or \"on\" when buses name a"
                                          r" group \(g1, g2\), found 2"):
        parse_site(tables(47000, workers=2))
    with pytest.raises(ConfigError, match=r"group 'bms_0' expected a name no bus or device has"):
        parse_site(tables(47000, g0="bms_0"))
    virtual = {"site": {}, "bus": [{"name": "can0", "interface": "virtual", "group": "g1"}]}
    with pytest.raises(ConfigError, match=r"key 'group' expected no group on a 'virtual' bus"):
        parse_site(virtual)


def test_the_default_keeps_one_process_unless_groups_are_named_or_asked_for() -> None:
    udp = [BusConfig(f"can{i}", "udp_multicast", GROUP, 1_000_000, {"port": 47100 + i}) for i in range(4)]
    eight = [BusConfig(f"can{i}", "udp_multicast", GROUP, 1_000_000, {"port": 47100 + i}) for i in range(8)]
    assert plan_groups(eight, {}, "auto", 8) == {}  # no group named: one process, however many buses
    assert plan_groups(udp[:2], {}, "on", 8) == {"g1": ["can0", "can1"]}  # 2 Mbit/s: one worker serves
    assert plan_groups(udp, {}, "on", 1) == {"g1": ["can0", "can1", "can2", "can3"]}  # one core: one worker
    assert plan_groups(udp, {}, "on", 2) == {"g1": ["can0", "can2"], "g2": ["can1", "can3"]}
    assert plan_groups(udp, {}, "on", 8) == {"g1": ["can0", "can2"], "g2": ["can1", "can3"]}  # 2 fit in one
    assert [len(b) for b in plan_groups(eight, {}, "on", 8).values()] == [2, 2, 2, 2]
    assert [len(b) for b in plan_groups(eight, {}, "on", 2).values()] == [4, 4]  # as many as there are cores
    assert plan_groups(udp, {}, "off", 8) == {}
    assert plan_groups(udp, {}, 3, 1) == {"g1": ["can0", "can3"], "g2": ["can1"], "g3": ["can2"]}
    virtual = [BusConfig(f"v{i}", "virtual", f"v{i}", 1_000_000) for i in range(4)]
    assert plan_groups(virtual, {}, "on", 8) == {}  # in-process buses never leave the main process
    assert plan_groups(udp, {"can1": "a"}, "auto", 2) == {"a": ["can1"]}
    assert plan_groups(udp, {"can1": "a"}, "auto", 1) == {}


@pytest.fixture
def grouped() -> Iterator[tuple[Site, Simulation]]:
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 52000, 2)
    site = parse_site(tables(port))
    sim = Simulation(site).start()
    try:
        yield site, sim
    finally:
        sim.stop()


def _fresh(edge: Edge, address: str, after_us: int) -> bool:
    r = edge.registry.get(address)
    return r is not None and r.quality is Quality.OK and r.timestamp_us > after_us


def test_grouped_edge_decodes_and_commands_through_its_workers(grouped: tuple[Site, Simulation]) -> None:
    site, _ = grouped
    with Edge(site) as edge:
        assert edge.pool is not None and sorted(edge.pool.workers) == ["g1", "g2"]
        assert edge.runners == {}  # no bus in the main process
        pids = edge.pool.pids()
        assert all(p is not None and p != os.getpid() for p in pids.values())
        soc = edge.read("bms_0/Soc", timeout=20)
        assert 0.0 <= float(soc.value) <= 100.0 and soc.unit == "%"  # type: ignore[arg-type]
        assert edge.read("hv_0/Voltage", timeout=20).unit == "V"
        assert wait(lambda: edge.snapshot().value("hv_0/CommState") == CommState.OK, 20)
        assert isinstance(edge.snapshot().value("hv_0/CommState"), CommState)  # the enum itself, not its text
        acked = edge.write("hv_0/SetChargeCurrent", 42.5, timeout=10)
        assert (acked.address, acked.value, acked.status) == ("hv_0/SetChargeCurrent", 42.5, CommandStatus.ACKED)
        refused = edge.write("hv_0/SetChargeCurrent", 500, timeout=10)
        assert refused.status is CommandStatus.REJECTED and "above the maximum 200" in refused.detail
        assert wait(lambda: int(edge.snapshot().value("can1/RxFrames") or 0) > 0, 10)  # the worker's bus health
        assert edge.snapshot().value("g1/State") == WorkerState.RUNNING
        procs = list(edge.pool.workers.values())
    assert all(w._process is not None and not w._process.is_alive() for w in procs)
    assert edge.registry.get("bms_0/Soc").quality is Quality.STALE  # type: ignore[union-attr]


def test_a_killed_worker_goes_lost_restarts_and_the_other_group_runs_on(grouped: tuple[Site, Simulation]) -> None:
    site, _ = grouped
    events = EventLog()
    handler = EventLogHandler(events)
    logger = logging.getLogger("emsbms.edge.workers")
    logger.addHandler(handler)
    hv: list[int] = []
    states: list[tuple[str, int]] = []
    lock = threading.Lock()

    def on_hv(address: str, reading: Reading) -> None:
        if reading.quality is Quality.OK:
            with lock:
                hv.append(time.time_ns() // 1000)

    def on_state(address: str, reading: Reading) -> None:
        with lock:
            states.append((str(reading.value), time.time_ns() // 1000))

    try:
        with Edge(site) as edge:
            assert edge.pool is not None
            edge.subscribe("hv_0/Voltage", on_hv)
            edge.subscribe("g1/State", on_state)
            assert wait(lambda: edge.snapshot().value("bms_0/CommState") == CommState.OK, 20)
            g1, g2 = edge.pool.workers["g1"], edge.pool.workers["g2"]
            victim, other = g1.pid, g2.pid
            assert victim is not None
            os.kill(victim, signal.SIGKILL)
            assert wait(lambda: edge.snapshot().value("bms_0/CommState") == CommState.LOST, 10)
            snap = edge.snapshot()
            assert snap["bms_0/Soc"].quality is Quality.STALE
            assert snap.value("can0/State") == "DOWN"
            assert snap.value("g1/LastError") == "died: signal 9"
            events.drain()
            texts = [e.text for e in events.events()]
            assert f"worker g1 (pid {victim}) died: signal 9; restarting in 1 s" in texts
            # the restart: a new process, counted, decoding again
            assert wait(lambda: edge.snapshot().value("g1/State") == WorkerState.RUNNING
                        and edge.snapshot().value("g1/Restarts") == 1, 30)
            assert g1.pid not in (None, victim)
            restarted = time.time_ns() // 1000
            assert wait(lambda: _fresh(edge, "bms_0/Soc", restarted), 20)
            assert wait(lambda: edge.snapshot().value("bms_0/CommState") == CommState.OK, 20)
            # the other group never stopped: same process, never restarted, decoding while g1 was down
            assert (g2.pid, g2.restarts, edge.snapshot().value("g2/State")) == (other, 0, WorkerState.RUNNING)
            with lock:
                down = next(t for s, t in states if s == "DOWN")
                up = next(t for s, t in states if s == "RUNNING" and t > down)
                during = [t for t in hv if down < t < up]
            assert during, f"hv_0 decoded nothing while g1 was down ({down}..{up})"
    finally:
        logger.removeHandler(handler)


def test_the_groups_bench_counts_every_frame_of_paced_buses_in_workers() -> None:
    from emsbms.bench.groups import run_paced

    r = run_paced(2, 500_000, 2, load=0.05, duration=0.5)
    expected = 2 * int(r.target_fps / 2 * 0.5)  # per bus: rate × duration frames
    assert (r.workers, r.edge.sent, r.edge.received, r.edge.lost, r.edge.duplicates) == (2, expected, expected, 0, 0)
    assert r.worker_us_per_frame is not None and r.worker_us_per_frame > 0
