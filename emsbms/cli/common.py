"""What every subcommand shares: global options, exit codes, error reporting, address lookup, signals,
logging, closed pipes, negative numbers as values.

Imported by `emsbms --help`: keep it light (rich, the site and the edge are imported where used).
"""

from __future__ import annotations

import difflib
import functools
import json
import logging
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any, ParamSpec, TypeVar

import typer
from typer.core import TyperCommand

from emsbms.errors import BusError, ConfigError, EmsbmsError, ProfileError, UnknownAddressError, UnsupportedError
from emsbms.types import json_safe

if TYPE_CHECKING:
    from emsbms.edge import Edge
    from emsbms.site import Site
    from emsbms.types import ChannelInfo

P = ParamSpec("P")
R = TypeVar("R")

Duration = Annotated[
    float | None, typer.Option("--duration", metavar="S", min=0.0, help="stop (exit 0) after S seconds")
]
"""The --duration option of the long-running commands."""

USAGE_ERRORS = (ConfigError, ProfileError, UnknownAddressError, BusError, UnsupportedError)
"""Errors that mean the command line, site or profile is wrong: exit 2."""


class ExitCode(IntEnum):
    """The exit codes of every emsbms command."""

    OK = 0
    FAILURE = 1  # an unexpected error
    USAGE = 2  # usage or validation error: bad option, site, profile, address, bus
    TIMEOUT = 3  # read: a value did not arrive; write: no acknowledgement
    REJECTED = 4  # write: the command was refused
    PIPE = 141  # the reader closed the pipe (`| head -1`): 128 + SIGPIPE, as Unix tools end


DB_HELP = "the edge database: profile store, commissioned site (buses, devices) and the run log of `run`"


@dataclass
class CliState:
    """The global options, kept on the click context."""

    site: Path | None = None
    db: Path = Path("emsbms.db")
    debug: bool = False
    verbose: int = 0

    def load_site(self, db: Path | None = None) -> Site:
        """The site file named by --site (or EMSBMS_SITE); without one, the site commissioned in the
        database (--db, or `db`), its profiles loaded from the store. ConfigError if there is neither."""
        if self.site is None:
            from emsbms.db import EdgeDb  # only commands without --site need the database

            with EdgeDb.existing(db or self.db) or nullcontext() as edge_db:
                if edge_db is None or not edge_db.has_devices():
                    raise ConfigError("no site file: give --site FILE (or set EMSBMS_SITE)")
                return edge_db.stored_site()
        from emsbms.site import load_site

        return load_site(self.site)


def global_option(ctx: Any, param: Any, value: Any) -> Any:
    """A global option given after the command (`emsbms read X --site F`): set it on the CliState.

    A value that came from the environment or the default is left alone: the root's own applies.
    """
    source = ctx.get_parameter_source(param.name)
    cli = ctx.find_object(CliState)
    if cli is None or source is None or source.name != "COMMANDLINE":
        return value
    if param.name == "verbose":
        cli.verbose += int(value)
        ctx.call_on_close(setup_logging(cli.verbose))
    else:
        setattr(cli, param.name, value)
    return value


NUMBER = re.compile(r"-(\d[\d_]*\.?\d*|\.\d+)(e[-+]?\d+)?|-(inf|infinity|nan)", re.IGNORECASE)
"""A negative number: a value, never an option (`-77`, `-0.5`, `-1e3`)."""


class NumbersAsValues(TyperCommand):
    """A command whose arguments may be negative numbers without ``--`` (`write bms_0/SetI16 -77`).

    Before click parses, the arguments are split into options (with the values of the options that
    take one) and the rest; a negative number is part of the rest. Unknown options stay options, so
    click still refuses them (`No such option: --bogus`).
    """

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        takes_value = {o for p in self.get_params(ctx) if p.param_type_name == "option"
                       and not getattr(p, "is_flag", False) and not getattr(p, "count", False) for o in p.opts}
        options: list[str] = []
        values: list[str] = []
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "--":
                values += args[i + 1:]
                break
            if arg.startswith("-") and len(arg) > 1 and not NUMBER.fullmatch(arg):
                options.append(arg)
                if arg in takes_value and i + 1 < len(args):
                    i += 1
                    options.append(args[i])
            else:
                values.append(arg)
            i += 1
        return super().parse_args(ctx, [*options, "--", *values] if values else options)


def channel_info(edge: Edge, address: str) -> ChannelInfo:
    """The channel `address` of the edge, or UnknownAddressError saying what was probably meant."""
    try:
        return edge.registry.info(address)
    except UnknownAddressError:
        buses = [b.name for b in edge.site.buses]
        raise UnknownAddressError(unknown_address(address, edge.registry.addresses(), buses)) from None


def _near(word: str, choices: list[str]) -> list[str]:
    """The choices equal to `word` but for case, else the closest ones (difflib)."""
    same = [c for c in choices if c.lower() == word.lower()]
    return same or difflib.get_close_matches(word, choices, n=3, cutoff=0.6)


def _either(items: list[str]) -> str:
    return " or ".join(items)


