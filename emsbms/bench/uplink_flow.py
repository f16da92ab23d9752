"""Uplink scenario, telemetry and cost: a fleet of simulated BMS through one edge and its uplink to Mosquitto.

The devices run in another process (``python -m emsbms.bench.fleet``, the mix of the devices
scenario, on udp_multicast buses), so this process holds the edge, its uplink and the cloud client.
In one run, on the same fleet at the same sample rate:

1. *cost*: process CPU over a window with the edge alone, then over a window with the uplink
   feeding (no subscriber on the broker, so nothing is received in this process); the difference
   per 1,000 registry updates/s is the uplink's cost. The broker's CPU (``/proc``) is shown apart.
2. *telemetry*: a cloud client subscribes to ``telemetry`` and ``health``; samples/s reaching it
   against the registry's updates/s, and the latency from each sample's frame timestamp to its
   arrival, against the same latency at a registry subscriber (the edge without its uplink).
3. *backlog*: the broker is stopped for ``outage_s`` (the outbox fills), then started again; the
   drain rate of the messages made before the restart, against the live rate of step 2. Every
   sequence number from the first one received to the last one made before the restart must
   arrive (``missing`` counts those that did not).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emsbms.bench.devices import READY_S, _fleet, _ok_count, _wait_ready, write_site
from emsbms.bench.measure import CpuWindow
from emsbms.bench.uplink_cloud import CLOUD, Cloud, linked, ms_stats, ratio
from emsbms.edge import Edge
from emsbms.types import Reading
from emsbms.uplink.messages import MessageKind

SUPERVISION = ("CommState", "LastSeen", "Alarm/CommLoss")


def _now_us() -> int:
    return time.time_ns() // 1000


@dataclass
class FlowResult:
    """Telemetry, backlog and cost of the uplink on one fleet (see the module docstring)."""

    devices: int
    devices_ok: int
    # cost
    updates_per_s_without: float
    cpu_pct_without: float
    updates_per_s_with: float
    cpu_pct_with: float
    broker_cpu_pct: float
    # telemetry
    updates_per_s: float  # registry updates/s in the live window (the baseline)
    samples_per_s: float  # samples reaching the cloud client
    messages_per_s: float
    latency_p50_ms: float | None  # frame timestamp → cloud client
    latency_p99_ms: float | None
    registry_latency_p50_ms: float | None  # frame timestamp → registry subscriber
    registry_latency_p99_ms: float | None
    # backlog
    outage_s: float
    backlog_rows: int  # outbox rows when the broker came back
    backlog_messages: int  # made before the restart, received after it
    backlog_samples: int
    reconnect_s: float | None  # broker restarted → first backlog message at the cloud
    drain_s: float | None  # first → last backlog message
    drain_samples_per_s: float | None
    drain_messages_per_s: float | None
    missing: int  # sequence numbers never received
    duplicates: int

    @property
    def cpu_per_ksps(self) -> float | None:
        """The uplink's CPU % of one core per 1,000 samples/s fed to it: CPU per sample with, minus without.

        (At the same rate this is the CPU difference per 1,000 samples/s; it stays per sample when a
        loaded process decodes fewer frames in one window than in the other.)
        """
        with_, without = self.updates_per_s_with, self.updates_per_s_without
        if not with_ or not without:
            return None
        return round(1000 * (self.cpu_pct_with / with_ - self.cpu_pct_without / without), 2)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_per_ksps"] = self.cpu_per_ksps
        d["ratio_cpu_with_vs_without"] = ratio(self.cpu_pct_with, self.cpu_pct_without)
        d["ratio_samples_vs_updates"] = ratio(self.samples_per_s, self.updates_per_s)
        d["ratio_latency_p99_vs_registry"] = ratio(self.latency_p99_ms, self.registry_latency_p99_ms)
        d["ratio_drain_vs_live"] = ratio(self.drain_samples_per_s, self.samples_per_s)
        d["ratio_drain_messages_vs_live"] = ratio(self.drain_messages_per_s, self.messages_per_s)
        return d


class _Updates:
    """The registry subscriber: counts every update; records device samples' latency when asked."""

    def __init__(self, devices: set[str]) -> None:
        self.devices = devices
        self.count = 0
        self.latencies: list[float] | None = None

    def __call__(self, address: str, reading: Reading) -> None:
        self.count += 1
        if self.latencies is not None:
            device, _, channel = address.partition("/")
            if device in self.devices and channel not in SUPERVISION:
                self.latencies.append((_now_us() - reading.timestamp_us) / 1000.0)


class _Received:
    """The cloud client's record: (stream, seq) → (made µs, samples, arrived µs), latencies while live."""

    def __init__(self, topics: dict[str, MessageKind]) -> None:
        self.topics = topics
        self.lock = threading.Lock()
        self.messages: dict[tuple[MessageKind, int], tuple[int, int, int]] = {}
        self.duplicates = 0
        self.latencies: list[float] | None = None
        self.samples = 0  # in live, non-refresh messages
        self.count = 0

    def __call__(self, topic: str, payload: bytes, arrived_us: int) -> None:
        body = json.loads(payload)
        key = (self.topics[topic], int(body["seq"]))
        samples = body["samples"]
        with self.lock:
            if key in self.messages:
                self.duplicates += 1
                return
            self.messages[key] = (int(body["timestamp_us"]), len(samples), arrived_us)
            self.count += 1
            if not body["refresh"]:
                self.samples += len(samples)
                if self.latencies is not None and key[0] is MessageKind.TELEMETRY:
                    self.latencies.extend((arrived_us - s["timestamp_us"]) / 1000.0 for s in samples)


