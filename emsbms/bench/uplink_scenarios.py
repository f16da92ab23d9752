"""The uplink scenarios as `python -m emsbms.bench` runs them: (figures, table rows) each.

Without Mosquitto each one answers a single row saying so, rather than failing the whole run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emsbms.bench import BenchError, uplink, uplink_flow
from emsbms.bench.uplink_cloud import require_mosquitto

Figures = tuple[list[dict[str, Any]], list[dict[str, Any]]]
COUNTS = (32, 128)  # devices: one count the edge keeps up with here, and the 128 of the goal


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:g}×"


def _guarded(fn: Callable[[], Figures]) -> Figures:
    try:
        require_mosquitto()
    except BenchError as e:
        return [], [{"skipped": str(e)}]
    return fn()


def commands(quick: bool) -> Figures:
    def go() -> Figures:
        results = [r.as_dict() for r in uplink.run_commands(2 if quick else 30)]
        rows = [{"path": r["path"], "acked": f"{r['acked']}/{r['writes']}", "p50 ms": r["p50_ms"],
                 "p99 ms": r["p99_ms"], "local acked": f"{r['local_acked']}/{r['writes']}",
                 "local p50 ms": r["local_p50_ms"], "local p99 ms": r["local_p99_ms"],
                 "p50 ÷ local": _x(r["ratio_p50_vs_local"]),
                 "added p50/p99 ms": f"{r['added_p50_ms']}/{r['added_p99_ms']}",
                 "added p99 < 10 ms": "yes" if r["goal_met"] else "no"} for r in results]
        return results, rows
    return _guarded(go)


def config(quick: bool) -> Figures:
    def go() -> Figures:
        r = uplink.run_config(2 if quick else 20).as_dict()
        row = {"switches": r["switches"], "applied": f"{r['applied']}/{r['switches']}", "p50 ms": r["p50_ms"],
               "p99 ms": r["p99_ms"], "max ms": r["max_ms"], "local applied": f"{r['local_applied']}/{r['switches']}",
               "local p50 ms": r["local_p50_ms"], "local p99 ms": r["local_p99_ms"],
               "p50 ÷ local": _x(r["ratio_p50_vs_local"]), "p99 < 1 s": "yes" if r["goal_met"] else "no"}
        return [r], [row]
    return _guarded(go)


def telemetry(quick: bool, duration: float) -> Figures:
    def go() -> Figures:
        if quick:
            results = [uplink_flow.run(4, seconds=0.5, outage_s=1.0, drain_timeout_s=30.0)]
        else:
            results = [uplink_flow.run(n, seconds=duration, outage_s=5.0) for n in COUNTS]
        figures = [r.as_dict() for r in results]
        return figures, [_flow_row(r) for r in figures]
    return _guarded(go)


def _flow_row(r: dict[str, Any]) -> dict[str, Any]:
    return {"devices": f"{r['devices_ok']}/{r['devices']}", "updates/s": f"{r['updates_per_s']:,.0f}",
            "samples/s at cloud": f"{r['samples_per_s']:,.0f}", "msgs/s": f"{r['messages_per_s']:,.0f}",
            "latency p50/p99 ms": f"{r['latency_p50_ms']}/{r['latency_p99_ms']}",
            "registry p50/p99 ms": f"{r['registry_latency_p50_ms']}/{r['registry_latency_p99_ms']}",
            "backlog msgs": r["backlog_messages"], "drain samples/s": r["drain_samples_per_s"],
            "drain ÷ live": _x(r["ratio_drain_vs_live"]), "missing": r["missing"],
            "CPU % without/with": f"{r['cpu_pct_without']}/{r['cpu_pct_with']}",
            "uplink CPU %/1k samples/s": r["cpu_per_ksps"], "broker CPU %": r["broker_cpu_pct"]}
