"""`emsbms demo`: simulated BMS units of every shipped profile, the edge and the live monitor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from emsbms import demo as demo_site
from emsbms.cli.common import Duration, handle_errors
from emsbms.cli.monitor import show, watch
from emsbms.edge import Edge
from emsbms.monitor import Filters

log = logging.getLogger(__name__)


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    write_site: Annotated[
        Path | None,
        typer.Option(
            "--write-site",
            metavar="FILE",
            help="write the demo site (udp_multicast buses) to FILE and exit, to run simulate and monitor apart",
        ),
    ] = None,
    no_scenario: Annotated[
        bool,
        typer.Option("--no-scenario", help="do not inject faults or write commands (a quiet demo)"),
    ] = False,
) -> None:
    """Simulated BMS units of every shipped profile on virtual buses, the edge and the live monitor.

    Needs no site file. pylon-lv runs twice, with identical IDs on two buses. Every 40 s a
    scenario injects faults and writes commands, so the event log has something to show.
    """
    if write_site is not None:
        path = demo_site.write_demo_site(write_site)
        typer.echo(f"wrote {path}")
        return
    simulations, site = demo_site.start_simulations(demo_site.demo_site())
    try:
        edge = Edge(site)
        events = watch(edge)
        with edge:
            scenario = None if no_scenario else demo_site.Scenario(edge.write, simulations).start()
            try:
                show(edge, duration, Filters(), f"emsbms demo · {len(site.devices)} simulated BMS", events=events)
            finally:
                if scenario is not None:
                    scenario.stop()  # before the edge stops: a command may be on its way
    finally:
        demo_site.stop_simulations(simulations)
