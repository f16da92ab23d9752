"""`emsbms site import` and `emsbms site export`: the site TOML file into the database and back."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import handle_errors, json_text, state
from emsbms.db import EdgeDb, changes
from emsbms.errors import ConfigError

app = typer.Typer(help="Import a site TOML file into the database, or export the stored site.", no_args_is_help=True)


@app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="the site TOML file")],
    as_json: Annotated[bool, typer.Option("--json", help="print what each device ran and runs as JSON")] = False,
) -> None:
    """Replace the stored buses and devices with FILE's, storing every profile they use.

    Each device is pinned to the version the file names (NAME: the shipped profile; NAME@VERSION;
    a file: its version): a later `profiles import` does not switch it. Prints, per device, the
    version it ran before and the one it runs now.
    """
    with EdgeDb(state(ctx).db) as db:
        before = db.running()
        site, results = db.import_site(file)
        after = db.running()
    stored = sum(1 for r in results if r.status == "stored")
    if as_json:
        devices = [{"name": n, "before": before[n].__dict__ if n in before else None,
                    "after": after[n].__dict__ if n in after else None} for n in sorted({*before, *after})]
        typer.echo(json_text({"buses": len(site.buses), "devices": devices,
                              "stored": [r.__dict__ for r in results if r.status == "stored"]}))
        return
    typer.echo(f"imported {file}: {len(site.buses)} buses, {len(site.devices)} devices;"
               f" {stored} profile version(s) stored into {state(ctx).db}")
    for line in changes(before, after):
        typer.echo(f"  {line}")


@app.command("export")
@handle_errors
def export(
    ctx: typer.Context,
    file: Annotated[Path | None, typer.Argument(metavar="FILE", help="write here (default: standard output)")] = None,
) -> None:
    """Write the stored site as a site TOML file (profiles by name: `profiles export` writes the files)."""
    db = EdgeDb.existing(state(ctx).db)
    if db is None:
        raise ConfigError(f"no database {state(ctx).db}: nothing to export")
    with db:
        text = db.export_site(file)
    if file is None:
        typer.echo(text, nl=False)
    else:
        typer.echo(f"exported the site of {state(ctx).db} to {file}", err=True)
