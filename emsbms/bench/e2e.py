"""End-to-end scenario: generated BMS traffic on 1-8 buses through the real Edge, against a bare Notifier.

The edge under test is the real one (BusRunner, Dispatcher, DbcAdapter, Registry); the bench
subscribes to every ``*/Seq/*`` channel and counts, per bus, the frames that reached the registry
by their sequence numbers (lost, duplicated, reordered) and the latency from the frame's timestamp
to the subscriber call. The baseline is a bare python-can ``Notifier`` whose listener only counts
the same frames by their sequence numbers. Both run the same traffic in the same process and run.

Two variants: ``virtual`` (python-can virtual buses; the generator is a thread of this process,
so its CPU time is measured apart and left out of the edge's) and ``udp_multicast`` (the generator
is another process, ``python -m emsbms.bench.traffic``; every bus has its own port).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import can

from emsbms.bench import BenchError
from emsbms.bench.measure import CpuWindow, percentile, rounded, rss_mb
from emsbms.bench.traffic import MULTICAST_GROUP, SEQ_MOD, LossCounter, Sent, Traffic, bus_sender, pace
from emsbms.can.bus import BusFactory, open_python_can
from emsbms.edge import Edge
from emsbms.edge.dispatch import now_us
from emsbms.site import BusConfig, parse_site
from emsbms.types import Quality, Reading

DRAIN_S = 10.0  # longest wait for the frames still queued when the generator stops
QUIET_S = 0.5  # the receiver is drained once nothing new arrived for this long


@dataclass
class Figures:
    """What one receiver (the edge or the baseline) did with the traffic."""

    offered_fps: float = 0.0
    sent: int = 0
    received: int = 0
    decoded_fps: float = 0.0  # frames that arrived during the generator's window, per second
    lost: int = 0
    duplicates: int = 0
    reordered: int = 0
    behind: int = 0  # frames the generator could not send on schedule (not sent, not lost)
    latency_p50_us: float | None = None
    latency_p99_us: float | None = None
    latency_max_us: float | None = None
    cpu_pct: float = 0.0  # of one core, generator thread excluded
    generator_cpu_pct: float = 0.0
    rss_mb: float = 0.0
    queue_drops: int = 0  # frames the edge's own receive queues dropped (counted by the edge)


@dataclass
class E2EResult:
    """One configuration: the edge and the baseline on the same traffic."""

    interface: str
    buses: int
    bitrate: int
    load: float
    devices_per_bus: int
    target_fps: float  # all buses together
    edge: Figures = field(default_factory=Figures)
    baseline: Figures = field(default_factory=Figures)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        b = self.baseline
        d["ratio_decoded_vs_baseline"] = round(self.edge.decoded_fps / b.decoded_fps, 3) if b.decoded_fps else None
        d["ratio_cpu_vs_baseline"] = round(self.edge.cpu_pct / b.cpu_pct, 2) if b.cpu_pct else None
        return d


class Receiver(Protocol):
    """The edge or the baseline: opens the buses, counts by sequence number per bus."""

    counters: list[LossCounter]
    latencies: list[list[int]]

    def start(self) -> None: ...

    def stop(self) -> int:
        """Stop; returns the frames its own queues dropped."""


class EdgeReceiver:
    """The real Edge on the site's buses; a subscription counts the sequence channels."""

    def __init__(self, buses: list[BusConfig], traffic: Traffic, bus_factory: BusFactory = open_python_can,
                 workers: str | int = "off") -> None:
        site = parse_site({
            "site": {"org": "bench", "name": "e2e", "workers": workers},  # "off": one process (bench/groups.py)
            "bus": [{"name": b.name, "interface": b.interface, "channel": b.channel, "bitrate": b.bitrate,
                     **b.options} for b in buses],
            "device": traffic.devices([b.name for b in buses]),
        })
        self.edge = Edge(site, bus_factory=bus_factory)
        self.counters = [LossCounter() for _ in buses]
        self.latencies: list[list[int]] = [[] for _ in buses]
        for i in range(len(buses)):
            self.edge.subscribe(f"b{i}d*/Seq/*", self._callback(i))

    def _callback(self, bus: int) -> Callable[[str, Reading], None]:
        see = self.counters[bus].see
        lat = self.latencies[bus].append
        ok = Quality.OK

        def on_seq(address: str, reading: Reading) -> None:
            if reading.quality is ok:  # going stale later is not a frame
                lat(now_us() - reading.timestamp_us)
                see(address, int(reading.value))  # type: ignore[arg-type]

        return on_seq

    def start(self) -> None:
        self.edge.start()

    def stop(self) -> int:
        drops = sum(r.dropped for r in self.edge.runners.values())
        self.edge.stop()
        return drops


