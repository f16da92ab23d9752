"""`emsbms run`: the headless edge, logging every channel update to SQLite."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import Duration, err, handle_errors, run_until, state, stop_signals
from emsbms.edge import Edge
from emsbms.edge.store import RunLog
from emsbms.edge.watch import ProfileWatcher

log = logging.getLogger(__name__)


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    db: Annotated[
        Path | None, typer.Option("--db", metavar="FILE", help="SQLite file (overrides the global --db)")
    ] = None,
) -> None:
    """Run the edge without a display; every channel update goes to the SQLite run log.

    Stops on Ctrl-C or SIGTERM (or after --duration), flushing the log before it exits.
    """
    path = db or state(ctx).db
    site = state(ctx).load_site(db=path)
    edge = Edge(site)
    runlog = RunLog(path, site=site.name)
    watcher = ProfileWatcher(path, edge, on_activate=lambda _: runlog.declare(
        edge.registry.info(a) for a in edge.registry.addresses()))  # profiles imported while it runs
    try:
        runlog.declare(edge.registry.info(a) for a in edge.registry.addresses())
        subscription = edge.subscribe("*", runlog.record)
        with stop_signals() as stop, edge:
            err(f"run: {len(site.devices)} devices on {len(site.buses)} buses; logging to {path}")
            run_until(stop, duration, tick=watcher.poll)
        subscription.cancel()
    finally:
        watcher.close()
        runlog.close()
    err(f"run: {runlog.written} samples written to {path}, {runlog.dropped} dropped")
