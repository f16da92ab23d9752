"""`emsbms decode`: a CAN log through the site's profiles, offline, into timestamped channel samples."""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import err, handle_errors, state
from emsbms.diag.logs import BusMap, DecodeStats, OfflineDecoder, SampleFormat, log_format, read_log, write_samples
from emsbms.types import Sample


def matching(samples: Iterable[Sample], patterns: list[str]) -> Iterator[Sample]:
    """Only the samples whose address matches one of the patterns (all if there are none)."""
    if not patterns:
        yield from samples
        return
    cache: dict[str, bool] = {}
    for s in samples:
        hit = cache.get(s.address)
        if hit is None:
            hit = cache[s.address] = any(fnmatch.fnmatchcase(s.address, p) for p in patterns)
        if hit:
            yield s


def finite_values(samples: Iterable[Sample]) -> Iterator[Sample]:
    """The samples with a NaN or infinite value as None (JSON has no NaN: it is written null)."""
    for s in samples:
        yield s._replace(value=None) if isinstance(s.value, float) and not math.isfinite(s.value) else s


def summary(stats: DecodeStats, written: int, where: str) -> str:
    per_bus = ", ".join(f"{name} {n}" for name, n in stats.per_bus.items() if n)
    text = (f"decode: {stats.frames} frames" + (f" ({per_bus})" if per_bus else "")
            + f": {stats.decoded} decoded, {stats.unknown} unknown IDs, {stats.bad} bad,"
            f" {stats.short} short, {stats.bad_values} bad values, {stats.error_frames}"
            f" error frames; {written} samples written to {where}")
    return text + (f"; last bad frame: {stats.last_bad}" if stats.bad else "")


@handle_errors
def command(
    ctx: typer.Context,
    file: Annotated[Path, typer.Argument(metavar="FILE", help="a .log, .asc, .blf, .csv or .trc log")],
    fmt: Annotated[SampleFormat, typer.Option("--format", help="csv (with a header row) or jsonl")] = SampleFormat.CSV,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", metavar="OUT", help="write here instead of stdout")
    ] = None,
    bus: Annotated[
        list[str] | None,
        typer.Option("--bus", metavar="NAME", help="decode every frame on bus NAME, or map one: CHANNEL=NAME"),
    ] = None,
    address: Annotated[
        list[str] | None,
        typer.Option("--address", metavar="PATTERN", help="only addresses matching PATTERN, e.g. 'bms_0/*'"),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="the same as --format jsonl")] = False,
) -> None:
    """Decode FILE with the site's profiles, offline: one row per channel sample, µs timestamps.

    Columns: address, value, unit, timestamp_us, quality. Supervision runs on the log's clock.
    In JSON lines (--json) a NaN or infinite value is null.
    """
    log_format(file)
    the_site = state(ctx).load_site()
    decoder = OfflineDecoder(the_site, BusMap(the_site, bus or []))
    fmt = SampleFormat.JSONL if as_json else fmt
    samples = matching(decoder.decode(read_log(file)), address or [])
    if fmt is SampleFormat.JSONL:
        samples = finite_values(samples)
    if output is None:
        written = write_samples(samples, decoder.units, sys.stdout, fmt)
        sys.stdout.flush()
    else:
        with output.open("w", encoding="utf-8", newline="") as out:
            written = write_samples(samples, decoder.units, out, fmt)
    err(summary(decoder.stats, written, str(output or "stdout")))