class _CountingListener(can.Listener):
    """The baseline's listener: the sequence number from bytes 6-7, counted per stream."""

    def __init__(self, names: dict[int, str], counter: LossCounter, latencies: list[int]) -> None:
        self.names = names
        self.counter = counter
        self.latencies = latencies

    def on_message_received(self, msg: can.Message) -> None:
        name = self.names.get(msg.arbitration_id)
        if name is not None:
            self.latencies.append(now_us() - round(msg.timestamp * 1_000_000))
            self.counter.see(name, msg.data[6] | msg.data[7] << 8)


class NotifierReceiver:
    """The baseline: a bare python-can Notifier per bus whose listener only counts the frames."""

    def __init__(self, buses: list[BusConfig], traffic: Traffic) -> None:
        self.configs = buses
        self.traffic = traffic
        self.counters = [LossCounter() for _ in buses]
        self.latencies: list[list[int]] = [[] for _ in buses]
        self.buses: list[can.BusABC] = []
        self.notifiers: list[can.Notifier] = []

    def start(self) -> None:
        for i, cfg in enumerate(self.configs):
            bus = can.Bus(**cfg.can_kwargs())
            self.buses.append(bus)
            names = {s.arbitration_id: s.address for s in self.traffic.streams[i]}
            listener = _CountingListener(names, self.counters[i], self.latencies[i])
            self.notifiers.append(can.Notifier(bus, [listener], timeout=0.1))

    def stop(self) -> int:
        for n in self.notifiers:
            n.stop()
        for b in self.buses:
            b.shutdown()
        return 0


class Source(Protocol):
    """Where the traffic comes from."""

    def open(self) -> None: ...

    def run(self, rate: float, duration: float) -> Sent: ...

    def close(self) -> None: ...


class VirtualSource:
    """The generator as a thread of this process, sending through python-can virtual buses."""

    def __init__(self, buses: list[BusConfig], traffic: Traffic,
                 skip: Callable[[str, int], bool] | None = None) -> None:
        self.configs = buses
        self.traffic = traffic
        self.skip = skip
        self.buses: list[can.BusABC] = []

    def open(self) -> None:
        self.buses = [can.Bus(interface="virtual", channel=b.channel) for b in self.configs]

    def run(self, rate: float, duration: float) -> Sent:
        return pace(self.traffic, bus_sender(self.buses), rate, duration, skip=self.skip)

    def close(self) -> None:
        for b in self.buses:
            b.shutdown()
        self.buses = []


