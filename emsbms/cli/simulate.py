"""`emsbms simulate`: a simulated BMS for every device of the site, on its device's bus."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from emsbms.cli.common import Duration, err, handle_errors, run_until, state, stop_signals
from emsbms.errors import ConfigError
from emsbms.sim.runner import Simulation
from emsbms.site import Site

log = logging.getLogger(__name__)


def parse_faults(specs: list[str], site: Site) -> list[tuple[str, str]]:
    """`DEVICE:FAULT` pairs; ConfigError for a malformed one or an unknown device."""
    names = [d.name for d in site.devices]
    out = []
    for spec in specs:
        device, sep, fault = spec.partition(":")
        if not sep or not device or not fault:
            raise ConfigError(f"--fault {spec!r}: expected DEVICE:FAULT, e.g. bms_0:overtemp")
        if device not in names:
            raise ConfigError(f"--fault {spec!r}: unknown device {device!r}; known: {', '.join(names)}")
        out.append((device, fault))
    return out


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", metavar="NAME", help="simulate only this device (repeatable)")
    ] = None,
    fault: Annotated[
        list[str] | None,
        typer.Option(
            "--fault", metavar="DEVICE:FAULT", help="inject a fault, e.g. bms_0:overtemp or bms_0:silent (repeatable)"
        ),
    ] = None,
) -> None:
    """Run a simulated BMS for every device of the site (or the --device ones), each on its bus."""
    site = state(ctx).load_site()
    names = [d.name for d in site.devices]
    for name in device or []:
        if name not in names:
            raise ConfigError(f"--device {name!r}: not a device of {site.path}; known: {', '.join(names)}")
    faults = parse_faults(fault or [], site)
    sim = Simulation(site, devices=list(device) if device else None)
    for name, what in faults:
        if name not in sim.simulators:
            raise ConfigError(f"--fault {name}:{what}: {name} is not simulated (see --device)")
        try:
            sim.inject(name, what)
        except ValueError as e:
            raise ConfigError(f"--fault {name}:{what}: {e}") from e
    with stop_signals() as stop, sim:
        err(f"simulate: {', '.join(sim.simulators)}" + (f"; faults: {', '.join(fault or [])}" if faults else ""))
        run_until(stop, duration)
