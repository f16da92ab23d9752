"""Alarms scenario: the rule engine's cost per sample next to the registry's, and frame → event latency.

Cost: a registry of `devices` devices × `CHANNELS` channels and `rules` rules (all but
`AGGREGATES` per device, thresholds never crossed, so every step is the steady-state work). A round
updates one channel of every device (as a 10 Hz frame per device does in 100 ms), then the runner
runs one cycle; figures are thread CPU time per sample: `Registry.apply` alone (no subscriber), the
same with the runner subscribed, the runner's cycle, and one full `evaluate` of every instance (what
each cycle cost before the index).

Latency: a real `Edge` on a virtual bus (one Pylon device) with the same number of rules over its
channels; a frame with the temperature above the threshold is sent, the time to the runner's
event is taken; then a cool frame clears it. p50/p99 over `crossings`.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import can

from emsbms.alarms.rules import parse_rules
from emsbms.alarms.runner import AlarmRunner
from emsbms.bench.measure import percentile
from emsbms.edge import Edge
from emsbms.edge.events import Event
from emsbms.edge.registry import Registry
from emsbms.site import Site, parse_site
from emsbms.types import ChannelInfo, CommState, Quality, Sample

CHANNELS = 12
AGGREGATES = 10


@dataclass
class CostResult:
    devices: int
    rules: int
    instances: int
    samples: int
    apply_us_per_sample: float  # Registry.apply, no subscriber
    apply_subscribed_us_per_sample: float  # the same with the runner's subscription
    cycle_us_per_sample: float  # the runner's cycle over what those samples can move
    full_evaluate_ms: float  # one evaluate of every instance


def _rules(count: int, channels: list[str]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for i in range(count - AGGREGATES):
        ch = channels[i % len(channels)]
        out.append({"name": f"r{i}", "expression": f"*/{ch} > {1e6 + i}", "for": "2s", "severity": "WARNING"})
    for i in range(AGGREGATES):
        ch = channels[i % len(channels)]
        out.append({"name": f"a{i}", "expression": f"max(*/{ch}) - min(*/{ch}) > {1e6 + i}", "severity": "INFO"})
    return out


def _site(devices: int) -> Site:
    return parse_site({"site": {"org": "bench", "name": "alarms"},
                       "bus": [{"name": "can0", "interface": "virtual", "channel": f"bench-{uuid.uuid4().hex[:8]}"}],
                       "device": [{"name": f"d{i}", "bus": "can0", "profile": "acme-hv"} for i in range(devices)]})


class _Rig:
    def __init__(self, devices: int) -> None:
        self.registry = Registry()
        self.site = _site(devices)


def cost(devices: int = 128, rules: int = 1000, rounds: int = 20) -> CostResult:
    channels = [f"Ch{k}" for k in range(CHANNELS)]
    rig = _Rig(devices)
    names = [d.name for d in rig.site.devices]
    rig.registry.declare(ChannelInfo(f"{d}/{c}") for d in names for c in [*channels, "CommState"])
    now = time.time_ns() // 1000
    rig.registry.apply([Sample(f"{d}/{c}", float(k), now, Quality.OK) for d in names for k, c in enumerate(channels)])
    rig.registry.apply([Sample(f"{d}/CommState", CommState.OK.value, now, Quality.OK) for d in names])
    bare = _apply_cost(rig.registry, names, channels, rounds)
    with tempfile.TemporaryDirectory() as tmp:
        runner = AlarmRunner(rig, parse_rules(_rules(rules, channels)), Path(tmp) / "edge.db")  # not started
        runner.cycle(now)  # the first cycle steps everything (and declares the State channels)
        for k in range(CHANNELS):  # warm up: the registry's routes and the index's cache of every address
            rig.registry.apply([Sample(f"{d}/{channels[k]}", float(k), now, Quality.OK) for d in names])
            runner.cycle(now)
        t0 = time.thread_time()
        runner.engine.evaluate(runner.readings, {d: CommState.OK for d in names}, now)
        full_ms = (time.thread_time() - t0) * 1e3
        apply_total = cycle_total = 0.0
        samples = 0
        for r in range(rounds):
            batch = [Sample(f"{d}/{channels[r % CHANNELS]}", float(r), now + r, Quality.OK) for d in names]
            t0 = time.thread_time()
            rig.registry.apply(batch)
            t1 = time.thread_time()
            runner.cycle(now + r)
            t2 = time.thread_time()
            apply_total += t1 - t0
            cycle_total += t2 - t1
            samples += len(batch)
        instances = len(runner.engine)
        runner.close()
    return CostResult(devices, rules, instances, samples, bare, round(apply_total / samples * 1e6, 2),
                      round(cycle_total / samples * 1e6, 2), round(full_ms, 1))


def _apply_cost(registry: Registry, names: list[str], channels: list[str], rounds: int) -> float:
    now = time.time_ns() // 1000
    total, samples = 0.0, 0
    for r in range(-CHANNELS, rounds):  # the first CHANNELS rounds warm up, untimed
        batch = [Sample(f"{d}/{channels[r % CHANNELS]}", float(r), now + r, Quality.OK) for d in names]
        t0 = time.thread_time()
        registry.apply(batch)
        if r >= 0:
            total += time.thread_time() - t0
            samples += len(batch)
    return round(total / samples * 1e6, 2)


@dataclass
class LatencyResult:
    rules: int
    crossings: int
    raised: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def _pylon(peer: can.BusABC, celsius: float) -> None:
    data = bytes.fromhex("5c1483ff") + round(celsius * 10).to_bytes(2, "little", signed=True)
    peer.send(can.Message(arbitration_id=0x356, data=data, is_extended_id=False))


def latency(rules: int = 1000, crossings: int = 200) -> LatencyResult:
    channel = f"bench-{uuid.uuid4().hex[:8]}"
    site = parse_site({"site": {"org": "bench", "name": "alarms"},
                       "bus": [{"name": "can0", "interface": "virtual", "channel": channel}],
                       "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}]})
    raw = [{"name": "hot", "expression": "*/Temperature > 40", "clear_expression": "*/Temperature < 35",
            "severity": "FAULT"}]
    raw += [{"name": f"r{i}", "expression": f"*/{('Voltage', 'Current', 'Temperature')[i % 3]} > {1e6 + i}",
             "severity": "INFO"} for i in range(rules - 1)]
    got = threading.Event()

    def on_event(e: Event) -> None:
        if e.text.endswith(": active") or e.text.endswith(": ok"):
            got.set()

    times: list[float] = []
    with tempfile.TemporaryDirectory() as tmp, Edge(site) as edge, \
            can.Bus(interface="virtual", channel=channel) as peer:
        runner = AlarmRunner(edge, parse_rules(raw), Path(tmp) / "edge.db", on_event=on_event).start()
        try:
            _pylon(peer, 20.0)
            edge.read("bms_0/Temperature", timeout=5.0)
            for i in range(crossings * 2):
                got.clear()
                t0 = time.perf_counter()
                _pylon(peer, 45.0 if i % 2 == 0 else 20.0)
                if got.wait(5.0):
                    times.append((time.perf_counter() - t0) * 1e3)
                time.sleep(0.02)
        finally:
            runner.close()
    raised = len(times)

    def r3(x: float | None) -> float | None:
        return None if x is None else round(x, 3)

    return LatencyResult(rules, crossings * 2, raised, r3(percentile(times, 50)), r3(percentile(times, 99)),
                         r3(max(times) if times else None))


def rows(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    c = cost(devices=8 if quick else 128, rules=50 if quick else 1000, rounds=3 if quick else 24)
    lat = latency(rules=50 if quick else 1000, crossings=3 if quick else 200)
    table: list[dict[str, Any]] = [{"what": f"cost, {c.devices} devices × {c.rules} rules ({c.instances} instances)",
              "apply µs/sample": c.apply_us_per_sample, "apply+sub µs/sample": c.apply_subscribed_us_per_sample,
              "cycle µs/sample": c.cycle_us_per_sample, "full evaluate ms": c.full_evaluate_ms, "p50/p99 ms": "-"},
             {"what": f"frame → event, 1 device × {lat.rules} rules ({lat.raised}/{lat.crossings})",
              "apply µs/sample": "-", "apply+sub µs/sample": "-", "cycle µs/sample": "-", "full evaluate ms": "-",
              "p50/p99 ms": f"{lat.p50_ms}/{lat.p99_ms}"}]
    return [{"cost": asdict(c), "latency": asdict(lat)}], table
