"""Device-count scenario: 10 to 128 simulated BMS of mixed protocols on 4 buses through one edge.

The devices run in another process (``python -m emsbms.bench.fleet``, see there for the mix:
J1939 and CANopen simulators and DBC-family devices on each of 4 buses, at their profiles' rates)
on ``udp_multicast`` buses (one port per bus), so this process holds only the edge: its CPU %,
resident memory and registry snapshot time are the edge's own.

The baseline is a bare python-can Notifier per bus that only counts the frames of the same
simulators, measured right after the edge in the same run (the devices are up by then: addresses
claimed, nodes operational). CPU is compared per 1,000 frames/s, since the rates differ a little.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can

from emsbms.bench import BenchError
from emsbms.bench.fleet import device_tables
from emsbms.bench.measure import CpuWindow, percentile, rss_mb
from emsbms.bench.traffic import MULTICAST_GROUP
from emsbms.demo import site_toml
from emsbms.edge import Edge
from emsbms.site import load_site
from emsbms.types import CommState

BUSES = 4
READY_S = 60.0  # longest wait for the devices to come up


@dataclass
class DevicesResult:
    """One device count: the edge against the bare Notifier on the same simulators."""

    devices: int
    mix: dict[str, int]
    devices_ok: int  # CommState OK when the window closed
    frames_per_s: float  # decoded by the edge
    cpu_pct: float  # edge process, of one core
    rss_mb: float
    snapshot_p50_us: float | None
    snapshot_p99_us: float | None
    channels: int
    ready_s: float  # from edge start until the devices were up
    baseline_frames_per_s: float
    baseline_cpu_pct: float

    @property
    def cpu_per_kfps(self) -> float | None:
        """CPU % per 1,000 frames/s."""
        return round(1000 * self.cpu_pct / self.frames_per_s, 2) if self.frames_per_s else None

    @property
    def baseline_cpu_per_kfps(self) -> float | None:
        fps = self.baseline_frames_per_s
        return round(1000 * self.baseline_cpu_pct / fps, 2) if fps else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["cpu_per_kfps"] = self.cpu_per_kfps
        d["baseline_cpu_per_kfps"] = self.baseline_cpu_per_kfps
        ours, theirs = self.cpu_per_kfps, self.baseline_cpu_per_kfps
        d["ratio_cpu_per_frame_vs_baseline"] = round(ours / theirs, 2) if ours and theirs else None
        return d


def write_site(path: Path, count: int, base_port: int) -> Path:
    buses = [f"can{i}" for i in range(BUSES)]
    tables = {
        "site": {"org": "bench", "name": f"devices-{count}"},
        "bus": [{"name": b, "interface": "udp_multicast", "channel": MULTICAST_GROUP, "port": base_port + i,
                 "bitrate": 500_000} for i, b in enumerate(buses)],
        "device": device_tables(count, buses),
    }
    path.write_text(site_toml(tables), encoding="utf-8")
    return path


def _fleet(site: Path, seconds: float) -> subprocess.Popen[str]:
    """The fleet process (python -m emsbms.bench.fleet), once it says it is ready."""
    proc = subprocess.Popen([sys.executable, "-m", "emsbms.bench.fleet", "--site", str(site), "--duration",
                             str(seconds)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        raise BenchError(f"fleet process: expected 'ready', found {line!r}")
    return proc


class _Count(can.Listener):
    def __init__(self) -> None:
        self.n = 0

    def on_message_received(self, msg: can.Message) -> None:
        self.n += 1


def _baseline(site_path: Path, seconds: float) -> tuple[float, float]:
    """Frames/s and CPU % of bare Notifiers counting the frames of every bus."""
    site = load_site(site_path)
    buses = [can.Bus(**b.can_kwargs()) for b in site.buses]
    counter = _Count()
    notifiers = [can.Notifier(b, [counter], timeout=0.1) for b in buses]
    try:
        time.sleep(min(1.0, seconds / 2))
        n0, window = counter.n, CpuWindow().start()
        time.sleep(seconds)
        window.stop()
        n1 = counter.n
    finally:
        for n in notifiers:
            n.stop()
        for b in buses:
            b.shutdown()
    return (n1 - n0) / window.wall_s, window.percent()


def _ok_count(edge: Edge) -> int:
    return sum(1 for a in edge.adapters.values() if a.comm_state is CommState.OK)


def _wait_ready(edge: Edge, count: int) -> float:
    t0 = time.monotonic()
    last, since = -1, t0
    while time.monotonic() - t0 < READY_S:
        ok = _ok_count(edge)
        if ok >= count:
            break
        if ok != last:
            last, since = ok, time.monotonic()
        elif time.monotonic() - since > 10.0:
            break  # no progress for 10 s: measure what came up
        time.sleep(0.1)
    return time.monotonic() - t0


def run_count(count: int, seconds: float = 3.0) -> DevicesResult:
    """One device count: simulators in another process, the baseline, then the edge."""
    base_port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 58000, 8)
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-") as tmp:
        site_path = write_site(Path(tmp) / "site.toml", count, base_port)
        sim = _fleet(site_path, READY_S + 4 * seconds + 30)
        try:
            edge = Edge.from_site(site_path)
            mix: dict[str, int] = {}
            for p in edge.profiles.values():
                mix[p.name] = mix.get(p.name, 0) + 1
            with edge:
                ready = _wait_ready(edge, count)
                frames0 = sum(d.frames_ok for d in edge.dispatchers.values())
                window = CpuWindow().start()
                times = _snapshots(edge, seconds)
                window.stop()
                frames1 = sum(d.frames_ok for d in edge.dispatchers.values())
                ok = _ok_count(edge)
                channels = len(edge.snapshot())
                memory = rss_mb()
            # afterwards: the devices are up (addresses claimed, nodes operational) and keep sending
            base_fps, base_cpu = _baseline(site_path, seconds)
        finally:
            sim.terminate()
            try:
                sim.wait(15)
            except subprocess.TimeoutExpired:
                sim.kill()
                sim.wait()
    return DevicesResult(
        devices=count, mix=mix, devices_ok=ok, frames_per_s=round((frames1 - frames0) / window.wall_s, 1),
        cpu_pct=round(window.percent(), 1), rss_mb=round(memory, 1),
        snapshot_p50_us=percentile(times, 50), snapshot_p99_us=percentile(times, 99), channels=channels,
        ready_s=round(ready, 1), baseline_frames_per_s=round(base_fps, 1), baseline_cpu_pct=round(base_cpu, 1),
    )


def _snapshots(edge: Edge, seconds: float) -> list[float]:
    """Take a snapshot every 20 ms for `seconds`; their durations in µs."""
    times: list[float] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t0 = time.perf_counter()
        edge.snapshot()
        times.append(round((time.perf_counter() - t0) * 1e6, 1))
        time.sleep(0.02)
    return times


def run(counts: tuple[int, ...] = (10, 32, 64, 128), seconds: float = 3.0) -> list[DevicesResult]:
    """The device-count scenario."""
    return [run_count(c, seconds) for c in counts]
