"""Bus groups: the end-to-end scenario on udp_multicast, one process against worker processes.

The same generator (``python -m emsbms.bench.traffic`` in a process of its own), the same
traffic and the same counting as `e2e` (every frame by its sequence number, latency from the
frame's own timestamp to the subscriber in the main process), run twice per configuration in one
run: ``workers = "off"`` (every bus in the main process) and ``workers = N`` with N = min(buses,
cores) worker processes. CPU is the edge's whole: the main process and its workers, over the
generator's sending window, as % of one core and per core; RSS is the main process plus its
workers. The generator's own CPU is given apart (it shares the cores: on this 2-core machine it
is what the edge cannot have).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from emsbms.bench.e2e import EdgeReceiver, Figures, UdpSource, _wait_drained, bus_configs, measure
from emsbms.bench.measure import cores, percentile, rss_mb
from emsbms.bench.paced import paced_bus, sent_counts
from emsbms.bench.traffic import LossCounter, Sent, Traffic
from emsbms.edge import Edge
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig, Site

TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """utime + stime of a process (also a zombie), in s; 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS
    except (OSError, IndexError, ValueError):
        return 0.0


def _rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class _GroupedReceiver(EdgeReceiver):
    """The bench's EdgeReceiver, remembering its workers' pids and their RSS before it stops."""

    worker_rss_mb = 0.0

    def start(self) -> None:
        super().start()
        if self.pids():
            time.sleep(0.5)  # the fresh workers settle (imports, first frames) before the window

    def pids(self) -> list[int]:
        pool = self.edge.pool
        return [] if pool is None else [p for p in pool.pids().values() if p is not None]

    def stop(self) -> int:
        self.worker_rss_mb = sum(_rss_mb(p) for p in self.pids())
        return super().stop()


class _PacedReceiver(_GroupedReceiver):
    """The same Edge and counting on paced buses (`bench/paced.py`): the traffic made in the readers."""

    def __init__(self, traffic: Traffic, bitrate: int, rate: float, frames: int, gate: str, workers: int) -> None:
        buses = [BusConfig(f"can{i}", "udp_multicast", "239.74.163.9", bitrate,
                           {"port": 40000 + i, "bench_bus": i, "devices": traffic.devices_per_bus, "rate": rate,
                            "frames": frames, "gate": gate}) for i in range(traffic.buses)]
        devices = [DeviceConfig(**d) for d in traffic.devices([b.name for b in buses])]
        site = Site("bench", "groups", buses, devices, workers=workers or "off")
        self.edge = Edge(site, bus_factory=paced_bus)
        self.counters = [LossCounter() for _ in buses]
        self.latencies: list[list[int]] = [[] for _ in buses]
        for i in range(len(buses)):
            self.edge.subscribe(f"b{i}d*/Seq/*", self._callback(i))


class _WindowedSource(UdpSource):
    """The udp generator; also reads the workers' and its own CPU around its sending window."""

    def __init__(self, receiver: _GroupedReceiver, *args: Any) -> None:
        super().__init__(*args)
        self.receiver = receiver
        self.worker_cpu_s = 0.0
        self.generator_cpu_s = 0.0

    def run(self, rate: float, duration: float) -> Sent:
        pids = self.receiver.pids()
        assert self.proc is not None
        before = [_cpu_s(p) for p in pids], _cpu_s(self.proc.pid)
        sent = super().run(rate, duration)
        self.worker_cpu_s = sum(_cpu_s(p) for p in pids) - sum(before[0])
        self.generator_cpu_s = _cpu_s(self.proc.pid) - before[1]
        return sent


@dataclass
class GroupResult:
    """One configuration, one mode (one process or N workers)."""

    buses: int
    bitrate: int
    workers: int  # 0: one process
    target_fps: float
    edge: Figures = field(default_factory=Figures)
    total_cpu_pct: float = 0.0  # main + workers, % of one core
    cpu_per_core_pct: float = 0.0
    generator_cpu_pct: float = 0.0
    total_rss_mb: float = 0.0
    main_us_per_frame: float | None = None  # CPU of the main process per frame decoded in the window
    worker_us_per_frame: float | None = None  # CPU of the workers per frame decoded in the window


def run_one(buses: int, bitrate: int, workers: int, load: float = 1.0, duration: float = 3.0,
            devices_per_bus: int = 4) -> GroupResult:
    traffic = Traffic(buses, devices_per_bus)
    rate = traffic.frame_rate(bitrate, load)
    configs = bus_configs("udp_multicast", buses, bitrate)
    receiver = _GroupedReceiver(configs, traffic, workers=workers or "off")
    source = _WindowedSource(receiver, configs, traffic, rate, duration)
    started = time.perf_counter()
    figures = measure(receiver, source, rate, duration, True)
    wall = max(1e-9, min(duration, time.perf_counter() - started))
    total = figures.cpu_pct + 100.0 * source.worker_cpu_s / wall
    n = cores()
    return GroupResult(buses, bitrate, workers, round(rate * buses, 1), figures, round(total, 1),
                       round(total / n, 1), round(100.0 * source.generator_cpu_s / wall, 1),
                       round(figures.rss_mb + receiver.worker_rss_mb, 1))


