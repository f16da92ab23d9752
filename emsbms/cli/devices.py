"""`emsbms devices list` and `emsbms decommission`: the devices commissioned in the edge database."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from emsbms.cli.common import handle_errors, json_text, state
from emsbms.commissioning.commission import addressing, decommission
from emsbms.db import EdgeDb
from emsbms.errors import ConfigError, EmsbmsError

app = typer.Typer(help="The devices commissioned in the database.", no_args_is_help=True)


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array")] = False,
) -> None:
    """Every commissioned device: bus, profile and the version it runs, addressing, how it was found."""
    rows: list[dict[str, Any]] = []
    db = EdgeDb.existing(state(ctx).db)
    if db is not None:
        with db:
            found = db.site.found_by()
            buses = {b.name: b for b in db.site.buses()}
            for d in db.site.devices():
                try:
                    version: str | None = db.profiles.resolve(d.profile).version
                except EmsbmsError:
                    version = None
                b = buses[d.bus]
                rows.append({"name": d.name, "bus": d.bus, "interface": b.interface, "channel": b.channel,
                             "profile": d.profile, "version": version, **addressing(d), "found_by": found[d.name]})
    if as_json:
        typer.echo(json_text(rows))
        return
    if not rows:
        typer.echo(f"no devices commissioned in {state(ctx).db}")
        return
    for r in rows:
        where = " ".join(f"{k}={r[k]}" for k in ("node_id", "source_address", "j1939_name", "id_offset") if k in r)
        typer.echo(f"{r['name']:<16} {r['bus']:<8} {r['profile']:<18} {r['version'] or '?':<7} {where:<28}"
                   f" {r['found_by']}".rstrip())


@handle_errors
def decommission_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="the device to remove")],
) -> None:
    """Remove a commissioned device from the database (its bus and profile stay)."""
    db = EdgeDb.existing(state(ctx).db)
    if db is None:
        raise ConfigError(f"no database {state(ctx).db}: nothing is commissioned")
    with db:
        device = decommission(db, name)
    typer.echo(f"decommissioned {device.name} (bus {device.bus}, profile {device.profile})")
