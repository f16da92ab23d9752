"""Site files: the TOML that names a site, its buses and its devices.

`parse_site` checks everything a site file says on its own, before any profile is loaded: every
key is known (with a "did you mean" for a typo) and has its type, in every table; each bus names a
python-can interface this edge can load, with options that interface takes (`interfaces.py`); no
two buses open the same physical channel. What needs the profiles (ID widths and collisions, J1939
NAMEs and addresses) is checked when the adapters are built (`build.py`). Every refusal names the
file, the table, the key, what was expected and what was found.
"""

from __future__ import annotations

import difflib
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from emsbms.can.config import BusConfig
from emsbms.errors import ConfigError
from emsbms.protocols.base import DeviceConfig
from emsbms.site.controllers import DEFAULT_CYCLE_PERIOD_S, parse_controllers, parse_cycle_period
from emsbms.site.groups import Workers, check_group, parse_group, parse_workers
from emsbms.site.interfaces import CORE_KEYS, InterfaceError, interface_options, interfaces, wire, wrapped_interface

MAX_ID = 0x1FFFFFFF
"""The largest 29-bit CAN ID; an id_offset beyond it cannot fit any frame."""


@dataclass(frozen=True)
class UplinkConfig:
    """The `[uplink]` table: the broker's URL and this edge's credentials."""

    url: str
    username: str = ""
    password: str | None = None  # from `password`, or read from `password_file`
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


@dataclass(frozen=True)
class Site:
    """A whole site: organisation, name, buses and devices."""

    org: str
    name: str
    buses: list[BusConfig]
    devices: list[DeviceConfig]
    path: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # protocol-wide tables, e.g. [j1939]
    source: str = ""  # how errors name where the site came from (a file, the database)
    uplink: UplinkConfig | None = None  # the [uplink] table: the MQTT broker this edge reports to
    groups: dict[str, str] = field(default_factory=dict)  # bus name -> its `group` (site/groups.py)
    workers: Workers = "auto"  # [site] workers: "auto", "off" or a number of worker processes
    controllers: list[dict[str, Any]] = field(default_factory=list)  # the [[controller]] tables (core.md)
    cycle_period_s: float = DEFAULT_CYCLE_PERIOD_S  # [site] cycle_period: the core cycle's period
    rules: list[dict[str, Any]] = field(default_factory=list)  # [[rule]] tables, keys checked (emsbms.alarms parses)

    @property
    def label(self) -> str:
        return self.source or str(self.path or "<site>")

    def bus(self, name: str) -> BusConfig:
        for b in self.buses:
            if b.name == name:
                return b
        raise ConfigError(f"no bus {name!r}; known: {', '.join(b.name for b in self.buses)}")


_SITE_KEYS: dict[str, type | tuple[type, ...]] = {"org": str, "name": str, "workers": (str, int),
                                                  "cycle_period": (str, int, float)}
_DEVICE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "bus": str, "profile": str, "id_offset": int, "node_id": int,
    "source_address": int, "j1939_name": int, "nmt_master": bool, "options": dict,
}
_UPLINK_KEYS: dict[str, type | tuple[type, ...]] = {
    "url": str, "username": str, "password": str, "password_file": str, "ca_file": str, "cert_file": str,
    "key_file": str,
}
_RULE_KEYS: dict[str, type | tuple[type, ...]] = {
    "name": str, "expression": str, "clear_expression": str, "for": (str, int, float), "off_delay": (str, int, float),
    "severity": str, "latch": bool,
}
_TABLES = ("site", "bus", "device", "j1939", "canopen", "uplink", "controller", "rule")
PROTOCOL_TABLES = ("j1939", "canopen")
"""Site-wide protocol tables; their keys are the protocol's device options."""


def protocol_options(protocol: str) -> list[str]:
    """The device options of a protocol (the keys of its site table and of a device's ``options``)."""
    if protocol == "j1939":
        from emsbms.protocols.j1939 import EdgeOptions

        return list(EdgeOptions.model_fields)
    if protocol == "canopen":
        from emsbms.protocols.canopen_od import CanopenOptions

        return list(CanopenOptions.model_fields)
    return []


def unknown_key(where: str, key: str, known: Iterable[str], what: str = "key") -> ConfigError:
    """The refusal of an unknown key, with the closest known one (a typo) and the known ones."""
    names = list(known)
    close = difflib.get_close_matches(key, names, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{where}: unknown {what} {key!r}{hint} (expected one of: {', '.join(names) or 'none'})")


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join("table" if k is dict else k.__name__ for k in kinds)


def _found(value: object) -> str:
    kind = "table" if isinstance(value, dict) else "array" if isinstance(value, list) else type(value).__name__
    return f"{kind} {value!r}"


def _check_type(where: str, key: str, value: object, kind: type | tuple[type, ...]) -> None:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    ok = isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)
    if not ok:
        raise ConfigError(f"{where}: key {key!r} expected {_type_name(kind)}, found {_found(value)}")


