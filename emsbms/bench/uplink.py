"""Uplink scenarios, commands and configuration: through a real Mosquitto against the same work done locally.

- *commands*: for each acknowledgement path of `emsbms.bench.commands` (DBC echo, CANopen SDO,
  J1939 DM11/ACK; one simulated BMS on a virtual bus), a cloud client publishes ``cmd`` and times
  the arrival of its ``cmd/result``; the baseline is a local ``edge.write`` of the same command,
  interleaved with them in the same run. ``added`` is each round trip minus the edge's own
  ``took_us`` (what the broker and the uplink add to that command).
- *config*: a profile version switch published as a retained ``config``, timed to the first
  sample decoded under the new version (the registry's subscriber sees the new scale); the
  baseline hands the same payload to the same `ConfigHandler` locally.

The broker runs in a temporary folder (`emsbms.uplink.broker.Broker`, password and ACLs); the
edge's uplink is the `EdgeUplink` that ``emsbms run`` starts.
"""

from __future__ import annotations

import json
import random
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can

from emsbms.bench import BenchError
from emsbms.bench.commands import PATHS, TIMEOUT_S, _Path, _site
from emsbms.bench.uplink_cloud import CLOUD, Cloud, linked, ms_stats, ratio
from emsbms.db import EdgeDb
from emsbms.edge import Edge
from emsbms.resources import data_dir
from emsbms.sim.runner import Simulation
from emsbms.site import parse_site
from emsbms.types import CommandStatus, Reading

GOAL_ADDED_P99_MS = 10.0
GOAL_CONFIG_P99_MS = 1000.0
JITTER_S = 0.1  # a random phase of the DBC device's 100 ms status period


def _now_us() -> int:
    return time.time_ns() // 1000


# -- commands -------------------------------------------------------------------------------------


@dataclass
class UplinkCommandResult:
    """One acknowledgement path: cmd → cmd/result through the broker, against a local edge.write (ms)."""

    path: str
    address: str
    writes: int
    acked: int  # cmd/result "acked"
    local_acked: int
    p50_ms: float | None
    p99_ms: float | None
    local_p50_ms: float | None
    local_p99_ms: float | None
    added_p50_ms: float | None  # round trip minus the edge's took_us, per command
    added_p99_ms: float | None
    failures: list[str]  # what came back instead of acked

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_p50_vs_local"] = ratio(self.p50_ms, self.local_p50_ms)
        d["ratio_p99_vs_local"] = ratio(self.p99_ms, self.local_p99_ms)
        d["goal_added_p99_ms"] = GOAL_ADDED_P99_MS
        d["goal_met"] = self.added_p99_ms is not None and self.added_p99_ms < GOAL_ADDED_P99_MS
        return d


class _Results:
    """cmd/result messages by id, as the cloud client receives them."""

    def __init__(self) -> None:
        self.by_id: dict[str, tuple[dict[str, Any], float]] = {}
        self.cond = threading.Condition()

    def __call__(self, topic: str, payload: bytes, arrived_us: int) -> None:
        at = time.perf_counter()
        body = json.loads(payload)
        with self.cond:
            self.by_id.setdefault(str(body.get("id")), (body, at))
            self.cond.notify_all()

    def wait(self, id: str, timeout: float) -> tuple[dict[str, Any], float] | None:
        with self.cond:
            self.cond.wait_for(lambda: id in self.by_id, timeout)
            return self.by_id.get(id)


