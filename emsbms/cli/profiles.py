"""`emsbms profiles`: list, show, validate, import, export and diff device profiles (shipped and stored)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from emsbms.cli.common import handle_errors, json_text, state
from emsbms.db import EdgeDb, changes, version_key
from emsbms.db.diff import diff as diff_profiles
from emsbms.db.profiles import StoredProfile, document_of
from emsbms.errors import EmsbmsError, ProfileError
from emsbms.profile.loader import list_shipped, load_profile
from emsbms.profile.models import Profile

app = typer.Typer(help="List, show, validate, import, export and diff device profiles.", no_args_is_help=True)

Version = Annotated[
    str | None, typer.Option("--version", metavar="V", help="this version (default: the newest stored, else shipped)")
]


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
    """The shipped profiles and every version stored in the database: name, version, protocol, origin."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for name in list_shipped():
        try:
            row = summary(load_profile(name))
        except EmsbmsError as e:
            rows[(name, "")] = {"name": name, "error": str(e), "origin": ["shipped"]}
            continue
        rows[(name, row["version"])] = {**row, "origin": ["shipped"]}
    for stored in _stored(ctx):
        key = (stored.name, stored.version)
        if key in rows:
            rows[key]["origin"].append("stored")
            rows[key].update(hash=stored.hash, source=stored.source, imported_us=stored.imported_us)
            continue
        try:
            row = summary(stored.load())
        except EmsbmsError as e:
            row = {"name": stored.name, "version": stored.version, "error": str(e)}
        rows[key] = {**row, "origin": ["stored"], "hash": stored.hash, "source": stored.source,
                     "imported_us": stored.imported_us}
    ordered = [rows[k] for k in sorted(rows, key=lambda k: (k[0], version_key(k[1])))]
    if as_json:
        typer.echo(json_text(ordered, indent=2))
        return
    for r in ordered:
        origin = "+".join(r["origin"])
        if "error" in r:
            typer.echo(f"{r['name']:<18} {r.get('version', ''):<7} unavailable ({origin}): {r['error']}")
        else:
            text = r["description"].split(". ")[0]
            typer.echo(f"{r['name']:<18} {r['version']:<7} {r['protocol']:<8} {origin:<15} {text[:64]}")


def _stored(ctx: typer.Context) -> list[StoredProfile]:
    """Every version in the database (none if the file does not exist: listing never creates it)."""
    db = EdgeDb.existing(state(ctx).db)
    if db is None:
        return []
    with db:
        return db.profiles.all()


def resolve(ctx: typer.Context, name: str, version: str | None) -> tuple[Profile, str]:
    """The profile NAME (a stored or shipped name, or a file) in `version`, and where it comes from."""
    if name.endswith(".json") or "/" in name:
        if version is not None:
            raise ProfileError(f"--version {version}: {name} is a file; --version picks a stored or shipped version")
        return load_profile(name), name
    db = EdgeDb.existing(state(ctx).db)
    stored = None
    if db is not None:
        with db:
            stored = db.profiles.get(name, version)
            versions = [p.version for p in db.profiles.versions(name)]
    else:
        versions = []
    if stored is not None:
        when = datetime.fromtimestamp(stored.imported_us / 1e6, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        where = f"stored in {state(ctx).db}, imported {when} from {stored.source}"
        return stored.load(), f"{where}, sha256 {stored.hash[:16]}"
    if name in list_shipped():
        shipped = load_profile(name)
        if version is None or version_key(version) == version_key(shipped.version):
            return shipped, "shipped"
        versions.append(f"{shipped.version} (shipped)")
    if version is not None:
        raise ProfileError(f"profile {name}: no version {version}; known versions: {', '.join(versions) or 'none'}")
    return load_profile(name), "file"  # raises the loader's "unknown profile" error


@app.command("show")
@handle_errors
def show(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="a stored or shipped profile name, or a profile file")],
    version: Version = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the profile as JSON")] = False,
) -> None:
    """A profile's channels, alarms, commands and supervision settings (newest stored version by default)."""
    profile, origin = resolve(ctx, name, version)
    m = profile.model
    if as_json:
        typer.echo(
            json_text(m.model_dump(mode="json", by_alias=True, exclude_none=True), indent=2)
        )
        return
    source = m.source.dbc or m.source.eds or "inline messages"
    typer.echo(f"{m.name} {m.version} ({m.protocol}) {m.vendor}".rstrip())
    typer.echo(f"from: {origin}")
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
    as_json: Annotated[bool, typer.Option("--json", help="print the profile's summary as JSON")] = False,
) -> None:
    """Check a profile file as a whole. Exit 2 with the JSON path of the first fault."""
    profile = load_profile(file)
    s = summary(profile)
    if as_json:
        typer.echo(json_text({"ok": True, **s}))
        return
    err_free = f"ok: {s['name']} {s['version']} ({s['protocol']}): {s['channels']} channels, {s['alarms']} alarms,"
    typer.echo(f"{err_free} {s['commands']} commands")


