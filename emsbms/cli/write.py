"""`emsbms write`: send a command to a device and report its outcome."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from emsbms.cli.common import ExitCode, channel_info, handle_errors, json_text, state
from emsbms.edge import Edge
from emsbms.edge.lock import EdgeLock
from emsbms.errors import ConfigError, UnknownAddressError
from emsbms.site import Site
from emsbms.types import ChannelKind, CommandStatus, CommState

EXIT = {
    CommandStatus.ACKED: ExitCode.OK,
    CommandStatus.SENT: ExitCode.OK,
    CommandStatus.TIMEOUT: ExitCode.TIMEOUT,
    CommandStatus.REJECTED: ExitCode.REJECTED,
}
WORDS = {"true": 1.0, "on": 1.0, "yes": 1.0, "false": 0.0, "off": 0.0, "no": 0.0}


def parse_value(text: str) -> float:
    """A command value: a number, or true/false (on/off, yes/no) for 1/0."""
    word = WORDS.get(text.strip().lower())
    if word is not None:
        return word
    try:
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"expected a number or true/false, found {text!r}", param_hint="VALUE") from None


def check_command(edge: Edge, address: str) -> None:
    """Raise UnknownAddressError unless `address` is a command channel of the site."""
    info = channel_info(edge, address)
    if info.kind is not ChannelKind.COMMAND:
        device = address.split("/", 1)[0]
        adapter = edge.adapters.get(device)
        known = ", ".join(adapter.command_names) if adapter is not None else ""
        raise UnknownAddressError(f"{address} is not a command channel; {device} commands: {known or 'none'}")


def wait_for_device(edge: Edge, device: str, timeout: float) -> None:
    """Let the edge hear the device first (CommState OK), so a command is not refused unheard."""
    address = f"{device}/CommState"
    if address not in edge.registry.addresses():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = edge.registry.get(address)
        if r is not None and r.value == CommState.OK:
            return
        time.sleep(0.02)


@handle_errors
def command(
    ctx: typer.Context,
    address: Annotated[str, typer.Argument(metavar="ADDRESS", help="command channel, e.g. bms_0/SetChargeCurrent")],
    value: Annotated[str, typer.Argument(metavar="VALUE", help="a number (negative ones too: -77), or true/false")],
    timeout: Annotated[
        float,
        typer.Option(
            "--timeout", metavar="S", min=0.0, help="seconds to wait for the device, then for the acknowledgement"
        ),
    ] = 5.0,
    as_json: Annotated[bool, typer.Option("--json", help="print the result as JSON")] = False,
) -> None:
    """Write VALUE to the command channel ADDRESS and wait for its acknowledgement.

    Exit 0 acked (or sent, for a profile without acknowledgement), 3 timeout, 4 rejected,
    2 for an unknown address.
    """
    number = parse_value(value)
    site = state(ctx).load_site()
    lock = refuse_running_core(site, state(ctx).db)
    try:
        _write(site, address, number, timeout, as_json)
    finally:
        if lock is not None:
            lock.release()


def refuse_running_core(site: Site, db: Path) -> EdgeLock | None:
    """For a site with [[controller]] tables: the database's edge lock, held while this write runs.

    A running edge of such a site arbitrates every write in its command dispatcher; a write from
    this process would bypass it (and be overwritten at its next cycle), and there is no IPC into
    it, so the write is refused (ConfigError, exit 2) while `emsbms run` holds the database.
    """
    if not site.controllers:
        return None
    try:
        return EdgeLock.acquire(db)
    except ConfigError as e:
        raise ConfigError(f"{e}. Its site has [[controller]] tables, so every write goes through its command"
                          " dispatcher: send the command through the cloud API (POST .../commands), or stop the"
                          " edge to write directly") from None


def _write(site: Site, address: str, number: float, timeout: float, as_json: bool) -> None:
    edge = Edge(site)
    check_command(edge, address)
    with edge:
        wait_for_device(edge, address.split("/", 1)[0], timeout)
        result = edge.write(address, number, timeout)
    if as_json:
        typer.echo(json_text(result.as_dict()))
    else:
        status, detail = result.status.value, result.detail or address
        typer.echo(detail if detail.startswith(status) else f"{status}: {detail}")
    raise typer.Exit(EXIT[result.status])
