"""The cloud scenarios as `python -m emsbms.bench` runs them: (figures, table rows) each.

- *cloud-ingest*: emsbms/bench/cloud_ingest.py.
- *cloud-api*: through a real `emsbms cloud serve`, Mosquitto and PostgreSQL with a `LightEdge` that
  acks at once: `POST /commands` round trips against a local `edge.write` of the same command (the
  DBC echo path of emsbms/bench/commands.py, same run); `PUT /config` adding a device to its first
  sample in `channels`; a telemetry message to its sample in `series`.
- *cloud-fleet*: `LightEdge`s at 1 message per second each; the service's CPU, the lag, and rows
  counted against what was acknowledged by the broker (nothing may be missing).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from emsbms.bench import BenchError, cloud_ingest, commands
from emsbms.bench.cloud_stack import ORG, LightEdge, Stack, cpu_s, now_us, require_cloud, stack
from emsbms.bench.uplink_cloud import ms_stats

Figures = tuple[list[dict[str, Any]], list[dict[str, Any]]]
DEVICES, CHANNELS = 4, 25  # per fleet edge: 100 samples in one telemetry message per second
GOAL_ADDED_P99_MS, GOAL_CONFIG_P99_MS = 15.0, 2000.0


def _guarded(fn: Callable[[], Figures]) -> Figures:
    try:
        require_cloud()
    except BenchError as e:
        return [], [{"skipped": str(e)}]
    return fn()


def _poll(check: Callable[[], bool], timeout: float, every: float = 0.005) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(every)
    return True


def ingest(quick: bool) -> Figures:
    def go() -> Figures:
        results = cloud_ingest.run(quick)
        rows = [{"path": r["path"], "processes": r["processes"], "stored": f"{r['stored']}/{r['samples']}",
                 "samples/s": f"{r['samples_per_s']:,}",
                 "bare COPY indexed / plain": f"{r['bare_indexed_per_s']:,}/{r['bare_per_s']:,}" if "bare_per_s" in r
                 else "-", "÷ bare indexed / plain": f"{r['ratio_vs_bare_indexed']}/{r['ratio_vs_bare']}"
                 if "bare_per_s" in r else "-", "÷ 1 process": r.get("ratio_vs_one_process", "-")} for r in results]
        return results, rows
    return _guarded(go)


def _commands(s: Stack, edge: LightEdge, site: str, writes: int) -> dict[str, Any]:
    times: list[float] = []
    acked = 0
    for i in range(writes):
        t0 = time.perf_counter()
        r = s.http.post(f"/sites/{site}/commands", headers=s.auth,
                        json={"address": "bms_0/SetChargeCurrent", "value": 5.0 + i % 2, "timeout_s": 10})
        times.append((time.perf_counter() - t0) * 1000)
        acked += r.status_code == 200 and r.json().get("status") == "acked"
    local = commands.run_path(commands.PATHS[0], writes)
    p50, p99 = ms_stats(times)
    return {"what": "command via the API", "count": writes, "ok": acked, "p50_ms": p50, "p99_ms": p99,
            "baseline": "local edge.write (DBC echo)", "baseline_p50_ms": local.p50_ms,
            "baseline_p99_ms": local.p99_ms, "edge_commands": edge.commands, "goal_ms": GOAL_ADDED_P99_MS}


def _configs(s: Stack, site: str, switches: int) -> dict[str, Any]:
    times: list[float] = []
    seen = 0
    for k in range(1, switches + 1):  # one device more each time, each on its own bus
        buses = [{"name": f"can{i}", "interface": "virtual", "channel": f"bench-cloud-can{i}"} for i in range(k + 1)]
        devices = [{"name": f"bms_{i}", "bus": f"can{i}", "profile": "acme-hv"} for i in range(k + 1)]
        t0 = time.perf_counter()
        r = s.http.put(f"/sites/{site}/config", headers=s.auth, json={"buses": buses, "devices": devices, "rules": []})
        if r.status_code != 200:
            raise BenchError(f"PUT /config: {r.status_code} {r.text}")
        address = f"bms_{k}/Soc"
        if _poll(_getter(s, f"/sites/{site}/channels", {}, partial(_contains, address)), 30):
            times.append((time.perf_counter() - t0) * 1000)
            seen += 1
    p50, p99 = ms_stats(times)
    return {"what": "PUT /config → new device in channels", "count": switches, "ok": seen, "p50_ms": p50,
            "p99_ms": p99, "goal_ms": GOAL_CONFIG_P99_MS}


def _queryable(s: Stack, edge: LightEdge, site: str, probes: int) -> dict[str, Any]:
    times: list[float] = []
    for i in range(probes):
        at = now_us()
        edge.telemetry([{"address": "probe/Value", "value": float(i), "timestamp_us": at, "quality": "ok"}])
        t0 = time.perf_counter()
        query = {"address": "probe/Value", "from": _iso(at - 1), "to": _iso(at + 1)}
        if _poll(_getter(s, f"/sites/{site}/series", query, lambda body: bool(body["points"])), 30):
            times.append((time.perf_counter() - t0) * 1000)
    p50, p99 = ms_stats(times)
    return {"what": "telemetry → queryable in series", "count": probes, "ok": len(times), "p50_ms": p50,
            "p99_ms": p99}


def _contains(key: str, body: Any) -> bool:
    return key in body


def _getter(s: Stack, path: str, params: dict[str, str], test: Callable[[Any], bool]) -> Callable[[], bool]:
    return lambda: test(s.http.get(path, headers=s.auth, params=params).json())


def _iso(us: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(us // 1_000_000)) + f".{us % 1_000_000:06d}Z"


def api(quick: bool) -> Figures:
    def go() -> Figures:
        with tempfile.TemporaryDirectory(prefix="emsbms-bench-cloud-") as tmp, stack(Path(tmp)) as s:
            login = s.add_site("plant-1")
            edge = LightEdge(s.broker.port, ORG, "plant-1", login)
            try:
                if not _poll(lambda: bool(s.http.get("/sites", headers=s.auth).json()["sites"][0]["online"]), 30):
                    raise BenchError("cloud-api: the light edge is not online in GET /sites within 30 s")
                n = 3 if quick else 100
                results = [_commands(s, edge, "plant-1", n), _configs(s, "plant-1", 2 if quick else 20),
                           _queryable(s, edge, "plant-1", n)]
            finally:
                edge.close()
        rows = [{"what": r["what"], "ok": f"{r['ok']}/{r['count']}", "p50/p99 ms": f"{r['p50_ms']}/{r['p99_ms']}",
                 "baseline p50/p99 ms": f"{r['baseline_p50_ms']}/{r['baseline_p99_ms']}" if "baseline" in r else "-",
                 "goal p99 ms": r.get("goal_ms", "-")} for r in results]
        return results, rows
    return _guarded(go)


def fleet(quick: bool, duration: float) -> Figures:
    def go() -> Figures:
        edges_n, seconds = (5, 2.0) if quick else (100, max(duration, 15.0))
        with tempfile.TemporaryDirectory(prefix="emsbms-bench-cloud-") as tmp, stack(Path(tmp)) as s:
            edges = [LightEdge(s.broker.port, ORG, f"site-{i:03d}", s.add_site(f"site-{i:03d}"))
                     for i in range(edges_n)]
            try:
                cpu0, t0 = cpu_s(s.serve.pid), time.monotonic()
                sent = 0
                tick = 0
                while time.monotonic() - t0 < seconds:
                    at = now_us()
                    for e in edges:
                        e.telemetry([{"address": f"bms_{d}/Ch{c}", "value": float(tick + c), "timestamp_us": at,
                                      "quality": "ok"} for d in range(DEVICES) for c in range(CHANNELS)])
                        sent += DEVICES * CHANNELS
                    tick += 1
                    time.sleep(max(0.0, t0 + tick - time.monotonic()))
                wall = time.monotonic() - t0
                cpu = cpu_s(s.serve.pid) - cpu0
                end = time.perf_counter()
                query = "SELECT count(*) FROM telemetry WHERE site LIKE 'site-%'"
                _poll(lambda: s.count(query) >= sent, 120, every=0.05)
                lag_ms = (time.perf_counter() - end) * 1000
                stored = s.count(query)
                gaps = s.count("SELECT count(*) FROM events WHERE kind = 'data_loss'")
            finally:
                for e in edges:
                    e.close()
        r = {"edges": edges_n, "samples_per_edge_s": DEVICES * CHANNELS, "seconds": round(wall, 1),
             "samples_sent": sent, "samples_stored": stored, "missing": sent - stored, "data_loss_events": gaps,
             "serve_cpu_pct": round(100 * cpu / wall, 1), "drain_after_last_ms": round(lag_ms)}
        row = {"edges": edges_n, "samples/s": f"{sent / wall:,.0f}", "stored": f"{stored}/{sent}",
               "missing": r["missing"], "data_loss events": gaps, "serve CPU %": r["serve_cpu_pct"],
               "lag after the last send ms": r["drain_after_last_ms"]}
        return [r], [row]
    return _guarded(go)
