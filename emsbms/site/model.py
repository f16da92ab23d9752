"""Site files: the TOML that names a site, its buses and its devices."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from emsbms.can.config import BusConfig
from emsbms.errors import ConfigError
from emsbms.protocols.base import DeviceConfig


@dataclass(frozen=True)
class Site:
    """A whole site: organisation, name, buses and devices."""

    org: str
    name: str
    buses: list[BusConfig]
    devices: list[DeviceConfig]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # protocol-wide tables, e.g. [j1939]

    def bus(self, name: str) -> BusConfig:
        for b in self.buses:
            if b.name == name:
                return b
        raise ConfigError(f"no bus {name!r}; known: {', '.join(b.name for b in self.buses)}")


_SITE_KEYS = {"org", "name"}
_BUS_KEYS = {"name", "interface", "channel", "bitrate"}
_DEVICE_KEYS = {
    "name": str, "bus": str, "profile": str, "id_offset": int, "node_id": int,
    "source_address": int, "j1939_name": int, "nmt_master": bool, "options": dict,
}
_TOP_KEYS = {"site", "bus", "device", "j1939", "canopen"}


def _need(where: str, table: dict[str, Any], key: str, kind: type) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key {key!r}")
    value = table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(
            f"{where}: key {key!r} expected {kind.__name__}, found {type(value).__name__} {value!r}"
        )
    return value


def parse_site(data: dict[str, Any], source: str = "<site>", path: Path | None = None) -> Site:
    """Validate a parsed site document; every error names the file, the table and the key."""
    for key in data:
        if key not in _TOP_KEYS:
            raise ConfigError(
                f"{source}: unknown table {key!r}; expected one of {', '.join(sorted(_TOP_KEYS))}"
            )
    site = data.get("site", {})
    if not isinstance(site, dict):
        raise ConfigError(f"{source}: [site] must be a table")
    for key in site:
        if key not in _SITE_KEYS:
            raise ConfigError(f"{source}: [site]: unknown key {key!r}; expected org, name")
    buses: list[BusConfig] = []
    for i, b in enumerate(data.get("bus", [])):
        where = f"{source}: [[bus]] #{i + 1}" + (f" {b.get('name')!r}" if "name" in b else "")
        name = _need(where, b, "name", str)
        interface = _need(where, b, "interface", str)
        channel = b.get("channel", name)
        bitrate = b.get("bitrate", 500_000)
        if not isinstance(bitrate, int) or isinstance(bitrate, bool) or bitrate <= 0:
            raise ConfigError(f"{where}: key 'bitrate' expected a positive int, found {bitrate!r}")
        if any(x.name == name for x in buses):
            raise ConfigError(f"{where}: key 'name': duplicate bus name {name!r}")
        options = {k: v for k, v in b.items() if k not in _BUS_KEYS}
        buses.append(BusConfig(name, interface, str(channel), bitrate, options))
    bus_names = [b.name for b in buses]
    devices: list[DeviceConfig] = []
    for i, d in enumerate(data.get("device", [])):
        where = f"{source}: [[device]] #{i + 1}" + (f" {d.get('name')!r}" if "name" in d else "")
        for key in d:
            if key not in _DEVICE_KEYS:
                raise ConfigError(
                    f"{where}: unknown key {key!r}; expected one of {', '.join(_DEVICE_KEYS)}"
                )
        values = {key: _need(where, d, key, kind) for key, kind in _DEVICE_KEYS.items() if key in d}
        for key in ("name", "bus", "profile"):
            _need(where, d, key, str)
        if "/" in values["name"]:
            raise ConfigError(f"{where}: key 'name': {values['name']!r} must not contain '/'")
        if values["name"] in bus_names or any(x.name == values["name"] for x in devices):
            raise ConfigError(f"{where}: key 'name': duplicate name {values['name']!r}")
        if values["bus"] not in bus_names:
            raise ConfigError(
                f"{where}: key 'bus': {values['bus']!r} is not a defined bus;"
                f" known: {', '.join(bus_names) or 'none'}"
            )
        devices.append(DeviceConfig(**values))
    extra = {k: v for k, v in data.items() if k not in {"site", "bus", "device"}}
    return Site(
        org=str(site.get("org", "")),
        name=str(site.get("name", path.stem if path else "site")),
        buses=buses,
        devices=devices,
        path=path,
        extra=extra,
    )


def load_site(path: str | Path) -> Site:
    """Read and validate a site TOML file. Profiles are checked when the edge is built."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read site file: {e.strerror or e}") from e
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from e
    return parse_site(data, str(p), p)