@app.command("import")
@handle_errors
def import_(
    ctx: typer.Context,
    paths: Annotated[list[Path], typer.Argument(metavar="PATH", help="profile files, or directories of them")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array of what was stored")] = False,
) -> None:
    """Store profiles (with their DBC or EDS content) in the database, validating every one first.

    One invalid profile stores nothing (exit 2, naming the file and the JSON path). The devices
    that use a profile unpinned (NAME, not NAME@VERSION) switch to its newest version, a running
    `emsbms run` within about a second: each such device is printed with its version before and after.
    """
    with EdgeDb(state(ctx).db) as db:
        before = db.running()
        results = db.profiles.import_paths(paths)
        after = db.running()
    names = {r.name for r in results}
    affected = {n: r for n, r in after.items() if r.profile in names}
    if as_json:
        typer.echo(json_text([{**r.__dict__, "devices": [
            {"name": n, "before": before[n].version if n in before else None, "after": d.version, "pinned": d.pinned}
            for n, d in affected.items() if d.profile == r.name]} for r in results]))
        return
    for r in results:
        typer.echo(f"{r.status:<9} {r.name} {r.version}  from {r.source}")
    for line in changes({n: before[n] for n in affected if n in before}, affected):
        typer.echo(f"  {line}")


@app.command("export")
@handle_errors
def export(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="a stored or shipped profile name")],
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="where to write (default: here)")] = Path("."),
    version: Version = None,
) -> None:
    """Write a profile as NAME.json plus its DBC or EDS file into DIR (`profiles validate` accepts it)."""
    profile, _ = resolve(ctx, name, version)
    doc = document_of(profile)
    directory.mkdir(parents=True, exist_ok=True)
    written = [directory / f"{profile.name}.json"]
    written[0].write_text(json.dumps(doc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    for kind in ("dbc", "eds"):
        if kind in doc["source"]:
            target = directory / doc["source"][kind]
            target.write_text(profile.source_text, encoding="utf-8")
            written.append(target)
    typer.echo(f"exported {profile.name} {profile.version}: {', '.join(map(str, written))}")


@app.command("diff")
@handle_errors
def diff(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="a stored or shipped profile name")],
    v1: Annotated[str, typer.Argument(metavar="V1", help="the older version")],
    v2: Annotated[str, typer.Argument(metavar="V2", help="the newer version")],
    as_json: Annotated[bool, typer.Option("--json", help="print a JSON array of changes")] = False,
) -> None:
    """What changed from V1 to V2: channels, alarms, commands, messages and settings added, removed, changed."""
    old, _ = resolve(ctx, name, v1)
    new, _ = resolve(ctx, name, v2)
    changes = diff_profiles(old, new)
    if as_json:
        typer.echo(json_text([c.as_dict() for c in changes]))
        return
    typer.echo(f"{name} {old.version} -> {new.version}: {len(changes)} change(s)")
    for c in changes:
        typer.echo(c.text())
