"""`emsbms run`: the headless edge, logging every channel update to SQLite."""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

import emsbms.core.registry  # noqa: F401  (checks the site's [[controller]] tables at load)
from emsbms.alarms.runner import AlarmRunner
from emsbms.alarms.sources import start_alarms
from emsbms.cli.common import Duration, err, handle_errors, run_until, state, stop_signals
from emsbms.edge import Edge
from emsbms.edge.events import EventLog
from emsbms.edge.lock import EdgeLock
from emsbms.edge.store import DEFAULT_MAX_AGE_S, DEFAULT_MAX_BYTES, Retention, RunLog
from emsbms.edge.watch import ProfileWatcher
from emsbms.errors import ConfigError
from emsbms.site import Site

if TYPE_CHECKING:
    from emsbms.core.service import EdgeCore
    from emsbms.uplink.link import EdgeUplink

log = logging.getLogger(__name__)

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


def parse_age(text: str) -> float:
    """`7d`, `12h`, `30m`, `90s` or plain seconds, as seconds (ConfigError otherwise)."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if found is None or float(found[1]) <= 0:
        raise ConfigError(f"--log-max-age: expected a duration above 0 such as 7d, 12h, 30m or 90s, found {text!r}")
    return float(found[1]) * _UNITS[found[2] or "s"]


def age_text(seconds: float) -> str:
    """The largest unit that divides `seconds`: 604800 -> 7d, 5400 -> 90m."""
    for unit in "dhm":
        if seconds % _UNITS[unit] == 0:
            return f"{seconds / _UNITS[unit]:g}{unit}"
    return f"{seconds:g}s"


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    db: Annotated[
        Path | None, typer.Option("--db", metavar="FILE", help="SQLite file (overrides the global --db)")
    ] = None,
    log_max_age: Annotated[
        str, typer.Option("--log-max-age", metavar="AGE", help="delete run log rows older than AGE (7d, 12h, 30m, 90s)")
    ] = age_text(DEFAULT_MAX_AGE_S),
    log_max_mb: Annotated[
        float, typer.Option("--log-max-mb", metavar="MB", min=1.0, help="keep the run log within MB mebibytes")
    ] = DEFAULT_MAX_BYTES / (1 << 20),
) -> None:
    """Run the edge without a display; every channel update goes to the SQLite run log.

    One edge per database: a second `run` on the same file exits 2, naming the running one.
    Stops on Ctrl-C or SIGTERM (or after --duration), flushing the log before it exits.
    """
    path = db or state(ctx).db
    retention = Retention(max_age_s=parse_age(log_max_age), max_bytes=int(log_max_mb * (1 << 20)))
    lock = EdgeLock.acquire(path)  # before the edge exists: a second edge never opens a bus
    try:
        edge = start_edge(state(ctx).load_site(db=path), state(ctx).site is not None, path, lock)
        runlog = RunLog(path, site=edge.site.name, retention=retention, lock=lock)
        _run(edge, runlog, path, duration)
    finally:
        lock.release()
    err(f"run: {runlog.written} samples written to {path}, {runlog.dropped} dropped, {runlog.lost} lost to"
        f" write errors, {runlog.pruned} old rows deleted")


def start_edge(site: Site, from_file: bool, path: Path, lock: EdgeLock) -> Edge:
    """The edge `run` starts: the configuration last applied from the cloud when the database has one,
    else the site file (`from_file`), else the database's commissioned site.

    `[site]` and `[uplink]` always come from the site file (the cloud's configuration carries no
    credentials). The edge from the database gets the lock this process holds.
    """
    from emsbms.uplink.config import applied_version  # no paho: the config module does no MQTT

    if not from_file:
        return Edge.from_db(path, lock=lock)
    applied = applied_version(path)
    if applied is None:
        return Edge(site)
    log.warning("run: starting from configuration %s applied from the cloud (stored in %s); [site] and [uplink]"
                " from %s", applied[0], path, site.label)
    return Edge.from_db(path, lock=lock, identity=site)


def _run(edge: Edge, runlog: RunLog, path: Path, duration: float | None) -> None:
    watcher = ProfileWatcher(path, edge, on_activate=lambda _: declare())  # profiles imported while it runs
    known = 0

    def declare() -> None:  # the channels of devices added (from the cloud or by activation) go to the run log
        nonlocal known
        addresses = edge.registry.addresses()
        known = len(addresses)
        runlog.declare(edge.registry.info(a) for a in addresses)

    def tick() -> None:
        watcher.poll()
        if len(edge.registry.addresses()) != known:
            declare()

    link: EdgeUplink | None = None
    core: EdgeCore | None = None
    alarms: AlarmRunner | None = None
    try:
        core = start_core(edge, path)
        if edge.site.uplink is not None:  # before the run log's declare: the uplink's channels are logged too
            from emsbms.uplink.link import EdgeUplink  # paho-mqtt is loaded only for a site with an [uplink]

            link = EdgeUplink(edge, edge.site.uplink, path, writer=None if core is None else core.writer)
            if core is not None:  # the core's events go to the uplink's `events` too
                core_events_to(core, link.events.log)
        alarms = start_alarms(edge, path, link)  # the [[rule]]s or the cloud's rules (emsbms/alarms/sources.py)
        declare()
        subscription = edge.subscribe("*", runlog.record)
        with stop_signals() as stop, edge:
            err(f"run: {len(edge.site.devices)} devices on {len(edge.site.buses)} buses; logging to {path}"
                f" (kept {age_text(runlog.retention.max_age_s)}, {runlog.retention.max_bytes / (1 << 20):g} MiB)")
            if link is not None:
                link.start()
                err(f"run: uplink to {link.uplink.config.url} as {link.uplink.config.username!r} on"
                    f" {link.uplink.topics.root}#")
            if core is not None:
                core.start()
                err(f"run: core cycle every {core.runner.period_us / 1e6:g} s with"
                    f" {', '.join(c.name for c in core.runner.cycle.controllers)}")
            run_until(stop, duration, tick=tick)
            if core is not None:
                core.stop()
                core = None
        subscription.cancel()
    finally:
        if core is not None:
            core.stop()
        if alarms is not None:
            alarms.close()
        if link is not None:
            link.close()
        watcher.close()
        runlog.close()


def start_core(edge: Edge, path: Path | None) -> EdgeCore | None:
    """The core (dispatcher, cycle, overrides table in `path`) for a site with [[controller]] tables, else None."""
    if not edge.site.controllers:
        return None
    from emsbms.core.service import EdgeCore

    return EdgeCore(edge, path)


def core_events_to(core: EdgeCore, events: EventLog) -> None:
    """Hand the core's events to `events` (the uplink's or the monitor's event log), as warnings of source core."""

    def post(text: str) -> None:
        events.post_log(logging.makeLogRecord({"name": "emsbms.core", "levelno": logging.WARNING,
                                               "levelname": "WARNING", "msg": text}))

    core.sinks.append(post)
