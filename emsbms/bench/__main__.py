"""`python -m emsbms.bench [--json FILE] [--quick] [--only NAME ...]`: run the scenarios, print tables.

Scenarios: decode, capacity (the edge alone, frames put into its queues), e2e (virtual buses),
udp (udp_multicast, generator in another process), devices, commands, startup, and the uplink through a
real Mosquitto (uplink-commands, uplink-config, uplink-telemetry), and the cloud service with a real
PostgreSQL (cloud-ingest, cloud-api, cloud-fleet). ``--quick`` runs
each one tiny (what the tests do).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from emsbms.bench import alarms, cloud, commands, decode, devices, e2e, groups, startup, uplink_scenarios
from emsbms.bench import core as core_bench
from emsbms.bench.measure import cores

SCENARIOS = ("decode", "capacity", "e2e", "udp", "groups", "devices", "commands", "startup", "uplink-commands",
             "uplink-config", "uplink-telemetry", "cloud-ingest", "cloud-api", "cloud-fleet", "alarms", "core")


class _CountingHandler(logging.Handler):
    """Counts log records instead of printing them: the scenarios drive devices into timeouts."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        key = f"{record.levelname} {record.name}"
        self.counts[key] = self.counts.get(key, 0) + 1


def _table(title: str, rows: list[dict[str, Any]]) -> Table:
    table = Table(title=title)
    for col in rows[0] if rows else ():
        table.add_column(col, justify="right")
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    return table


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:g}×"


def _fps(x: float | None) -> str:
    return "-" if x is None else f"{x:,.0f}"


