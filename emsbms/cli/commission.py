"""`emsbms commission`: store a device, its bus and its profile in the edge database."""

from __future__ import annotations

from typing import Annotated

import typer

from emsbms.cli.common import CliState, handle_errors, json_text, state
from emsbms.commissioning.commission import commission
from emsbms.db import EdgeDb, changes
from emsbms.errors import ConfigError
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig, load_site

Interface = Annotated[
    str | None, typer.Option("--interface", metavar="NAME", help="python-can interface of a bus not in the site")
]
Channel = Annotated[
    str | None, typer.Option("--channel", metavar="CHANNEL", help="its channel (default: the bus name)")
]
Bitrate = Annotated[int, typer.Option("--bitrate", metavar="BIT/S", min=1, help="its bitrate")]


def parse_int(text: str | None, option: str, low: int, high: int) -> int | None:
    """An integer option given in decimal or 0x hex (e.g. --source-address 0xF3); exit 2 if it is not one."""
    if text is None:
        return None
    try:
        value = int(text.strip(), 0)
    except ValueError:
        raise typer.BadParameter(f"expected an integer (decimal or 0x hex); found {text!r}",
                                 param_hint=option) from None
    if not low <= value <= high:
        raise typer.BadParameter(f"expected {low}..{high}; found {text}", param_hint=option)
    return value


def given_bus(cli: CliState, name: str, interface: str | None, channel: str | None, bitrate: int) -> BusConfig | None:
    """The bus `name` from --interface/--channel/--bitrate, else from the --site file, else None."""
    if interface is not None:
        return BusConfig(name, interface, channel or name, bitrate)
    if channel is not None:
        raise ConfigError("--channel needs --interface")
    if cli.site is not None:
        return load_site(cli.site).bus(name)
    return None


@handle_errors
def command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help="the device name (its channel prefix)")],
    bus: Annotated[str, typer.Option("--bus", metavar="BUS", help="the bus it is on")],
    profile: Annotated[str, typer.Option("--profile", metavar="PROFILE", help="NAME, NAME@VERSION or a file")],
    node_id: Annotated[
        int | None, typer.Option("--node-id", metavar="N", min=1, max=127, help="CANopen node ID")
    ] = None,
    source_address: Annotated[
        str | None, typer.Option("--source-address", metavar="SA", help="J1939 source address, e.g. 0xF3")
    ] = None,
    j1939_name: Annotated[
        str | None, typer.Option("--name", metavar="J1939NAME", help="J1939 64-bit NAME (preferred), e.g. 0x9000...")
    ] = None,
    id_offset: Annotated[
        str | None, typer.Option("--id-offset", metavar="K", help="CAN-bridge offset added to every ID, e.g. 0x100")
    ] = None,
    nmt_master: Annotated[bool, typer.Option("--nmt-master", help="CANopen: the edge sends NMT start")] = False,
    interface: Interface = None,
    channel: Channel = None,
    bitrate: Bitrate = 500_000,
    as_json: Annotated[bool, typer.Option("--json", help="print the device and its version before and after as JSON")]
    = False,
) -> None:
    """Store a device in the database; refused if its IDs collide with a device already on that bus.

    --profile NAME follows the newest stored version of NAME (a later `profiles import` switches
    it); NAME@VERSION pins that version. Prints the version the device ran and runs now.
    """
    cli = state(ctx)
    device = DeviceConfig(
        name=name, bus=bus, profile=profile,
        id_offset=parse_int(id_offset, "--id-offset", -0x1FFFFFFF, 0x1FFFFFFF) or 0,
        node_id=node_id,
        source_address=parse_int(source_address, "--source-address", 0, 253),
        j1939_name=parse_int(j1939_name, "--name", 0, 2**64 - 1),
        nmt_master=nmt_master,
    )
    with EdgeDb(cli.db) as db:
        before = db.running()
        bus_config = None if db.site.bus(bus) is not None and interface is None else given_bus(
            cli, bus, interface, channel, bitrate)
        done = commission(db, device, bus_config, found_by="by hand")
        after = db.running()
    if as_json:
        old, new = before.get(device.name), after[device.name]
        typer.echo(json_text({"device": device.name, "bus": bus, "new_bus": done.new_bus, "ref": new.ref,
                              "pinned": new.pinned, "before": old.version if old else None, "after": new.version}))
        return
    typer.echo(done.describe())
    for line in changes({name: r for name, r in before.items() if name == device.name},
                        {name: r for name, r in after.items() if name == device.name}):
        typer.echo(line)
    if done.new_bus:
        typer.echo(f"stored bus {done.bus.name} ({done.bus.interface}:{done.bus.channel}, {done.bus.bitrate} bit/s)")
