"""What every subcommand shares: global options, exit codes, error reporting, signals, logging."""

from __future__ import annotations

import functools
import json
import logging
import math
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
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.logging import RichHandler

from emsbms.errors import BusError, ConfigError, EmsbmsError, ProfileError, UnknownAddressError, UnsupportedError
from emsbms.site import Site, load_site

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
        return load_site(self.site)


PASSTHROUGH = (typer.Exit, typer.Abort, typer.BadParameter)
"""Exceptions Typer itself turns into exit codes and messages."""


def state(ctx: Any) -> CliState:
    """The global options of the running command (commands take `ctx: typer.Context`)."""
    obj = ctx.find_object(CliState) if ctx is not None else None
    return obj if isinstance(obj, CliState) else CliState()


def err(message: str) -> None:
    """Print one line on stderr."""
    typer.echo(message, err=True)


def finite(value: Any) -> Any:
    """`value` with every NaN or infinite float (in lists, tuples and dicts too) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def json_text(doc: Any, indent: int | None = None) -> str:
    """The JSON every ``--json`` prints: strict JSON, a NaN or infinite value as null (never the
    ``NaN``/``Infinity`` tokens Python's json writes by default, which JSON parsers refuse)."""
    return json.dumps(finite(doc), ensure_ascii=False, allow_nan=False, indent=indent)


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


class _CliLogHandler(RichHandler):
    """Marks the handler the CLI installed, so a second invocation replaces it."""


def setup_logging(verbose: int) -> Callable[[], None]:
    """Log to stderr: warnings by default, -v info (emsbms), -vv debug (emsbms).

    Returns a function that undoes it (the CLI calls it when the command ends, so an in-process
    invocation, e.g. from tests, leaves the logging configuration as it found it).
    """
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    root = logging.getLogger()
    package = logging.getLogger("emsbms")
    for h in list(root.handlers):
        if isinstance(h, _CliLogHandler):
            root.removeHandler(h)
    handler = _CliLogHandler(console=Console(stderr=True), show_path=False, rich_tracebacks=False)
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
