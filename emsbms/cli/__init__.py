"""The emsbms command line (Typer): one module per subcommand; `main()` is the entry point.

Global options: ``--site FILE`` (env EMSBMS_SITE), ``--db FILE`` (env EMSBMS_DB, default
./emsbms.db), ``--debug`` (tracebacks) and ``-v/--verbose``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from emsbms import __version__
from emsbms.cli import commission as commission_cli
from emsbms.cli import decode, demo, fuzz, log, monitor, profiles, read, replay, run, simulate, write
from emsbms.cli import devices as devices_cli
from emsbms.cli import scan as scan_cli
from emsbms.cli import site as site_cli
from emsbms.cli.common import CliState, ExitCode, setup_logging

app = typer.Typer(
    name="emsbms",
    help="CAN integration of battery management systems for an EMS edge gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emsbms {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    ctx: typer.Context,
    site: Annotated[
        Path | None, typer.Option("--site", metavar="FILE", envvar="EMSBMS_SITE", help="the site TOML file")
    ] = None,
    db: Annotated[
        Path, typer.Option("--db", metavar="FILE", envvar="EMSBMS_DB", help="SQLite run log of `run`")
    ] = Path("emsbms.db"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    verbose: Annotated[int, typer.Option("-v", "--verbose", count=True, help="log more (-v info, -vv debug)")] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """CAN integration of battery management systems for an EMS edge gateway."""
    ctx.obj = CliState(site=site, db=db, debug=debug, verbose=verbose)
    ctx.call_on_close(setup_logging(verbose))


app.command("demo")(demo.command)
app.command("run")(run.command)
app.command("simulate")(simulate.command)
app.command("read")(read.command)
app.command("write")(write.command)
app.command("monitor")(monitor.command)
app.command("fuzz")(fuzz.command)
app.add_typer(profiles.app, name="profiles")
app.add_typer(log.app, name="log")
app.command("replay")(replay.command)
app.command("decode")(decode.command)
app.command("scan")(scan_cli.command)
app.command("commission")(commission_cli.command)
app.command("decommission")(devices_cli.decommission_command)
app.add_typer(devices_cli.app, name="devices")
app.add_typer(site_cli.app, name="site")


def main() -> None:
    """The `emsbms` console script."""
    app(prog_name="emsbms")


__all__ = ["ExitCode", "app", "main"]