def _need(where: str, table: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in table:
        raise ConfigError(f"{where}: missing key {key!r} (expected {_type_name(kind)})")
    _check_type(where, key, table[key], kind)
    return table[key]


def _table(source: str, data: dict[str, Any], name: str) -> dict[str, Any]:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] expected a table, found {_found(value)}")
    return value


def _tables(source: str, data: dict[str, Any], name: str) -> list[dict[str, Any]]:
    value = data.get(name, [])
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{source}: [[{name}]] expected an array of tables, found {_found(value)}")
    return value


def _where(source: str, kind: str, i: int, table: dict[str, Any]) -> str:
    name = table.get("name")
    return f"{source}: [[{kind}]] #{i + 1}" + (f" {name!r}" if isinstance(name, str) else "")


def parse_bus(where: str, b: dict[str, Any]) -> BusConfig:
    """One `[[bus]]`: its keys, their types, and a python-can interface that takes its options."""
    name = _need(where, b, "name", str)
    interface = _need(where, b, "interface", str)
    channel = b.get("channel", name)
    _check_type(where, "channel", channel, (str, int))
    bitrate = b.get("bitrate", 500_000)
    if not isinstance(bitrate, int) or isinstance(bitrate, bool) or bitrate <= 0:
        raise ConfigError(f"{where}: key 'bitrate' expected a positive int, found {_found(bitrate)}")
    options = {k: v for k, v in b.items() if k not in CORE_KEYS}
    known = _interface_options(where, "interface", interface)
    inner = known.get("inner_interface")
    if inner is not None:
        _check_type(where, "inner_interface", options.get("inner_interface", inner.default), str)
        known = {**_interface_options(where, "inner_interface", wrapped_interface(interface, options) or ""), **known}
    for key, value in options.items():
        option = known.get(key)
        if option is None:
            raise unknown_key(where, key, [*CORE_KEYS, *known])
        if not option.fits(value):
            raise ConfigError(f"{where}: key {key!r} expected {option.expected}, found {_found(value)}")
    port = options.get("port")
    if isinstance(port, int) and not 0 < port < 65535:  # as python-can refuses it when the bus opens
        raise ConfigError(f"{where}: key 'port' expected 1..65534, found {port}")
    return BusConfig(name, interface, str(channel), bitrate, options)


