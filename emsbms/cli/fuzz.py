"""`emsbms fuzz`: feed random frames through every shipped profile's adapter and report the counts."""

from __future__ import annotations

import logging
import time
from typing import Annotated

import typer

from emsbms.cli.common import ExitCode, err, handle_errors, json_text, state
from emsbms.diag.fuzz import run


@handle_errors
def command(
    ctx: typer.Context,
    frames: Annotated[int, typer.Option("--frames", metavar="N", min=1, help="how many random frames")] = 100_000,
    seed: Annotated[int, typer.Option("--seed", metavar="N", help="random seed (same seed, same frames)")] = 0,
    as_json: Annotated[bool, typer.Option("--json", help="print the counts as JSON")] = False,
) -> None:
    """Fuzz the receive path: random IDs, DLCs 0-8 and CAN FD lengths, remote and error frames.

    Exit 0 if nothing raised (not even an adapter exception the dispatcher caught) and every frame
    was counted; 1 otherwise.
    """
    package = logging.getLogger("emsbms")
    previous = package.level
    if not state(ctx).verbose:
        package.setLevel(logging.ERROR)  # random EMCY/DM1 frames would log thousands of warnings
    try:
        started = time.perf_counter()
        report = run(frames=frames, seed=seed)
        elapsed = time.perf_counter() - started
    finally:
        package.setLevel(previous)
    counted = report.counted_ok + report.counted_bad + report.counted_unknown + report.counted_error_frames
    doc = {**report.as_dict(), "seconds": round(elapsed, 3), "frames_per_s": round(frames / elapsed)}
    if as_json:
        typer.echo(json_text(doc))
    else:
        for key, value in doc.items():
            if key != "exceptions":
                typer.echo(f"{key:>22}  {value}")
        for e in report.exceptions:
            err(f"exception: {e}")
    if report.exceptions or counted != report.frames:
        err(f"error: {len(report.exceptions)} kinds of exception ({report.adapter_exceptions} raised by adapters,"
            f" caught by the dispatcher); {counted} of {report.frames} frames counted")
        raise typer.Exit(ExitCode.FAILURE)
