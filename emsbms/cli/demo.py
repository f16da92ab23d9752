"""`emsbms demo`: simulated BMS units of every shipped profile, the edge and the live monitor."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from emsbms import demo as demo_site
from emsbms.cli.common import Duration, handle_errors
from emsbms.cli.monitor import show, watch
from emsbms.cli.run import core_events_to
from emsbms.edge import Edge
from emsbms.edge.events import EventLog
from emsbms.monitor import Filters

if TYPE_CHECKING:
    from emsbms.core.service import EdgeCore

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

    Needs no site file. pylon-lv runs twice, with identical IDs on two buses. The EMS core runs
    site-limits, limit-enforcement and soc-balance over three of them (the device ess0, the
    overrides pane). Every 40 s a scenario injects faults and writes commands (overrides of 30 s),
    so the event log has something to show.
    """
    if write_site is not None:
        path = demo_site.write_demo_site(write_site)
        typer.echo(f"wrote {path}")
        return
    simulations, site = demo_site.start_simulations(demo_site.demo_site())
    try:
        edge = Edge(site)
        events = watch(edge)
        core = demo_core(edge, events)
        with edge:
            if core is not None:
                core.start()
            # the scenario's writes go through the core's dispatcher: manual overrides of the balancer
            write = edge.write if core is None else core.local_write
            scenario = None if no_scenario else demo_site.Scenario(write, simulations).start()
            try:
                show(edge, duration, Filters(), f"emsbms demo · {len(site.devices)} simulated BMS", events=events)
            finally:
                if scenario is not None:
                    scenario.stop()  # before the edge stops: a command may be on its way
                if core is not None:
                    core.stop()
    finally:
        demo_site.stop_simulations(simulations)


def demo_core(edge: Edge, events: EventLog) -> EdgeCore | None:
    """The core over the demo's strings (no database: its overrides are shown, not shared), its events in `events`."""
    if not edge.site.controllers:
        return None
    from emsbms.core.service import EdgeCore

    core = EdgeCore(edge, None, expires_s=demo_site.DEMO_OVERRIDE_S)
    core_events_to(core, events)
    return core