def _decode(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = decode.run(frames=2_000 if quick else 20_000, min_time=0.0 if quick else 0.5)
    rows = [{"profile": r.profile, "compiled f/s": _fps(r.compiled_fps), "adapter f/s": _fps(r.adapter_fps),
             "decode_message f/s": _fps(r.cantools_decode_message_fps),
             "Message.decode f/s": _fps(r.cantools_message_decode_fps),
             "compiled ÷ dm": _ratio(r.ratio(r.compiled_fps)), "sampler ÷ dm": _ratio(r.ratio(r.sampler_fps)),
             "adapter ÷ dm": _ratio(r.ratio(r.adapter_fps))} for r in results]
    return [r.as_dict() for r in results], rows


# (buses, bitrate, load): 100 % on 1-8 buses at both bitrates, and 80 % for the latency goal
E2E_CONFIGS: tuple[tuple[int, int, float], ...] = (
    *((n, rate, 1.0) for rate in (1_000_000, 500_000) for n in (1, 2, 4, 8)),
    (1, 1_000_000, 0.8), (8, 1_000_000, 0.8),
)
UDP_CONFIGS: tuple[tuple[int, int, float], ...] = (*((n, 1_000_000, 1.0) for n in (1, 2, 4, 8)), (1, 1_000_000, 0.8))


def _e2e(interface: str, quick: bool, duration: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    configs = ((1, 1_000_000, 0.1), (2, 500_000, 0.1)) if quick else (
        E2E_CONFIGS if interface == "virtual" else UDP_CONFIGS)
    results = [e2e.run(interface, n, rate, load, duration=0.3 if quick else duration) for n, rate, load in configs]
    return [r.as_dict() for r in results], [e2e.summary(r) for r in results]


def _capacity(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = [e2e.capacity(n, 500 if quick else 10_000) for n in ((1,) if quick else (1, 8))]
    rows = [{"buses": r.buses, "frames": r.frames, "frames/s": _fps(r.frames_per_s),
             "CPU µs/frame": r.cpu_us_per_frame, "lost": r.lost} for r in results]
    return [asdict(r) for r in results], rows


def _devices(quick: bool, duration: float) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = devices.run((4,) if quick else (10, 32, 64, 128), seconds=0.5 if quick else duration)
    rows = [{"devices": r.devices, "ok": r.devices_ok, "f/s": _fps(r.frames_per_s), "CPU %": r.cpu_pct,
             "CPU %/kf/s": r.cpu_per_kfps, "base CPU %/kf/s": r.baseline_cpu_per_kfps, "RSS MiB": r.rss_mb,
             "channels": r.channels, "snapshot p50/p99 µs": f"{r.snapshot_p50_us}/{r.snapshot_p99_us}",
             "ready s": r.ready_s} for r in results]
    return [r.as_dict() for r in results], rows


def _commands(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = commands.run(writes=2 if quick else 30)
    rows = [{"path": r.path, "acked": f"{r.acked}/{r.writes}", "p50 ms": r.p50_ms, "p99 ms": r.p99_ms,
             "max ms": r.max_ms, "bare p50 ms": r.baseline_p50_ms, "bare p99 ms": r.baseline_p99_ms,
             "p50 ÷ bare": _ratio(r.as_dict()["ratio_p50_vs_baseline"])} for r in results]
    return [r.as_dict() for r in results], rows


def _startup(quick: bool) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    results = startup.run(runs=1 if quick else 5)
    rows = [{"what": r.what, "median ms": r.median_ms, "min ms": r.min_ms, "baseline": r.baseline,
             "baseline ms": r.baseline_median_ms, "ratio": _ratio(r.as_dict()["ratio_vs_baseline"]),
             "python -c pass ms": r.interpreter_ms} for r in results]
    return [r.as_dict() for r in results], rows


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip()
    except OSError:
        return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emsbms.bench", description=__doc__)
    parser.add_argument("--json", metavar="FILE", help="write every figure to FILE")
    parser.add_argument("--quick", action="store_true", help="each scenario once, tiny (a smoke test)")
    parser.add_argument("--only", nargs="+", choices=SCENARIOS, metavar="NAME",
                        help=f"run only these scenarios ({', '.join(SCENARIOS)})")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds of traffic per measurement")
    args = parser.parse_args(argv)
    counter = _CountingHandler()
    root = logging.getLogger()
    root.addHandler(counter)
    root.setLevel(logging.WARNING)
    console = Console(width=200)
    q, d = args.quick, args.duration
    runners: dict[str, tuple[str, Callable[[], tuple[list[dict[str, Any]], list[dict[str, Any]]]]]] = {
        "decode": ("Decode: frames/s on identical frames; ÷ dm = against cantools decode_message",
                   lambda: _decode(q)),
        "capacity": ("Edge capacity: frames put straight into the receive queues (no bus, no generator)",
                     lambda: _capacity(q)),
        "e2e": ("End to end, virtual buses: edge (baseline: bare Notifier)", lambda: _e2e("virtual", q, d)),
        "udp": ("End to end, udp_multicast, generator in another process: edge (baseline)",
                lambda: _e2e("udp_multicast", q, d)),
        "groups": ("Bus groups, udp_multicast: one process vs worker processes (CPU: main + workers)",
                   lambda: groups.rows(groups.run(q, d))),
        "devices": ("Device count, 4 buses, mixed protocols", lambda: _devices(q, d)),
        "commands": ("Command round trip, edge vs the bare libraries", lambda: _commands(q)),
        "startup": ("Start-up, cold", lambda: _startup(q)),
        "uplink-commands": ("Uplink: cmd → cmd/result through Mosquitto vs a local edge.write",
                            lambda: uplink_scenarios.commands(q)),
        "uplink-config": ("Uplink: config (profile switch) → first sample under it, vs the local handler",
                          lambda: uplink_scenarios.config(q)),
        "uplink-telemetry": ("Uplink: telemetry, backlog drain and CPU, 32 and 128 devices (quick: 4)",
                             lambda: uplink_scenarios.telemetry(q, d)),
        "cloud-ingest": ("Cloud: ingest samples/s into PostgreSQL vs a bare COPY; 1 vs 2 ingest processes",
                         lambda: cloud.ingest(q)),
        "cloud-api": ("Cloud: command via the API vs a local edge.write; config to channels; series",
                      lambda: cloud.api(q)),
        "cloud-fleet": ("Cloud: a fleet of light edges into emsbms cloud serve", lambda: cloud.fleet(q, d)),
        "alarms": ("Alarms: rule cost per sample vs the registry's update; frame → event latency",
                   lambda: alarms.rows(q)),
        "core": ("Core: cycle CPU time, three controllers, vs the registry snapshot alone", lambda: core_bench.rows(q)),
    }
    doc: dict[str, Any] = {
        "cores": cores(), "python": platform.python_version(), "platform": platform.platform(),
        "commit": _git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "loadavg_before": list(os.getloadavg()), "quick": q, "duration_s": d,
    }
    try:
        for name in args.only or SCENARIOS:
            title, fn = runners[name]
            t0 = time.monotonic()
            figures, rows = fn()
            doc[name] = figures
            doc.setdefault("seconds", {})[name] = round(time.monotonic() - t0, 1)
            console.print(_table(f"{title} ({cores()} cores, Python {platform.python_version()})", rows))
    finally:
        root.removeHandler(counter)
    doc["loadavg_after"] = list(os.getloadavg())
    doc["log_records"] = counter.counts
    if counter.counts:
        console.print("log records (not shown): " + ", ".join(f"{k} ×{n}" for k, n in sorted(counter.counts.items())))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
