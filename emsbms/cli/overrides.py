"""`emsbms overrides`: the running edge's manual overrides, listed or cancelled.

No IPC reaches a running edge: `emsbms run` writes its overrides to the edge database
(`core_overrides`) and polls it for cancel requests (`core_cancel_requests`), as its profile watcher
polls for activations (emsbms/core/overrides.py).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import ExitCode, err, handle_errors, json_text, state
from emsbms.core.overrides import read_overrides, request_cancel
from emsbms.edge.lock import EdgeLock
from emsbms.errors import ConfigError


def edge_running(path: Path) -> bool:
    """Whether an edge holds the lock of the database at `path`."""
    try:
        EdgeLock.acquire(path).release()
    except ConfigError:
        return True
    return False


def _left(expires_us: int, now_us: int) -> str:
    seconds = max(0, (expires_us - now_us) // 1_000_000)
    return f"{seconds // 60}m{seconds % 60:02d}s"


@handle_errors
def command(
    ctx: typer.Context,
    cancel: Annotated[
        str | None, typer.Option("--cancel", metavar="ADDRESS", help="cancel the override of ADDRESS now")
    ] = None,
    db: Annotated[
        Path | None, typer.Option("--db", metavar="FILE", help="the running edge's database (overrides --db)")
    ] = None,
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="S", min=0.1, help="seconds to wait for the edge")
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the overrides as JSON")] = False,
) -> None:
    """List the active manual overrides of the edge running on the database, or cancel one.

    Exit 0; 4 when --cancel finds no override of ADDRESS; 2 when no edge answers.
    """
    path = db or state(ctx).db
    if not path.exists():
        err(f"overrides: no database at {path}")
        raise typer.Exit(ExitCode.USAGE)
    if not edge_running(path):
        err(f"overrides: no edge is running on {path} (start `emsbms run`); a stopped edge keeps no overrides")
        raise typer.Exit(ExitCode.USAGE)
    if cancel is not None:
        answer = request_cancel(path, cancel, timeout)
        typer.echo(answer)
        raise typer.Exit(ExitCode.OK if answer.endswith("cancelled") else ExitCode.REJECTED)
    now = time.time_ns() // 1000
    overrides = read_overrides(path, now)
    if as_json:
        typer.echo(json_text([o.as_dict() for o in overrides]))
        return
    if not overrides:
        typer.echo("no active overrides")
        return
    for o in overrides:
        typer.echo(f"{o.address} = {o.value:g}  ({o.source_text}, {_left(o.expires_us, now)} left)")
