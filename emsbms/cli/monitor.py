"""`emsbms monitor`: the live view of every channel and bus, drawn from registry snapshots."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Annotated

import typer
from rich.console import Console, RenderableType
from rich.live import Live

from emsbms.cli.common import Duration, handle_errors, run_until, state, stop_signals
from emsbms.dispatch import now_us
from emsbms.edge import Edge
from emsbms.errors import ConfigError
from emsbms.monitor import Filters, render
from emsbms.site import Site

REFRESH_S = 0.2
"""Redraw period (5 Hz), on the main thread, from a registry snapshot."""

PAGE_S = 5.0
"""When the channels do not fit, the next page is shown after this many seconds."""


def make_filters(site: Site, devices: list[str], buses: list[str]) -> Filters:
    """Filters from --device and --bus: --bus narrows the devices to those on it, and --device
    alone shows only the buses of those devices."""
    device_names = [d.name for d in site.devices]
    bus_names = [b.name for b in site.buses]
    for d in devices:
        if d not in device_names:
            raise ConfigError(f"--device {d!r}: not a device of the site; known: {', '.join(device_names)}")
    for b in buses:
        if b not in bus_names:
            raise ConfigError(f"--bus {b!r}: not a bus of the site; known: {', '.join(bus_names)}")
    shown = devices or device_names
    if buses:
        shown = [d.name for d in site.devices if d.bus in buses and d.name in shown]
        if not shown:
            shown = ["-"]  # nothing on those buses matches: show no device
    if devices and not buses:
        buses = [b for b in bus_names if any(d.bus == b and d.name in devices for d in site.devices)]
    return Filters(devices=tuple(shown) if devices or buses else (), buses=tuple(buses))


def show(edge: Edge, duration: float | None, filters: Filters, title: str, console: Console | None = None) -> None:
    """Draw the monitor until Ctrl-C, SIGTERM or `duration` seconds."""
    console = console or Console()
    started = time.monotonic()

    def frame() -> RenderableType:
        size = console.size
        page = replace(filters, page=int((time.monotonic() - started) / PAGE_S))
        return render(edge.snapshot(), now_us(), size.width, max(size.height - 1, 5), page, title)

    with stop_signals() as stop, Live(console=console, auto_refresh=False, redirect_stderr=True) as live:
        run_until(stop, duration, REFRESH_S, lambda: live.update(frame(), refresh=True))
        live.update(frame(), refresh=True)
    if not console.is_terminal:
        console.line()  # Live leaves the last line open when it is not drawing on a terminal


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", metavar="NAME", help="show only this device (repeatable)")
    ] = None,
    bus: Annotated[
        list[str] | None, typer.Option("--bus", metavar="NAME", help="show only this bus and its devices (repeatable)")
    ] = None,
) -> None:
    """A live view of every channel (value, unit, age, quality), the buses and the devices."""
    site = state(ctx).load_site()
    filters = make_filters(site, list(device or []), list(bus or []))
    with Edge(site) as edge:
        show(edge, duration, filters, f"emsbms monitor · {site.name}")