def run_command_path(path: _Path, writes: int = 30) -> UplinkCommandResult:
    """`writes` commands through the broker and as many local writes, interleaved, on one simulator."""
    site = _site(path.device)
    address = f"bms/{path.command}"
    results = _Results()
    remote: list[float] = []
    added: list[float] = []
    local: list[float] = []
    acked = local_acked = 0
    failures: list[str] = []
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-uplink-") as tmp, Simulation(site):
        time.sleep(0.5)  # the simulator claims its address / boots
        with Edge(site) as edge, linked(edge, Path(tmp)) as (broker, link):
            if not edge.wait_until(lambda s: s.value("bms/CommState") == "OK", 10.0):
                raise BenchError(f"uplink commands, {path.name}: the device did not reach CommState OK in 10 s")
            with Cloud(broker, CLOUD, [link.topics.cmd_result], results) as cloud:

                def send(value: float) -> tuple[bool, float, float]:
                    id = uuid.uuid4().hex
                    body = {"id": id, "address": address, "value": value, "deadline_us": _now_us() + 10_000_000}
                    t0 = time.perf_counter()
                    cloud.publish(link.topics.cmd, json.dumps(body).encode())
                    got = results.wait(id, TIMEOUT_S + 5.0)
                    if got is None:
                        failures.append("no cmd/result")
                        return False, 0.0, 0.0
                    if got[0]["status"] != "acked":
                        failures.append(f"cmd/result {got[0]['status']}: {got[0]['detail']}")
                    rtt = (got[1] - t0) * 1000.0
                    return got[0]["status"] == "acked", rtt, rtt - got[0]["took_us"] / 1000.0

                send(path.values[0])  # untimed, as the local one: connections and claims settle
                edge.write(address, path.values[1], TIMEOUT_S)
                rng = random.Random(7)
                for _ in range(writes):
                    for j, through_broker in enumerate((True, False) if rng.random() < 0.5 else (False, True)):
                        value = path.values[j]  # every write a new value: every echo is a new answer
                        time.sleep(rng.uniform(0.0, JITTER_S))
                        if through_broker:
                            ok, rtt, extra = send(value)
                            if ok:
                                acked += 1
                                remote.append(rtt)
                                added.append(extra)
                        else:
                            t0 = time.perf_counter()
                            result = edge.write(address, value, TIMEOUT_S)
                            if result.status is CommandStatus.ACKED:
                                local_acked += 1
                                local.append((time.perf_counter() - t0) * 1000.0)
                            else:
                                failures.append(f"edge.write {result.status.value}: {result.detail}")
    p50, p99 = ms_stats(remote)
    l50, l99 = ms_stats(local)
    a50, a99 = ms_stats(added)
    return UplinkCommandResult(path.name, address, writes, acked, local_acked, p50, p99, l50, l99, a50, a99,
                               failures)


def run_commands(writes: int = 30) -> list[UplinkCommandResult]:
    return [run_command_path(p, writes) for p in PATHS]


# -- configuration --------------------------------------------------------------------------------

PROFILE = "bench-pylon"
VERSIONS = ("1.0.0", "2.0.0")  # 2.0.0 reads Soc at half scale
# 0x355 SoC u16 % = 80, SoH u16 % = 100: Soc reads 80 under 1.0.0 and 40 under 2.0.0
SOC_FRAME = can.Message(arbitration_id=0x355, data=bytes([80, 0, 100, 0, 0, 0]), is_extended_id=False)
SOC = {"1.0.0": 80.0, "2.0.0": 40.0}


@dataclass
class UplinkConfigResult:
    """Profile version switches: config published → first sample under it, against the local handler (ms)."""

    switches: int
    applied: int  # config/status "applied" through the broker
    local_applied: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    local_p50_ms: float | None
    local_p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_p50_vs_local"] = ratio(self.p50_ms, self.local_p50_ms)
        d["goal_p99_ms"] = GOAL_CONFIG_P99_MS
        d["goal_met"] = self.p99_ms is not None and self.p99_ms < GOAL_CONFIG_P99_MS
        return d


def _profile_items(folder: Path) -> dict[str, dict[str, Any]]:
    """Both versions as a config payload carries them (JSON + DBC text); each also written to `folder`."""
    base = json.loads((data_dir("profiles") / "pylon-lv.json").read_text(encoding="utf-8"))
    dbc = (data_dir("dbc") / base["source"]["dbc"]).read_text(encoding="utf-8")
    items = {}
    for version in VERSIONS:
        doc = json.loads(json.dumps(base))
        doc["name"], doc["version"] = PROFILE, version
        doc["source"]["dbc"] = f"bench_pylon_{version.replace('.', '_')}.dbc"
        if version != VERSIONS[0]:
            doc["channels"]["Soc"]["scale"] = 0.5
        (folder / doc["source"]["dbc"]).write_text(dbc, encoding="utf-8")
        (folder / f"{PROFILE}-{version}.json").write_text(json.dumps(doc), encoding="utf-8")
        items[version] = {"document": doc, "source": dbc}
    return items


