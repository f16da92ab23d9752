"""`emsbms read`: wait for fresh values of channels and print them."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from emsbms.cli.common import ExitCode, channel_info, err, handle_errors, json_text, state
from emsbms.edge import Edge
from emsbms.edge.dispatch import now_us
from emsbms.errors import ReadTimeout
from emsbms.monitor import format_value
from emsbms.types import Reading


@handle_errors
def command(
    ctx: typer.Context,
    addresses: Annotated[list[str], typer.Argument(metavar="ADDRESS", help="channel addresses, e.g. bms_0/Soc")],
    timeout: Annotated[
        float, typer.Option("--timeout", metavar="S", min=0.0, help="seconds to wait for every value")
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
    fresh: Annotated[
        bool, typer.Option("--fresh", help="read from the device now (CANopen: SDO upload) instead of waiting")
    ] = False,
) -> None:
    """Wait until each ADDRESS has a value received after the command started, then print them.

    Exit 0 if every value arrived, 3 on timeout (the missing ones are named on stderr),
    2 for an unknown address. With --fresh each value is read from the device on demand
    (an SDO upload for CANopen devices); protocols without on-demand reads exit 2. A bus channel
    (can0/RxRate) is the edge's own: --fresh waits for the next value it publishes.
    """
    started = now_us()
    edge = Edge(state(ctx).load_site())
    for address in addresses:
        channel_info(edge, address)  # unknown address: exit 2 before opening any bus
    got: dict[str, Reading] = {}
    missing: list[str] = []
    with edge:
        deadline = time.monotonic() + timeout
        for address in dict.fromkeys(addresses):
            try:
                left = max(0.0, deadline - time.monotonic())
                on_demand = fresh and address.split("/", 1)[0] in edge.adapters  # a device's, not a bus's
                got[address] = edge.read(address, left, after_us=now_us() if fresh else started, fresh=on_demand)
            except ReadTimeout:
                missing.append(address)
    _print(addresses, got, as_json)
    if missing:
        err(f"timeout: no value within {timeout:g} s for {', '.join(missing)}")
        raise typer.Exit(ExitCode.TIMEOUT)


def _print(addresses: list[str], got: dict[str, Reading], as_json: bool) -> None:
    if as_json:
        doc = {a: (got[a].as_dict() if a in got else None) for a in addresses}
        typer.echo(json_text(doc))
        return
    width = max(len(a) for a in addresses)
    for a in dict.fromkeys(addresses):
        r = got.get(a)
        if r is None:
            typer.echo(f"{a:<{width}}  (no value)")
        else:
            typer.echo(f"{a:<{width}}  {format_value(r.value, r.unit)}  {r.quality.value}")