def run_udp(quick: bool = False, duration: float = 3.0) -> list[GroupResult]:
    """1, 2, 4, 8 buses at 100 % of 1 Mbit/s and 500 kbit/s, one process and min(buses, cores) workers."""
    sizes = (1, 2) if quick else (1, 2, 4, 8)
    results = []
    for bitrate in (1_000_000, 500_000):
        for n in sizes:
            for workers in (0, min(n, cores())):
                results.append(run_one(n, bitrate, workers, load=0.1 if quick else 1.0,
                                       duration=0.3 if quick else duration))
    return results


def rows(results: list[GroupResult]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The JSON figures and the table's rows."""
    table = []
    for r in results:
        e = r.edge
        table.append({
            "buses": f"{'udp' if r.main_us_per_frame is None else 'paced'} ×{r.buses}",
            "rate": f"{r.bitrate // 1000} k", "workers": r.workers or "one process",
            "target f/s": f"{r.target_fps:,.0f}", "offered f/s": f"{e.offered_fps:,.0f}",
            "edge f/s": f"{e.decoded_fps:,.0f}", "lost": e.lost, "drops": e.queue_drops,
            "p50/p99 ms": "/".join("-" if x is None else f"{x / 1000:.2f}" for x in (e.latency_p50_us,
                                                                                 e.latency_p99_us)),
            "CPU % (per core)": f"{r.total_cpu_pct:.0f} ({r.cpu_per_core_pct:.0f})",
            "gen CPU %": f"{r.generator_cpu_pct:.0f}", "RSS MiB": f"{r.total_rss_mb:.0f}",
            "CPU µs/frame main (workers)": "-" if r.main_us_per_frame is None else
            f"{r.main_us_per_frame:g} ({'-' if r.worker_us_per_frame is None else f'{r.worker_us_per_frame:g}'})",
        })
    return [asdict(r) for r in results], table


def run_paced(buses: int, bitrate: int, workers: int, load: float = 1.0, duration: float = 3.0,
              devices_per_bus: int = 4) -> GroupResult:
    """One configuration on paced buses: no generator process, every bus starts on one instant."""
    traffic = Traffic(buses, devices_per_bus)
    rate = traffic.frame_rate(bitrate, load)
    frames = int(rate * duration)
    with tempfile.TemporaryDirectory() as tmp:
        gate = Path(tmp) / "gate.json"
        receiver = _PacedReceiver(traffic, bitrate, rate, frames, str(gate), workers)
        receiver.start()
        try:
            pids = receiver.pids()
            start = time.time() + 0.3
            gate.write_text(json.dumps({"start": start}), encoding="ascii")
            time.sleep(max(0.0, start - time.time()))
            cpu0, workers0, wall0 = time.process_time(), sum(_cpu_s(p) for p in pids), time.perf_counter()
            seen0 = sum(c.received for c in receiver.counters)
            time.sleep(duration)
            in_window = sum(c.received for c in receiver.counters)
            main_cpu = time.process_time() - cpu0
            worker_cpu = sum(_cpu_s(p) for p in pids) - workers0
            cpu = main_cpu + worker_cpu
            wall = time.perf_counter() - wall0
            _wait_drained(receiver.counters, frames * buses)
            memory = rss_mb()
        finally:
            drops = receiver.stop()
    lost = sum(c.finish(sent_counts(traffic, i, frames)) for i, c in enumerate(receiver.counters))
    latencies = [x for per_bus in receiver.latencies for x in per_bus]
    figures = Figures(offered_fps=round(frames * buses / duration, 1), sent=frames * buses,
                      received=sum(c.received for c in receiver.counters), decoded_fps=round(in_window / wall, 1),
                      lost=lost, duplicates=sum(c.duplicates for c in receiver.counters),
                      reordered=sum(c.reordered for c in receiver.counters),
                      latency_p50_us=percentile(latencies, 50), latency_p99_us=percentile(latencies, 99),
                      latency_max_us=max(latencies) if latencies else None,
                      cpu_pct=round(100.0 * cpu / wall, 1), rss_mb=round(memory, 1), queue_drops=drops)
    total = 100.0 * cpu / wall
    done = max(1, in_window - seen0)
    return GroupResult(buses, bitrate, workers, round(rate * buses, 1), figures, round(total, 1),
                       round(total / cores(), 1), 0.0, round(memory + receiver.worker_rss_mb, 1),
                       round(1e6 * main_cpu / done, 1), round(1e6 * worker_cpu / done, 1) if pids else None)


def run(quick: bool = False, duration: float = 3.0) -> list[GroupResult]:
    """Paced buses (the main table), then udp_multicast with its generator process; both modes each."""
    sizes = (1, 2) if quick else (1, 2, 4, 8)
    results = []
    for bitrate in (1_000_000, 500_000):
        for n in sizes:
            for workers in (0, min(n, cores())):
                results.append(run_paced(n, bitrate, workers, load=0.1 if quick else 1.0,
                                         duration=0.3 if quick else duration))
    return results + run_udp(quick, duration)