class _FirstSoc:
    """The first Soc reading equal to `expect` after `arm`; its perf_counter time."""

    def __init__(self) -> None:
        self.expect: float | None = None
        self.at: float | None = None
        self.event = threading.Event()

    def arm(self, expect: float) -> None:
        self.at, self.expect = None, expect
        self.event.clear()

    def __call__(self, address: str, reading: Reading) -> None:
        if self.expect is not None and reading.value == self.expect and not self.event.is_set():
            self.at = time.perf_counter()
            self.event.set()


@contextmanager
def _config_edge(folder: Path) -> Iterator[tuple[Edge, Path, dict[str, dict[str, Any]], dict[str, Any]]]:
    items = _profile_items(folder)
    db = folder / "edge.db"
    channel = f"cfg-{uuid.uuid4().hex[:8]}"
    site = parse_site({"site": {"org": "bench", "name": "config"},
                       "bus": [{"name": "can0", "interface": "virtual", "channel": channel}],
                       "device": [{"name": "bms_0", "bus": "can0", "profile": f"{PROFILE}@{VERSIONS[0]}"}]})
    with EdgeDb(db) as store:
        store.profiles.import_paths([folder / f"{PROFILE}-{VERSIONS[0]}.json"])
        store.site.replace(site)
        tables = store.site.tables()
    stop = threading.Event()

    def send(bus: can.BusABC) -> None:
        while not stop.wait(0.002):
            bus.send(SOC_FRAME)

    with Edge.from_db(db) as edge, can.Bus(interface="virtual", channel=channel) as bus:
        sender = threading.Thread(target=send, args=(bus,), name="bench-soc", daemon=True)
        sender.start()
        try:
            yield edge, db, items, tables
        finally:
            stop.set()
            sender.join()


def run_config(switches: int = 20) -> UplinkConfigResult:
    """`switches` version switches through the broker and as many locally, alternating."""
    statuses: dict[str, str] = {}
    cond = threading.Condition()

    def on_status(topic: str, payload: bytes, arrived_us: int) -> None:
        body = json.loads(payload)
        with cond:
            statuses[str(body.get("version"))] = str(body.get("status"))
            cond.notify_all()

    remote: list[float] = []
    local: list[float] = []
    local_applied = 0
    first = _FirstSoc()
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-config-") as tmp, \
            _config_edge(Path(tmp)) as (edge, db, items, tables):
        if not edge.wait_until(lambda s: s.value("bms_0/Soc") == SOC[VERSIONS[0]], 10.0):
            raise BenchError("uplink config: bms_0/Soc did not read 80 within 10 s")
        sub = edge.subscribe("bms_0/Soc", first)
        try:
            with linked(edge, Path(tmp), db=db) as (broker, link), \
                    Cloud(broker, CLOUD, [link.topics.config_status], on_status) as cloud:
                for i in range(2 * switches):
                    version = VERSIONS[(i + 1) % 2]
                    device = {**tables["device"][0], "profile": f"{PROFILE}@{version}"}
                    body = {"version": f"b{i}", "site": {"bus": tables["bus"], "device": [device]},
                            "profiles": list(items.values())}
                    payload = json.dumps(body).encode()
                    first.arm(SOC[version])
                    t0 = time.perf_counter()
                    if i % 2 == 0:
                        cloud.publish(link.topics.config, payload, retain=True)
                    elif json.loads(link.config.handle(payload, _now_us()))["status"] == "applied":
                        local_applied += 1
                    if not first.event.wait(10.0) or first.at is None:
                        raise BenchError(f"uplink config: no Soc of {SOC[version]} within 10 s of version b{i}")
                    (remote if i % 2 == 0 else local).append((first.at - t0) * 1000.0)
                    if i % 2 == 0:
                        with cond:
                            cond.wait_for(lambda v=f"b{i}": v in statuses, 10.0)  # type: ignore[misc]
                    time.sleep(0.05)
                applied = sum(1 for s in statuses.values() if s == "applied")
        finally:
            sub.cancel()
    p50, p99 = ms_stats(remote)
    l50, l99 = ms_stats(local)
    return UplinkConfigResult(switches, applied, local_applied, p50, p99, round(max(remote), 2) if remote else None,
                              l50, l99)
