"""`emsbms profiles`: list, show and validate device profiles."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from emsbms.cli.common import handle_errors
from emsbms.errors import EmsbmsError
from emsbms.profile.loader import Profile, list_shipped, load_profile

app = typer.Typer(help="List, show and validate device profiles.", no_args_is_help=True)


def summary(profile: Profile) -> dict[str, Any]:
    m = profile.model
    return {
        "name": m.name,
        "version": m.version,
        "protocol": m.protocol,
        "vendor": m.vendor,
        "description": m.description,
        "channels": len(m.channels),
        "alarms": len(m.alarms),
        "commands": len(m.commands),
    }


@app.command("list")
@handle_errors
def list_(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array")] = False,
) -> None:
    """The shipped profiles: name, version, protocol and description."""
    rows: list[dict[str, Any]] = []
    for name in list_shipped():
        try:
            rows.append(summary(load_profile(name)))
        except EmsbmsError as e:
            rows.append({"name": name, "error": str(e)})
    if as_json:
        typer.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    for r in rows:
        if "error" in r:
            typer.echo(f"{r['name']:<18} unavailable: {r['error']}")
        else:
            text = r["description"].split(". ")[0]
            typer.echo(f"{r['name']:<18} {r['version']:<7} {r['protocol']:<8} {text[:80]}")


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="a shipped profile name or a profile file")],
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """A profile's channels, alarms, commands and supervision settings."""
    profile = load_profile(name)
    m = profile.model
    if as_json:
        typer.echo(
            json.dumps(m.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False, indent=2)
        )
        return
    source = m.source.dbc or m.source.eds or "inline messages"
    typer.echo(f"{m.name} {m.version} ({m.protocol}) {m.vendor}".rstrip())
    if m.description:
        typer.echo(m.description)
    typer.echo(f"source: {source}; device lost after {m.timeout_ms:g} ms without frames")
    typer.echo(f"channels ({len(m.channels)}):")
    for cname, ch in m.channels.items():
        where = f"{ch.message}.{ch.signal}" if ch.signal else f"od {ch.od}"
        typer.echo(f"  {cname:<22} {ch.unit or ch.type:<6} {where}")
    if m.alarms:
        typer.echo(f"alarms ({len(m.alarms)}): " + ", ".join(f"Alarm/{a}" for a in m.alarms))
    typer.echo(f"commands ({len(m.commands)}):")
    for cname, cmd in m.commands.items():
        cyclic = f", every {cmd.period_ms:g} ms for {cmd.ttl_s:g} s" if cmd.ttl_s else ""
        typer.echo(f"  {cname:<22} {cmd.min:g}..{cmd.max:g} {cmd.unit}  ack: {cmd.ack.type}{cyclic}")
    for t in m.transmit:
        typer.echo(f"transmits {t.message} every {t.period_ms:g} ms")


@app.command("validate")
@handle_errors
def validate(
    ctx: typer.Context,
    file: Annotated[str, typer.Argument(metavar="FILE", help="the profile JSON file")],
) -> None:
    """Check a profile file as a whole. Exit 2 with the JSON path of the first fault."""
    profile = load_profile(file)
    s = summary(profile)
    err_free = f"ok: {s['name']} {s['version']} ({s['protocol']}): {s['channels']} channels, {s['alarms']} alarms,"
    typer.echo(f"{err_free} {s['commands']} commands")
