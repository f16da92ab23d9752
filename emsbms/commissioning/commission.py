"""Commissioning: store a device (and its bus and profile) in the edge database, refusing collisions.

`commission` checks the site the database would hold with the new device (and its bus) exactly as
a site file is checked (`emsbms.site`: `parse_site` for keys, types, python-can interfaces and
physical channels, `build_adapters` for ID widths, colliding IDs and J1939 NAMEs and source
addresses), so it refuses the same things with the same messages. Its profile resolves (stored,
shipped or a file, which is then stored). Nothing is stored when a check fails.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

from emsbms.db import EdgeDb, device_table, replace_profile, split_ref
from emsbms.db.profiles import shipped_source
from emsbms.errors import ConfigError
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig, build_adapters, parse_site

log = logging.getLogger(__name__)

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Commissioned:
    """What `commission` stored."""

    device: DeviceConfig
    bus: BusConfig
    profile: Profile
    new_bus: bool
    new_profile: bool

    def describe(self) -> str:
        d = self.device
        where = ", ".join(f"{k} {v}" for k, v in addressing(d).items())
        return (f"commissioned {d.name} on bus {d.bus} with profile {self.profile.name} {self.profile.version}"
                + (f" ({where})" if where else ""))


def addressing(d: DeviceConfig) -> dict[str, str]:
    """The protocol addressing of a device, for display: node_id 5, source_address 0xF3, ..."""
    out: dict[str, str] = {}
    if d.node_id is not None:
        out["node_id"] = str(d.node_id)
    if d.source_address is not None:
        out["source_address"] = f"0x{int(d.source_address):02X}"
    if d.j1939_name is not None:
        out["j1939_name"] = f"0x{int(d.j1939_name):016X}"
    if d.id_offset:
        out["id_offset"] = f"0x{d.id_offset:X}" if d.id_offset > 0 else str(d.id_offset)
    return out


def suggest_name(profile: str, taken: Iterable[str]) -> str:
    """A free device name from a profile name: pylon-lv -> pylon_lv, then pylon_lv_2, ..."""
    used = set(taken)
    base = re.sub(r"[^A-Za-z0-9_]", "_", profile)
    if base not in used:
        return base
    n = 2
    while f"{base}_{n}" in used:
        n += 1
    return f"{base}_{n}"


def commission(db: EdgeDb, device: DeviceConfig, bus: BusConfig | None = None, found_by: str = "") -> Commissioned:
    """Check and store `device`; its bus comes from the database, else from `bus` (stored with it).

    Raises ConfigError (a name taken, an unknown bus, addressing that does not fit, colliding
    frames) or ProfileError (the profile does not load); nothing is stored then.
    """
    _check_name(db, device.name)
    stored_bus = db.site.bus(device.bus)
    if stored_bus is None:
        if bus is None:
            known = ", ".join(b.name for b in db.site.buses()) or "none"
            raise ConfigError(f"bus {device.bus!r} is not in the database (stored: {known}); give"
                              " --interface/--channel/--bitrate, or --site with a [[bus]] of that name")
        if bus.name != device.bus:
            raise ConfigError(f"device {device.name}: bus {device.bus!r} does not match the bus given ({bus.name!r})")
    elif bus is not None and (bus.interface, bus.channel, bus.bitrate) != (
            stored_bus.interface, stored_bus.channel, stored_bus.bitrate):
        raise ConfigError(f"bus {device.bus!r} is already stored as {stored_bus.interface}:{stored_bus.channel}"
                          f" at {stored_bus.bitrate} bit/s; found {bus.interface}:{bus.channel} at {bus.bitrate}")
    the_bus = stored_bus or bus
    assert the_bus is not None
    profile, label = _profile(db, device.profile)
    device = replace_profile(device, profile)
    _check_site(db, device, profile, None if stored_bus is not None else the_bus)
    with db.transaction():
        new_profile = db.profiles.add([(label, profile)])[0].status == "stored"
        if stored_bus is None:
            db.site.put_bus(the_bus)
        db.site.put_device(device, found_by)
    done = Commissioned(device, the_bus, profile, stored_bus is None, new_profile)
    log.info("%s", done.describe())
    return done


def decommission(db: EdgeDb, name: str) -> DeviceConfig:
    """Remove a commissioned device (its bus and profile stay); ConfigError if there is none."""
    with db.transaction():
        return db.site.remove_device(name)


def _check_name(db: EdgeDb, name: str) -> None:
    if not _NAME.match(name):
        raise ConfigError(f"device name {name!r}: expected letters, digits, '_', '-' or '.'")
    existing = db.site.device(name)
    if existing is not None:
        raise ConfigError(f"device {name!r} is already commissioned (bus {existing.bus}, profile"
                          f" {existing.profile}); decommission it first or choose another name")
    if db.site.bus(name) is not None:
        raise ConfigError(f"device name {name!r} is the name of a bus (its health channels use it)")


def _profile(db: EdgeDb, ref: str) -> tuple[Profile, str]:
    """The profile a reference names and the import label it is stored under if it is new."""
    name, _ = split_ref(ref)
    profile = db.profiles.resolve(ref)
    if name.endswith(".json") or "/" in name:
        return profile, name
    stored = db.profiles.get(profile.name, profile.version)
    return profile, stored.source if stored is not None else shipped_source(profile.name)


def _check_site(db: EdgeDb, device: DeviceConfig, profile: Profile, bus: BusConfig | None) -> None:
    """The stored site with `device` (and `bus`, if it is new) passes every check a site file passes."""
    tables = db.site.tables()
    if bus is not None:
        tables["bus"].append({"name": bus.name, "interface": bus.interface, "channel": bus.channel,
                              "bitrate": bus.bitrate, **bus.options})
    tables["device"].append(device_table(device))
    try:
        site = parse_site(tables, f"database {db.path}")
        profiles = {d.name: db.profiles.resolve(d.profile) for d in site.devices if d.name != device.name}
        profiles[device.name] = profile
        build_adapters(site, profiles)
    except ConfigError as e:
        raise ConfigError(f"cannot commission {device.name!r} on bus {device.bus!r}: {e}") from e