class UdpSource:
    """The generator in another process (``python -m emsbms.bench.traffic``) over udp_multicast.

    The process starts in `open` (an interpreter takes a while), and sends when `run` says go.
    """

    def __init__(self, buses: list[BusConfig], traffic: Traffic, rate: float, duration: float) -> None:
        self.ports = [int(b.options["port"]) for b in buses]
        self.group = buses[0].channel
        self.traffic = traffic
        self.bitrate = buses[0].bitrate
        self.rate = rate
        self.duration = duration
        self.proc: subprocess.Popen[str] | None = None

    def open(self) -> None:
        load = self.rate / self.traffic.frame_rate(self.bitrate, 1.0)
        cmd = [sys.executable, "-m", "emsbms.bench.traffic", "--ports", ",".join(map(str, self.ports)),
               "--group", self.group, "--devices", str(self.traffic.devices_per_bus),
               "--bitrate", str(self.bitrate), "--load", repr(load), "--duration", repr(self.duration)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        assert self.proc.stdout is not None and self.proc.stderr is not None
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            raise BenchError(f"generator process: expected 'ready', found {line!r}: {self.proc.stderr.read()}")

    def run(self, rate: float, duration: float) -> Sent:
        assert self.proc is not None and self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        out = self.proc.stdout.readline()
        try:
            doc = json.loads(out)
        except json.JSONDecodeError as e:
            raise BenchError(f"generator process: expected a JSON line, found {out!r}") from e
        return Sent(doc["counts"], doc["seconds"], doc["behind"], 0.0)

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _wait_drained(counters: list[LossCounter], expected: int) -> None:
    deadline = time.monotonic() + DRAIN_S
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        got = sum(c.received for c in counters)
        if got >= expected:
            return
        if got != last:
            last, since = got, time.monotonic()
        elif time.monotonic() - since > QUIET_S:
            return
        time.sleep(0.05)


def measure(receiver: Receiver, source: Source, rate: float, duration: float, separate_generator: bool) -> Figures:
    """Run the traffic once into `receiver`; what arrived, what was lost, latency, CPU, memory."""
    receiver.start()
    try:
        source.open()
        time.sleep(0.05)  # let the receive threads reach their first recv
        window = CpuWindow().start()
        sent = source.run(rate, duration)
        window.stop()
        in_window = sum(c.received for c in receiver.counters)
        _wait_drained(receiver.counters, sent.total)
        memory = rss_mb()
    finally:
        source.close()
        drops = receiver.stop()
    lost = sum(c.finish({a: n for a, n in sent.counts.items() if a.startswith(f"b{i}d")})
               for i, c in enumerate(receiver.counters))
    latencies = [x for per_bus in receiver.latencies for x in per_bus]
    generator_cpu = 0.0 if separate_generator else sent.cpu_s
    return Figures(
        offered_fps=round(sent.rate, 1),
        sent=sent.total,
        received=sum(c.received for c in receiver.counters),
        decoded_fps=round(in_window / window.wall_s, 1) if window.wall_s else 0.0,
        lost=lost,
        duplicates=sum(c.duplicates for c in receiver.counters),
        reordered=sum(c.reordered for c in receiver.counters),
        behind=sent.behind,
        latency_p50_us=percentile(latencies, 50),
        latency_p99_us=percentile(latencies, 99),
        latency_max_us=max(latencies) if latencies else None,
        cpu_pct=round(window.percent(generator_cpu), 1),
        generator_cpu_pct=round(100.0 * generator_cpu / window.wall_s, 1) if window.wall_s else 0.0,
        rss_mb=round(memory, 1),
        queue_drops=drops,
    )


def bus_configs(interface: str, count: int, bitrate: int) -> list[BusConfig]:
    """`count` buses of a fresh run: unique virtual channels, or udp_multicast with a port each."""
    if interface == "virtual":
        tag = uuid.uuid4().hex[:8]
        return [BusConfig(f"can{i}", "virtual", f"bench{i}-{tag}", bitrate) for i in range(count)]
    base = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 58000, 16)
    return [BusConfig(f"can{i}", "udp_multicast", MULTICAST_GROUP, bitrate, {"port": base + i}) for i in range(count)]


