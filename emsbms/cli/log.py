"""`emsbms log record`: raw frames from the site's buses into a candump, asc, blf, csv or trc file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.text import Text

from emsbms.cli.common import Duration, err, handle_errors, run_until, state, stop_signals
from emsbms.diag.logs import FORMATS, Recorder, RecordStats, log_format

app = typer.Typer(help="Record CAN logs.", no_args_is_help=True)


def counts(stats: RecordStats) -> str:
    """`lv 120, hv 40`: frames received per bus."""
    return ", ".join(f"{name} {n}" for name, n in stats.received.items())


def progress(recorder: Recorder, started: float) -> Text:
    """The live line: frames per bus, frames written, elapsed time."""
    s = recorder.stats
    return Text.assemble(
        ("record ", "bold"), (str(recorder.path), "cyan"), f"  {counts(s)}  ",
        ("written ", "dim"), str(s.written), f"  {time.monotonic() - started:.0f} s  ", ("Ctrl-C to stop", "dim"),
    )


@app.command("record")
@handle_errors
def record(
    ctx: typer.Context,
    file: Annotated[
        Path, typer.Argument(metavar="FILE", help=f"the log file; its suffix picks the format ({', '.join(FORMATS)})")
    ],
    bus: Annotated[
        list[str] | None, typer.Option("--bus", metavar="NAME", help="record only this bus (repeatable)")
    ] = None,
    duration: Duration = None,
) -> None:
    """Record raw frames from the site's buses (all, or the --bus ones) into FILE until Ctrl-C.

    The file suffix picks the format: .log (candump -l), .asc, .blf, .csv or .trc. Every frame
    received is written: Ctrl-C, SIGTERM or --duration stop reading, then flush and close the file.
    """
    log_format(file)
    site = state(ctx).load_site()
    buses = [site.bus(name) for name in dict.fromkeys(bus)] if bus else list(site.buses)
    recorder = Recorder(file, buses, site.buses)
    console = Console(stderr=True)
    with stop_signals() as stop:
        recorder.start()
        started = time.monotonic()
        try:
            err(f"record: {', '.join(b.name for b in buses)} -> {file} (Ctrl-C to stop)")

            live = Live(progress(recorder, started), console=console, refresh_per_second=4, transient=True)

            def tick() -> None:
                if recorder.failed:
                    stop.set()
                if live.is_started:
                    live.update(progress(recorder, started))

            if console.is_terminal:
                live.start()
            try:
                run_until(stop, duration, every=0.25, tick=tick)
            finally:
                live.stop()
        finally:
            stats = recorder.stop()
    skipped = f", {stats.skipped} skipped (the format cannot hold them)" if stats.skipped else ""
    err(f"record: {stats.written} frames written to {file} ({counts(stats)}){skipped}")