def _interface_options(where: str, key: str, interface: str) -> dict[str, Any]:
    try:
        return interface_options(interface)
    except InterfaceError as e:
        names = interfaces()
        close = difflib.get_close_matches(interface, names, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        if interface in names:  # known to python-can, but its module does not load here
            raise ConfigError(f"{where}: key {key!r} expected an interface this edge can load, found"
                              f" {interface!r}: {e}") from None
        raise ConfigError(f"{where}: key {key!r} expected a python-can interface ({', '.join(names)}),"
                          f" found {interface!r}{hint}") from None


def parse_device(where: str, d: dict[str, Any], bus_names: list[str]) -> DeviceConfig:
    """One `[[device]]`: its keys and their types, a defined bus, an id_offset that fits a CAN ID."""
    for key in d:
        if key not in _DEVICE_KEYS:
            raise unknown_key(where, key, _DEVICE_KEYS)
    for key in ("name", "bus", "profile"):
        _need(where, d, key, str)
    values = {key: _need(where, d, key, kind) for key, kind in _DEVICE_KEYS.items() if key in d}
    if "/" in values["name"]:
        raise ConfigError(f"{where}: key 'name': {values['name']!r} must not contain '/'")
    if values["bus"] not in bus_names:
        raise ConfigError(
            f"{where}: key 'bus': {values['bus']!r} is not a defined bus; known: {', '.join(bus_names) or 'none'}"
        )
    offset = values.get("id_offset", 0)
    if not -MAX_ID <= offset <= MAX_ID:
        raise ConfigError(f"{where}: key 'id_offset' expected -0x{MAX_ID:X}..0x{MAX_ID:X}, found {_hex(offset)}")
    return DeviceConfig(**values)


def _hex(value: int) -> str:
    return f"-0x{-value:X}" if value < 0 else f"0x{value:X}"


def parse_site(data: dict[str, Any], source: str = "<site>", path: Path | None = None) -> Site:
    """Validate a parsed site document; every error names the file, the table and the key."""
    for key in data:
        if key not in _TABLES:
            raise unknown_key(source, key, _TABLES, "table")
    site = _table(source, data, "site")
    for key, value in site.items():
        if key not in _SITE_KEYS:
            raise unknown_key(f"{source}: [site]", key, _SITE_KEYS)
        _check_type(f"{source}: [site]", key, value, _SITE_KEYS[key])
    extra: dict[str, Any] = {}
    for protocol in PROTOCOL_TABLES:
        if protocol in data:
            table = _table(source, data, protocol)
            known = protocol_options(protocol)
            for key in table:
                if key not in known:
                    raise unknown_key(f"{source}: [{protocol}]", key, known)
            extra[protocol] = table
    buses: list[BusConfig] = []
    wires: dict[str, str] = {}
    groups: dict[str, str] = {}
    for i, b in enumerate(_tables(source, data, "bus")):
        where = _where(source, "bus", i, b)
        group = parse_group(where, b)
        bus = parse_bus(where, {k: v for k, v in b.items() if k != "group"})
        check_group(where, bus, group)
        if group is not None:
            groups[bus.name] = group
        if any(x.name == bus.name for x in buses):
            raise ConfigError(f"{where}: key 'name': duplicate bus name {bus.name!r}")
        _, channel, key = wire(bus)
        if channel in wires:
            raise ConfigError(f"{where}: key {key!r} expected a physical channel no other bus opens, found"
                              f" {channel}, already opened by {wires[channel]}")
        wires[channel] = f"[[bus]] #{i + 1} {bus.name!r}"
        buses.append(bus)
    bus_names = [b.name for b in buses]
    devices: list[DeviceConfig] = []
    for i, d in enumerate(_tables(source, data, "device")):
        where = _where(source, "device", i, d)
        device = parse_device(where, d, bus_names)
        if device.name in bus_names or any(x.name == device.name for x in devices):
            raise ConfigError(f"{where}: key 'name': duplicate name {device.name!r}")
        devices.append(device)
    rules = _tables(source, data, "rule")
    for i, r in enumerate(rules):
        for key, value in r.items():
            if key not in _RULE_KEYS:
                raise unknown_key(_where(source, "rule", i, r), key, _RULE_KEYS)
            _check_type(_where(source, "rule", i, r), key, value, _RULE_KEYS[key])
    uplink = parse_uplink(source, _table(source, data, "uplink"), path) if "uplink" in data else None
    workers = parse_workers(f"{source}: [site]", site.get("workers"), groups, {*bus_names, *(d.name for d in devices)})
    return Site(
        org=str(site.get("org", "")),
        name=str(site.get("name", path.stem if path else "site")),
        buses=buses,
        devices=devices,
        path=path,
        extra=extra,
        source=source,
        uplink=uplink,
        groups=groups,
        workers=workers,
        controllers=parse_controllers(source, data.get("controller")),
        cycle_period_s=parse_cycle_period(f"{source}: [site]", site.get("cycle_period")),
        rules=[dict(r) for r in rules],
    )


def parse_uplink(source: str, table: dict[str, Any], path: Path | None) -> UplinkConfig:
    """The `[uplink]` table; files (password_file, ca_file, cert_file, key_file) are relative to the site file."""
    where = f"{source}: [uplink]"
    for key, value in table.items():
        if key not in _UPLINK_KEYS:
            raise unknown_key(where, key, _UPLINK_KEYS)
        _check_type(where, key, value, _UPLINK_KEYS[key])
    url = _need(where, table, "url", str)
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"{where}: key 'url': expected mqtt://host[:port] or mqtts://host[:port], found {url!r}")
    if "password" in table and "password_file" in table:
        raise ConfigError(f"{where}: keys 'password' and 'password_file': expected one of them, found both")
    base = path.parent if path is not None else Path()

    def file(key: str) -> str | None:
        if key not in table:
            return None
        p = base / table[key]
        if not p.is_file():
            raise ConfigError(f"{where}: key {key!r}: expected a readable file, found no file at {p}")
        return str(p)

    password = table.get("password")
    secret = file("password_file")
    if secret is not None:
        try:
            password = Path(secret).read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"{where}: key 'password_file': cannot read {secret}: {e.strerror or e}") from e
    if parts.scheme == "mqtt" and any(k in table for k in ("ca_file", "cert_file", "key_file")):
        raise ConfigError(f"{where}: key 'url': expected mqtts:// with ca_file, cert_file or key_file, found {url!r}")
    return UplinkConfig(url=url, username=str(table.get("username", "")), password=password,
                        ca_file=file("ca_file"), cert_file=file("cert_file"), key_file=file("key_file"))


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
