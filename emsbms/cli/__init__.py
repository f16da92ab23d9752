"""The emsbms command line (Typer): one module per subcommand; `main()` is the entry point.

Global options: ``--site FILE`` (env EMSBMS_SITE), ``--db FILE`` (env EMSBMS_DB, default
./emsbms.db), ``--debug`` (tracebacks) and ``-v/--verbose``, before or after the command.

Start-up is lazy: `COMMANDS` names each command's module, which is imported (with the edge, the
database and the profile engine behind it) only when that command runs or shows its help, so
``emsbms --help`` loads none of them.
"""

from __future__ import annotations

import copy
import importlib
import sys
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from emsbms import __version__
from emsbms.cli.common import (
    DB_HELP,
    CliState,
    ExitCode,
    NumbersAsValues,
    global_option,
    pipe_closed,
    setup_logging,
)

COMMANDS: dict[str, tuple[str, str, str]] = {
    "demo": ("emsbms.cli.demo", "command", "Simulated BMS units of every shipped profile, the edge and the monitor."),
    "run": ("emsbms.cli.run", "command", "Run the edge without a display; every update goes to the run log."),
    "simulate": ("emsbms.cli.simulate", "command", "A simulated BMS for every device of the site, on its bus."),
    "read": ("emsbms.cli.read", "command", "Wait for fresh values of channels and print them."),
    "write": ("emsbms.cli.write", "command", "Send a command to a device and report its acknowledgement."),
    "overrides": ("emsbms.cli.overrides", "command", "List or cancel the running edge's manual overrides."),
    "monitor": ("emsbms.cli.monitor", "command", "A live view of the buses, devices, events and channels."),
    "fuzz": ("emsbms.cli.fuzz", "command", "Random frames through every shipped profile's adapter."),
    "profiles": ("emsbms.cli.profiles", "app", "List, show, validate, import, export and diff device profiles."),
    "log": ("emsbms.cli.log", "app", "Record CAN logs."),
    "replay": ("emsbms.cli.replay", "command", "Play a CAN log onto the site's buses with its timing."),
    "decode": ("emsbms.cli.decode", "command", "Decode a CAN log offline into timestamped channel samples."),
    "scan": ("emsbms.cli.scan", "command", "Find the devices on the buses; optionally commission them."),
    "commission": ("emsbms.cli.commission", "command", "Store a device, its bus and its profile in the database."),
    "decommission": ("emsbms.cli.devices", "decommission_command", "Remove a commissioned device from the database."),
    "devices": ("emsbms.cli.devices", "app", "The devices commissioned in the database."),
    "site": ("emsbms.cli.site", "app", "Import a site TOML file into the database, or export the stored site."),
    "cloud": ("emsbms.cloud.cli", "app", "The cloud service (the cloud extra): database, organisations, API."),
}
"""Every command: (module, attribute: a command function or a Typer of subcommands, one-line help)."""

NUMBER_ARGUMENTS = {"write"}
"""Commands whose arguments may be negative numbers (`write bms_0/SetI16 -77`)."""


def load_command(name: str, global_params: list[Any]) -> Any:
    """The click command `name`, its module imported now, with the global options added to it (and to
    every subcommand) so that they work after the command name too."""
    module, attribute, _ = COMMANDS[name]
    target = getattr(importlib.import_module(module), attribute)
    if isinstance(target, typer.Typer):
        target.rich_markup_mode = None
        command: Any = typer.main.get_group(target)
    else:
        single = typer.Typer(rich_markup_mode=None, pretty_exceptions_enable=False, add_completion=False)
        single.command(name, cls=NumbersAsValues if name in NUMBER_ARGUMENTS else None)(target)
        command = typer.main.get_command(single)
    command.name = name
    _add_globals(command, global_params)
    return command


def _add_globals(command: Any, global_params: list[Any]) -> None:
    own = {opt for p in command.params for opt in p.opts}
    extra = []
    for p in global_params:
        if own.isdisjoint(p.opts):  # a command's own option of that name wins (`run --db`)
            mine = copy.copy(p)
            mine.expose_value, mine.envvar, mine.callback, mine.show_default = False, None, global_option, False
            extra.append(mine)
    help_at = next((i for i, p in enumerate(command.params) if "--help" in p.opts), len(command.params))
    command.params[help_at:help_at] = extra
    for sub in getattr(command, "commands", {}).values():
        _add_globals(sub, global_params)


class LazyCommands(MutableMapping[str, Any]):
    """The root group's commands: each built (and its module imported) when first looked up."""

    def __init__(self, group: LazyGroup) -> None:
        self.group = group
        self.loaded: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name not in self.loaded:
            if name not in COMMANDS:
                raise KeyError(name)
            self.loaded[name] = load_command(name, self.group.global_params())
        return self.loaded[name]

    def __setitem__(self, name: str, command: Any) -> None:
        self.loaded[name] = command

    def __delitem__(self, name: str) -> None:
        del self.loaded[name]

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys([*COMMANDS, *self.loaded]))

    def __len__(self) -> int:
        return len(set(COMMANDS) | set(self.loaded))


class LazyGroup(TyperGroup):
    """The root `emsbms` group: commands load on use; `--help` lists them from `COMMANDS`."""

    def __init__(self, **attrs: Any) -> None:
        super().__init__(**attrs)
        self.commands = LazyCommands(self)

    def global_params(self) -> list[Any]:
        return [p for p in self.params if p.name in ("site", "db", "debug", "verbose")]

    def list_commands(self, ctx: Any) -> list[str]:
        return list(self.commands)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, summary) for name, (_, _, summary) in COMMANDS.items()])
        formatter.write_paragraph()
        formatter.write_text("Global options may also follow the command: emsbms read bms_0/Soc --site site.toml")


app = typer.Typer(
    name="emsbms",
    cls=LazyGroup,
    help="CAN integration of battery management systems for an EMS edge gateway.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
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
        Path, typer.Option("--db", metavar="FILE", envvar="EMSBMS_DB", help=DB_HELP)
    ] = Path("emsbms.db"),
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
    verbose: Annotated[
        int, typer.Option("-v", "--verbose", count=True, show_default=False, help="log more: -v info, -vv debug")
    ] = 0,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version and exit")
    ] = False,
) -> None:
    """CAN integration of battery management systems for an EMS edge gateway."""
    ctx.obj = CliState(site=site, db=db, debug=debug, verbose=verbose)
    ctx.call_on_close(setup_logging(verbose))


def main() -> None:
    """The `emsbms` console script. A reader that closes the pipe early (`emsbms profiles list | head -1`)
    ends it quietly with exit 141, as it ends Unix tools (128 + SIGPIPE)."""
    try:
        try:
            app(prog_name="emsbms")
        finally:
            sys.stdout.flush()  # what is still buffered goes now, so a closed pipe is caught here
    except BrokenPipeError:
        pipe_closed()
        sys.exit(ExitCode.PIPE)


__all__ = ["COMMANDS", "ExitCode", "app", "main"]