def run(interface: str = "virtual", buses: int = 1, bitrate: int = 1_000_000, load: float = 1.0,
        duration: float = 3.0, devices_per_bus: int = 4) -> E2EResult:
    """One configuration: the baseline, then the edge, on the same traffic."""
    traffic = Traffic(buses, devices_per_bus)
    rate = traffic.frame_rate(bitrate, load)
    result = E2EResult(interface, buses, bitrate, load, devices_per_bus, round(rate * buses, 1))
    separate = interface != "virtual"
    for side in ("baseline", "edge"):
        configs = bus_configs(interface, buses, bitrate)
        receiver: Receiver = (NotifierReceiver if side == "baseline" else EdgeReceiver)(configs, traffic)
        source: Source = (VirtualSource(configs, traffic) if interface == "virtual"
                          else UdpSource(configs, traffic, rate, duration))
        setattr(result, side, measure(receiver, source, rate, duration, separate))
    return result


@dataclass
class CapacityResult:
    """The edge alone: frames put straight into its receive queues (no bus, no python-can receive)."""

    buses: int
    frames: int
    frames_per_s: float
    cpu_us_per_frame: float
    lost: int


def capacity(buses: int = 8, frames_per_bus: int = 10_000) -> CapacityResult:
    """How fast the edge's own path (dispatch, decode, registry, one subscriber) drains pre-built frames.

    Each bus's queue gets `frames_per_bus` frames of the bench traffic at once; the figure is the
    time until the subscriber has seen them all. What python-can's receive path and a generator
    cost is left out: this is the ceiling of the edge's side alone.
    """
    traffic = Traffic(buses, 4)
    configs = bus_configs("virtual", buses, 1_000_000)
    receiver = EdgeReceiver(configs, traffic)
    now = time.time()
    per_bus: list[list[can.Message]] = []
    sent: dict[str, int] = {}
    for b in range(buses):
        streams = traffic.streams[b]
        msgs = []
        for n in range(frames_per_bus):
            k, seq = n % len(streams), n // len(streams)
            msgs.append(can.Message(arbitration_id=streams[k].arbitration_id, data=traffic.data(b, k, seq),
                                    is_extended_id=False, timestamp=now))
            sent[streams[k].address] = seq + 1
        per_bus.append(msgs)
    total = buses * frames_per_bus
    receiver.start()
    try:
        queues = [receiver.edge.runners[c.name].queue for c in configs]
        window = CpuWindow().start()
        for q, msgs in zip(queues, per_bus, strict=True):
            q.maxsize = max(q.maxsize, frames_per_bus)
            for m in msgs:
                q.put(m)
        _wait_drained(receiver.counters, total)
        window.stop()
    finally:
        receiver.stop()
    lost = sum(c.finish({a: n for a, n in sent.items() if a.startswith(f"b{i}d")})
               for i, c in enumerate(receiver.counters))
    return CapacityResult(buses, total, round(total / window.wall_s), round(1e6 * window.cpu_s / total, 2), lost)


def summary(r: E2EResult) -> dict[str, Any]:
    """The row the table prints."""
    e, b = r.edge, r.baseline
    return {
        "bus": f"{r.interface} ×{r.buses}", "rate": f"{r.bitrate // 1000} k {r.load:.0%}",
        "target f/s": f"{r.target_fps:,.0f}", "offered f/s": f"{e.offered_fps:,.0f}",
        "edge f/s": f"{e.decoded_fps:,.0f}", "base f/s": f"{b.decoded_fps:,.0f}",
        "lost": f"{e.lost} ({b.lost})",
        "p50/p99/max ms": "/".join(_ms(x) for x in (e.latency_p50_us, e.latency_p99_us, e.latency_max_us)),
        "base p99 ms": _ms(b.latency_p99_us),
        "CPU %": f"{e.cpu_pct:.0f} ({b.cpu_pct:.0f})", "gen CPU %": f"{e.generator_cpu_pct:.0f}",
        "RSS MiB": f"{e.rss_mb:.0f}",
    }


def _ms(us: float | None) -> str:
    value = rounded(None if us is None else us / 1000.0, 2)
    return "-" if value is None else f"{value:g}"


__all__ = ["SEQ_MOD", "E2EResult", "Figures", "run", "summary"]