def _proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (0 where /proc has none)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _first_seqs(received: _Received, kinds: set[MessageKind], settle_s: float) -> dict[MessageKind, int | None]:
    """The lowest seq received of each stream, once every stream has sent something (at most 30 s)."""
    time.sleep(settle_s)
    deadline = time.monotonic() + 30.0
    while True:
        with received.lock:
            first = {k: min((s for kind, s in received.messages if kind is k), default=None) for k in kinds}
        if all(v is not None for v in first.values()) or time.monotonic() > deadline:
            return first
        time.sleep(0.1)


def _window(updates: _Updates, seconds: float) -> tuple[float, float, CpuWindow]:
    n0, window = updates.count, CpuWindow().start()
    time.sleep(seconds)
    window.stop()
    return round((updates.count - n0) / window.wall_s, 1), round(window.percent(), 1), window


def run(devices: int = 128, seconds: float = 3.0, outage_s: float = 5.0, drain_timeout_s: float = 120.0) -> FlowResult:
    """The whole flow on `devices` simulated BMS (see the module docstring)."""
    base_port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 58000, 8)
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-flow-") as tmp:
        folder = Path(tmp)
        site_path = write_site(folder / "site.toml", devices, base_port)
        sim = _fleet(site_path, READY_S + 6 * seconds + outage_s + drain_timeout_s + 60)
        try:
            edge = Edge.from_site(site_path)
            with edge:
                _wait_ready(edge, devices)
                updates = _Updates({d.name for d in edge.site.devices})
                sub = edge.subscribe("*", updates)
                try:
                    time.sleep(min(1.0, seconds / 2))
                    ups_without, cpu_without, _ = _window(updates, seconds)
                    with linked(edge, folder, persistence=True) as (broker, link):
                        time.sleep(min(1.0, seconds / 2))  # the birth's full refresh goes out first
                        assert broker.process is not None
                        b0 = _proc_cpu_s(broker.process.pid)
                        ups_with, cpu_with, window = _window(updates, seconds)
                        broker_cpu = 100.0 * (_proc_cpu_s(broker.process.pid) - b0) / window.wall_s
                        topics = {link.topics.telemetry: MessageKind.TELEMETRY, link.topics.health: MessageKind.HEALTH}
                        received = _Received(topics)
                        with Cloud(broker, CLOUD, list(topics), received, persistent=True):
                            first = _first_seqs(received, set(topics.values()), max(1.0, seconds / 2))
                            with received.lock:
                                s0, m0 = received.samples, received.count
                                received.latencies, updates.latencies = [], []
                            u0, t0 = updates.count, time.perf_counter()
                            time.sleep(seconds)
                            with received.lock:
                                live_s = time.perf_counter() - t0
                                ups, sps = (updates.count - u0) / live_s, (received.samples - s0) / live_s
                                mps = (received.count - m0) / live_s
                                cloud_lat, received.latencies = received.latencies, None
                                registry_lat, updates.latencies = updates.latencies, None
                            backlog = _outage(broker, link, received, first, outage_s, drain_timeout_s)
                        ok = _ok_count(edge)
                finally:
                    sub.cancel()
        finally:
            sim.terminate()
            try:
                sim.wait(15)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
    l50, l99 = ms_stats(cloud_lat)
    r50, r99 = ms_stats(registry_lat)
    return FlowResult(
        devices=devices, devices_ok=ok, updates_per_s_without=ups_without, cpu_pct_without=cpu_without,
        updates_per_s_with=ups_with, cpu_pct_with=cpu_with, broker_cpu_pct=round(broker_cpu, 1),
        updates_per_s=round(ups, 1), samples_per_s=round(sps, 1), messages_per_s=round(mps, 1),
        latency_p50_ms=l50, latency_p99_ms=l99, registry_latency_p50_ms=r50, registry_latency_p99_ms=r99,
        outage_s=outage_s, duplicates=received.duplicates, **backlog,
    )


def _outage(broker: Any, link: Any, received: _Received, first: dict[MessageKind, int | None], outage_s: float,
            timeout_s: float) -> dict[str, Any]:
    """Stop the broker for `outage_s`, start it again, wait for every message made before the restart."""
    broker.stop()
    time.sleep(outage_s)
    restart_us = _now_us()
    made = {k: c.peek() for k, c in link.batcher.seq.items()}  # every seq below was made before the restart
    rows = link.outbox.queued
    broker.start()

    def wanted() -> set[tuple[MessageKind, int]]:
        return {(k, s) for k, lo in first.items() if lo is not None for s in range(lo, made[k])}

    want = wanted()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with received.lock:
            if want <= received.messages.keys():
                break
        time.sleep(0.05)
    with received.lock:
        got = {k: v for k, v in received.messages.items() if v[0] < restart_us <= v[2]}
        missing = len(want - received.messages.keys())
    arrivals = sorted(v[2] for v in got.values())
    samples = sum(v[1] for v in got.values())
    drain_s = (arrivals[-1] - arrivals[0]) / 1e6 if len(arrivals) > 1 else None
    reconnect_s = round((arrivals[0] - restart_us) / 1e6, 2) if arrivals else None
    return {"backlog_rows": rows, "backlog_messages": len(got), "backlog_samples": samples,
            "reconnect_s": reconnect_s, "drain_s": None if drain_s is None else round(drain_s, 2),
            "drain_samples_per_s": round(samples / drain_s, 1) if drain_s else None,
            "drain_messages_per_s": round(len(got) / drain_s, 1) if drain_s else None, "missing": missing}
