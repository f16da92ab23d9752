"""The commissioned site in the database: buses, devices, site settings, and TOML import/export.

`SiteStore` reads and writes the ``buses``, ``devices`` and ``site`` tables. `StoredSite` is a
`Site` read from them, carrying every device's profile loaded from the profile store, so the
edge starts from the database alone (``Edge.from_db``, or any command run without ``--site``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlite_utils

from emsbms.errors import ConfigError
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig, Site, parse_site


@dataclass(frozen=True)
class StoredSite(Site):
    """A site read from the database, with each device's profile loaded from the store (by device name)."""

    profiles: dict[str, Profile] = field(default_factory=dict)


def _hex_name(value: int | None) -> str | None:
    return None if value is None else f"0x{int(value):016X}"


def _int(value: Any) -> int | None:
    if value is None:
        return None
    return int(value, 0) if isinstance(value, str) else int(value)


class SiteStore:
    """Buses, devices and site settings in the edge database (migrations 2 and 3)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # -- reading ----------------------------------------------------------------------------

    def buses(self) -> list[BusConfig]:
        rows = self.db.execute("SELECT name, interface, channel, bitrate, options FROM buses ORDER BY name")
        return [BusConfig(r[0], r[1], r[2], int(r[3]), json.loads(r[4])) for r in rows.fetchall()]

    def bus(self, name: str) -> BusConfig | None:
        return next((b for b in self.buses() if b.name == name), None)

    def devices(self) -> list[DeviceConfig]:
        rows = self.db.execute(
            "SELECT name, bus, profile, id_offset, node_id, source_address, j1939_name, nmt_master, options"
            " FROM devices ORDER BY bus, name"
        ).fetchall()
        return [
            DeviceConfig(name=r[0], bus=r[1], profile=r[2], id_offset=int(r[3]), node_id=r[4], source_address=r[5],
                         j1939_name=_int(r[6]), nmt_master=bool(r[7]), options=json.loads(r[8]))
            for r in rows
        ]

    def device(self, name: str) -> DeviceConfig | None:
        return next((d for d in self.devices() if d.name == name), None)

    def found_by(self) -> dict[str, str]:
        """How each device was found (``scan: passive 0.97``), or '' if it was given by hand."""
        return {r[0]: r[1] for r in self.db.execute("SELECT name, found_by FROM devices").fetchall()}

    def settings(self) -> dict[str, Any]:
        """The ``site`` table: org, name and the protocol-wide tables ([j1939], [canopen])."""
        return {r[0]: json.loads(r[1]) for r in self.db.execute("SELECT key, value FROM site").fetchall()}

    def to_site(self, label: str = "<database>") -> Site:
        """The stored site as a `Site` (profiles still references); validated as a site file would be."""
        return parse_site(self.tables(), label)

    def tables(self) -> dict[str, Any]:
        """The stored site as site-file tables (what `export_toml` writes)."""
        settings = self.settings()
        site = {k: settings[k] for k in ("org", "name") if k in settings}
        out: dict[str, Any] = {"site": site}
        out.update({k: v for k, v in settings.items() if k not in ("org", "name")})
        out["bus"] = [
            {"name": b.name, "interface": b.interface, "channel": b.channel, "bitrate": b.bitrate, **b.options}
            for b in self.buses()
        ]
        out["device"] = [device_table(d) for d in self.devices()]
        return out

    # -- writing (callers hold a transaction where several writes must go together) ----------

    def put_bus(self, bus: BusConfig) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO buses (name, interface, channel, bitrate, options) VALUES (?, ?, ?, ?, ?)",
            [bus.name, bus.interface, bus.channel, bus.bitrate, json.dumps(bus.options)],
        )

    def put_device(self, d: DeviceConfig, found_by: str = "") -> None:
        self.db.execute(
            "INSERT INTO devices (name, bus, profile, id_offset, node_id, source_address, j1939_name, nmt_master,"
            " options, commissioned_us, found_by) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [d.name, d.bus, d.profile, d.id_offset, _int(d.node_id), _int(d.source_address),
             _hex_name(_int(d.j1939_name)), int(d.nmt_master), json.dumps(d.options), time.time_ns() // 1000,
             found_by],
        )

    def remove_device(self, name: str) -> DeviceConfig:
        """Delete a device; ConfigError naming the commissioned ones if there is no such device."""
        device = self.device(name)
        if device is None:
            known = ", ".join(d.name for d in self.devices()) or "none"
            raise ConfigError(f"no commissioned device {name!r}; commissioned: {known}")
        self.db.execute("DELETE FROM devices WHERE name = ?", [name])
        return device

    def replace(self, site: Site) -> None:
        """Make the stored site exactly `site` (buses, devices, settings), in the caller's transaction."""
        self.db.execute("DELETE FROM devices")
        self.db.execute("DELETE FROM buses")
        self.db.execute("DELETE FROM site")
        settings: dict[str, Any] = {"org": site.org, "name": site.name, **site.extra}
        for key, value in settings.items():
            self.db.execute("INSERT INTO site (key, value) VALUES (?, ?)", [key, json.dumps(value)])
        for b in site.buses:
            self.put_bus(b)
        for d in site.devices:
            self.put_device(d, "site import")


def device_table(d: DeviceConfig) -> dict[str, Any]:
    """A device as a ``[[device]]`` table (only the keys that differ from their defaults)."""
    table: dict[str, Any] = {"name": d.name, "bus": d.bus, "profile": d.profile}
    if d.id_offset:
        table["id_offset"] = d.id_offset
    for key in ("node_id", "source_address", "j1939_name"):
        value = _int(getattr(d, key))
        if value is not None:
            table[key] = value
    if d.nmt_master:
        table["nmt_master"] = True
    if d.options:
        table["options"] = dict(d.options)
    return table


# -- TOML out -------------------------------------------------------------------------------------

_HEX_KEYS = {"source_address": 2, "j1939_name": 16}


def _value(value: Any, key: str = "") -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int) and key in _HEX_KEYS:
        return f"0x{value:0{_HEX_KEYS[key]}X}"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_key(k)} = {_value(v, k)}" for k, v in value.items()) + "}"
    raise ConfigError(f"cannot write {type(value).__name__} {value!r} to TOML")


def _key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else json.dumps(key)


def to_toml(tables: dict[str, Any], header: str = "") -> str:
    """Site-file tables as TOML text: [site], the protocol tables, [[bus]] and [[device]]."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("[site]")
    lines += [f"{_key(k)} = {_value(v, k)}" for k, v in tables.get("site", {}).items()]
    for name, table in tables.items():
        if name in ("site", "bus", "device"):
            continue
        lines += ["", f"[{_key(name)}]"] + [f"{_key(k)} = {_value(v, k)}" for k, v in table.items()]
    for kind in ("bus", "device"):
        for table in tables.get(kind, []):
            lines += ["", f"[[{kind}]]"] + [f"{_key(k)} = {_value(v, k)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_toml(tables: dict[str, Any], path: Path, header: str = "") -> None:
    """Write site tables to `path`, checking first that they read back as a valid site."""
    parse_site(tables, str(path))
    path.write_text(to_toml(tables, header), encoding="utf-8")
