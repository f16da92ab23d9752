"""`emsbms replay`: play a CAN log onto the site's buses, keeping its relative timing."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import err, handle_errors, state, stop_signals
from emsbms.diag.logs import BusMap, Senders, log_format, read_log, replay


@handle_errors
def command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a .log, .asc, .blf, .csv or .trc log")],
    bus: Annotated[
        list[str] | None,
        typer.Option("--bus", metavar="NAME", help="send every frame on bus NAME, or map a log channel: CHANNEL=NAME"),
    ] = None,
    speed: Annotated[
        float | None, typer.Option("--speed", metavar="X", help="time factor: 2 plays twice as fast (default 1)")
    ] = None,
    fast: Annotated[bool, typer.Option("--max", help="send as fast as possible, ignoring the timing")] = False,
) -> None:
    """Send the frames of FILE onto the site's buses with their relative timing.

    Each frame goes to the bus its log channel names (see --bus); error frames are skipped.
    Ctrl-C or SIGTERM stop it.
    """
    if fast and speed is not None:
        raise typer.BadParameter("give either --speed or --max, not both", param_hint="--max")
    if speed is not None and speed <= 0:
        raise typer.BadParameter(f"expected a positive factor, found {speed:g}", param_hint="--speed")
    log_format(file)
    site = state(ctx).load_site()
    bus_map = BusMap(site, bus or [])
    with stop_signals() as stop, Senders(site) as senders:
        err(f"replay: {file} " + ("as fast as possible" if fast else f"at x{speed or 1.0:g}"))
        stats = replay(read_log(file), senders.send, bus_map, None if fast else (speed or 1.0), stop)
    per_bus = ", ".join(f"{name} {n}" for name, n in stats.sent.items())
    skipped = f", {stats.skipped} error frames skipped" if stats.skipped else ""
    late = f"; at most {stats.max_lag_s * 1000:.1f} ms late" if not fast else ""
    err(f"replay: {stats.total} frames sent" + (f" ({per_bus})" if per_bus else "") + skipped + late)
