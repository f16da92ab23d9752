"""`emsbms scan`: every discovery method on every bus, candidates with a confidence, optional commissioning."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from emsbms.cli.commission import Bitrate, Channel, Interface, given_bus
from emsbms.cli.common import CliState, ExitCode, err, handle_errors, json_text, state
from emsbms.commissioning.commission import commission, suggest_name
from emsbms.commissioning.passive import HIGH_CONFIDENCE
from emsbms.commissioning.scan import BusScan, Candidate, Method, catalog, scan
from emsbms.commissioning.scan import Progress as ScanProgress
from emsbms.db import EdgeDb, changes
from emsbms.errors import ConfigError, EmsbmsError
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig


@handle_errors
def command(
    ctx: typer.Context,
    bus: Annotated[
        list[str] | None, typer.Option("--bus", metavar="NAME", help="scan only this bus of the site (repeatable)")
    ] = None,
    interface: Interface = None,
    channel: Channel = None,
    bitrate: Bitrate = 500_000,
    method: Annotated[
        list[Method] | None, typer.Option("--method", metavar="METHOD", help="passive, canopen or j1939 (repeatable)")
    ] = None,
    listen: Annotated[
        float, typer.Option("--listen", metavar="S", min=0.0, help="seconds of passive listening per bus")
    ] = 3.0,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="S", min=0.05, help="seconds to wait for SDO and J1939 answers")
    ] = 1.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    commission_: Annotated[
        bool, typer.Option("--commission", help="offer each candidate for commissioning (asks on the terminal)")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", help="with --commission: take every high-confidence one, no questions")]
    = False,
) -> None:
    """Find the devices on the site's buses (or on --interface/--channel): passive listening matched
    against every profile, the CANopen SDO sweep and heartbeats, the J1939 address-claim request."""
    cli = state(ctx)
    buses = _buses(cli, bus, interface, channel, bitrate)
    methods = list(dict.fromkeys(method)) if method else list(Method)
    db = EdgeDb.existing(cli.db) if not commission_ else EdgeDb(cli.db)
    try:
        stored: list[Profile] = []
        devices: list[DeviceConfig] = []
        if db is not None:
            stored = _stored_profiles(db)
            devices = db.site.devices()
        with _progress(not as_json) as report:
            results = scan(buses, catalog(stored), methods, listen, timeout, report, devices)
        doc: dict[str, Any] = {"buses": [r.as_dict() for r in results], "commissioned": []}
        if not as_json:
            _print(results)
        if commission_ and db is not None:
            doc["commissioned"] = _commission(db, results, yes)
    finally:
        if db is not None:
            db.close()
    if as_json:
        typer.echo(json_text(doc))
    failed = [r for r in results if r.error]
    for r in failed:
        err(f"error: bus {r.bus.name}: {r.error}")
    if failed:
        raise typer.Exit(ExitCode.USAGE)


def _stored_profiles(db: EdgeDb) -> list[Profile]:
    """The newest stored version of every profile (one that does not load is left out, with a warning)."""
    out = []
    for name in db.profiles.names():
        stored = db.profiles.get(name)
        try:
            if stored is not None:
                out.append(stored.load())
        except EmsbmsError as e:
            err(f"warning: not matching against {name}: {e}")
    return out


def _buses(cli: CliState, names: list[str] | None, interface: str | None, channel: str | None,
           bitrate: int) -> list[BusConfig]:
    if interface is not None:
        if names and len(names) > 1:
            raise ConfigError("--interface scans one bus: give at most one --bus NAME for it")
        name = names[0] if names else (channel or interface)
        ad_hoc = given_bus(cli, name, interface, channel, bitrate)
        assert ad_hoc is not None
        return [ad_hoc]
    site = cli.load_site()
    if not names:
        return list(site.buses)
    return [site.bus(n) for n in names]


@contextmanager
def _progress(show: bool) -> Iterator[ScanProgress | None]:
    """A rich progress bar per bus and method on stderr (only on a terminal)."""
    console = Console(stderr=True)
    if not show or not console.is_terminal:
        yield None
        return
    columns = (TextColumn("{task.description:<22}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        tasks: dict[tuple[str, Method], TaskID] = {}

        def report(bus: str, method: Method, done: float, total: float) -> None:
            key = (bus, method)
            if key not in tasks:
                tasks[key] = bar.add_task(f"{bus} {method.value}", total=total)
            bar.update(tasks[key], completed=done, total=total)

        yield report


def _print(results: list[BusScan]) -> None:
    for r in results:
        methods = ", ".join(m.value for m in r.methods)
        heard = f"{r.frames} frames, {r.ids} IDs heard; " if Method.PASSIVE in r.methods else ""
        typer.echo(f"bus {r.bus.name} ({r.bus.interface}:{r.bus.channel}): {heard}{methods}")
        if r.error:
            typer.echo(f"  failed: {r.error}")
        elif not r.candidates:
            typer.echo("  nothing found")
        for c in r.candidates:
            typer.echo(f"  {_line(c)}")


def _line(c: Candidate) -> str:
    profile = f"{c.profile} {c.version}" if c.profile else "(no profile)"
    addr = c.addressing()
    note = f"  (alternative to {c.alternative_to})" if c.alternative_to else ""
    note += f"  (commissioned as {c.device})" if c.device else ""
    return f"{c.confidence:4.2f} {profile:<22} {c.method.value:<8} {' '.join(addr):<30} {c.evidence}{note}"


def _commission(db: EdgeDb, results: list[BusScan], yes: bool) -> list[dict[str, Any]]:
    """Offer (or with --yes take the high-confidence) candidates; returns what was commissioned."""
    done: list[dict[str, Any]] = []
    for r in results:
        for c in r.candidates:
            if c.profile is None or c.alternative_to is not None or c.device is not None:
                continue
            if yes and not c.high:
                err(f"skipped {c.describe()}: confidence {c.confidence:.2f} below {HIGH_CONFIDENCE}")
                continue
            if not yes and not typer.confirm(f"commission {c.describe()}, confidence {c.confidence:.2f}?",
                                             default=c.high, err=True):
                continue
            taken = [d.name for d in db.site.devices()] + [b.name for b in db.site.buses()] + [r.bus.name]
            name = suggest_name(c.profile, taken)
            if not yes:
                name = typer.prompt("device name", default=name, err=True)
            before = db.running()
            try:
                result = commission(db, c.device_config(name), r.bus, found_by=f"scan: {c.method.value}"
                                    f" {c.confidence:.2f}")
            except EmsbmsError as e:
                err(f"refused: {e}")
                continue
            err(result.describe())
            now = db.running()[name]
            for line in changes({}, {name: now}):  # what the new device runs, as commission says it
                err(line)
            done.append({**c.as_dict(), "device": name, "ref": now.ref, "pinned": now.pinned,
                         "before": before[name].version if name in before else None, "after": now.version})
    return done