def unknown_address(address: str, addresses: list[str], buses: list[str]) -> str:
    """Why `address` is none of `addresses`, with the closest one (the single place this is worded)."""
    prefixes = sorted({a.split("/", 1)[0] for a in addresses})
    devices = [p for p in prefixes if p not in buses]
    known = f"devices: {', '.join(devices) or 'none'}; buses: {', '.join(buses) or 'none'}"
    if "/" not in address:
        names = sorted({a.split("/", 1)[1] for a in addresses})
        hits = [a for a in addresses if a.split("/", 1)[1] in _near(address, names)]
        example = hits[0] if hits else next((a for a in addresses if a.startswith(f"{devices[0]}/")), "bms_0/Soc") \
            if devices else "bms_0/Soc"
        hint = f"; did you mean {_either(hits[:4])}?" if hits else f" ({known})"
        return f"{address!r} is not an address: an address is DEVICE/Channel or BUS/Channel, e.g. {example}{hint}"
    prefix, name = address.split("/", 1)
    if prefix not in prefixes:
        near = _near(prefix, prefixes)
        hint = f"did you mean {_either([f'{p}/{name}' for p in near])}? " if near else ""
        return f"unknown device {prefix!r} in {address!r}; {hint}{known}"
    names = sorted(a.split("/", 1)[1] for a in addresses if a.startswith(f"{prefix}/"))
    near = _near(name, names)
    if near:
        return f"unknown channel {address!r}; did you mean {_either([f'{prefix}/{n}' for n in near])}?"
    return f"unknown channel {address!r}; {prefix} has: {', '.join(names)}"


PASSTHROUGH = (typer.Exit, typer.Abort, typer.BadParameter)
"""Exceptions Typer itself turns into exit codes and messages."""


def pipe_closed() -> None:
    """The reader of standard output went away (`emsbms profiles list | head -1`): send whatever is
    still buffered to /dev/null, so that neither this command nor the interpreter's exit complains."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return  # not a real file (a test's captured output)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def state(ctx: Any) -> CliState:
    """The global options of the running command (commands take `ctx: typer.Context`)."""
    obj = ctx.find_object(CliState) if ctx is not None else None
    return obj if isinstance(obj, CliState) else CliState()


def err(message: str) -> None:
    """Print one line on stderr."""
    typer.echo(message, err=True)


def json_text(doc: Any, indent: int | None = None) -> str:
    """The JSON every ``--json`` prints: strict JSON, a NaN or infinite value as null (never the
    ``NaN``/``Infinity`` tokens Python's json writes by default, which JSON parsers refuse)."""
    return json.dumps(json_safe(doc), ensure_ascii=False, allow_nan=False, indent=indent)


def one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text or type(error).__name__


def handle_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn emsbms errors into `error: ...` on stderr and exit 2 (others exit 1).

    With --debug the traceback is printed too. The command must take ``ctx: typer.Context``.
    """

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except PASSTHROUGH:
            raise
        except BrokenPipeError as e:
            pipe_closed()
            raise typer.Exit(ExitCode.PIPE) from e
        except Exception as e:
            # Typer may hand over its click Context rather than a typer.Context: look for the method
            ctx = next((a for a in (*args, *kwargs.values()) if hasattr(a, "find_object")), None)
            if state(ctx).debug:
                traceback.print_exc(file=sys.stderr)
            if isinstance(e, USAGE_ERRORS):
                err(f"error: {one_line(e)}")
                raise typer.Exit(ExitCode.USAGE) from e
            if isinstance(e, EmsbmsError):
                err(f"error: {one_line(e)}")
            else:
                err(f"error: {type(e).__name__}: {one_line(e)}")
            raise typer.Exit(ExitCode.FAILURE) from e

    return wrapper


# -- logging -----------------------------------------------------------------------------------


def setup_logging(verbose: int) -> Callable[[], None]:
    """Log to stderr: warnings by default, -v info (emsbms), -vv debug (emsbms).

    Returns a function that undoes it (the CLI calls it when the command ends, so an in-process
    invocation, e.g. from tests, leaves the logging configuration as it found it).
    """
    from rich.console import Console
    from rich.logging import RichHandler

    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    package = logging.getLogger("emsbms")
    for h in list(root.handlers):
        if getattr(h, "emsbms_cli", False):  # the handler a previous invocation installed
            root.removeHandler(h)
    handler = RichHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
    handler.emsbms_cli = True  # type: ignore[attr-defined]
    handler.setLevel(level)
    root.addHandler(handler)
    previous = package.level
    if verbose > 0:
        package.setLevel(level)  # records propagate to the root's handlers whatever the root's level

    def restore() -> None:
        root.removeHandler(handler)
        package.setLevel(previous)

    return restore


# -- running until told to stop ------------------------------------------------------------------


@contextmanager
def stop_signals() -> Iterator[threading.Event]:
    """An event set by Ctrl-C (SIGINT) or SIGTERM while the block runs (main thread only)."""
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def run_until(
    stop: threading.Event, duration: float | None, every: float = 0.2, tick: Callable[[], Any] | None = None
) -> None:
    """Wait until `stop` is set or `duration` seconds pass, calling `tick` every `every` seconds."""
    deadline = None if duration is None else time.monotonic() + duration
    while not stop.is_set():
        if tick is not None:
            tick()
        left = every if deadline is None else min(every, deadline - time.monotonic())
        if left <= 0:
            return
        stop.wait(left)
