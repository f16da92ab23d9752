"""The embedded demo site: one simulated device per shipped profile, each on its own bus.

Built generically from `list_shipped()`: every shipped profile whose adapter and simulator are
available gets one device on its own bus, with the addressing keys the profile suggests in
``options.demo_device`` (e.g. ``{"node_id": 1}``). pylon-lv gets a twin with identical IDs on
a separate bus, to show that devices are kept apart by their bus.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from emsbms.profile.loader import Profile, list_shipped, load_profile
from emsbms.sim import simulator_class
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site

log = logging.getLogger(__name__)

TWIN_PROFILE = "pylon-lv"
"""The profile shown twice, with identical IDs on two buses."""

ADDRESSING_KEYS = ("id_offset", "node_id", "source_address", "j1939_name", "nmt_master", "options")
"""Keys a profile's ``options.demo_device`` may set on its demo device."""

INT_KEYS = ("id_offset", "node_id", "source_address", "j1939_name")

MULTICAST_GROUP = "239.74.163.2"
MULTICAST_BASE_PORT = 43300


def device_name(profile_name: str) -> str:
    """The demo device name of a profile: pylon-lv -> pylon_lv."""
    return profile_name.replace("-", "_").replace(".", "_")


def available_profiles() -> list[Profile]:
    """Shipped profiles whose adapter and simulator can be loaded; the others are logged and skipped."""
    found: list[Profile] = []
    for name in list_shipped():
        try:
            profile = load_profile(name)
        except Exception as e:  # ProfileError above all, or a protocol module that does not import
            log.warning("demo: skipping profile %s: %s", name, e)
            continue
        try:
            simulator_class(profile.protocol)
        except Exception as e:  # ImportError above all; a demo shows what works and says what does not
            log.warning("demo: skipping profile %s: no simulator for protocol %s (%s)", name, profile.protocol, e)
            continue
        found.append(profile)
    return found


def _int_or_hex(value: Any) -> Any:
    """JSON has no hex literals: a profile may write "0xF3" where the site file wants 0xF3."""
    if isinstance(value, str):
        try:
            return int(value, 0)
        except ValueError:
            return value
    return value


def _addressing(profile: Profile) -> dict[str, Any]:
    wanted = profile.model.options.get("demo_device", {})
    if not isinstance(wanted, dict):
        log.warning("demo: profile %s: options.demo_device is not a table; ignored", profile.name)
        return {}
    keys = {k: _int_or_hex(v) if k in INT_KEYS else v for k, v in wanted.items() if k in ADDRESSING_KEYS}
    for k in wanted.keys() - keys.keys():
        log.warning("demo: profile %s: options.demo_device.%s is not an addressing key; ignored", profile.name, k)
    return keys


def demo_tables(profiles: list[Profile], interface: str = "virtual", tag: str | None = None,
                base_port: int = MULTICAST_BASE_PORT) -> dict[str, Any]:
    """The demo site as a site document (the tables of a site TOML file).

    `interface` "virtual" gives unique in-process channels (tagged with `tag`); "udp_multicast"
    gives one group with a port per bus, for a simulator and an edge in separate processes.
    """
    tag = tag or uuid.uuid4().hex[:8]
    entries: list[tuple[str, Profile]] = []
    for p in profiles:
        entries.append((device_name(p.name), p))
        if p.name == TWIN_PROFILE:
            entries.append((device_name(p.name) + "_2", p))
    buses: list[dict[str, Any]] = []
    devices: list[dict[str, Any]] = []
    for i, (name, profile) in enumerate(entries):
        bus: dict[str, Any] = {"name": f"can{i}", "interface": interface}
        if interface == "udp_multicast":
            bus.update(channel=MULTICAST_GROUP, port=base_port + i)
        else:
            bus["channel"] = f"emsbms-demo-{tag}-can{i}"
        buses.append(bus)
        devices.append({"name": name, "bus": bus["name"], "profile": profile.name, **_addressing(profile)})
    return {"site": {"org": "emsbms", "name": "demo"}, "bus": buses, "device": devices}


def demo_site(interface: str = "virtual", tag: str | None = None) -> Site:
    """The demo site, validated, on `interface` buses."""
    return parse_site(demo_tables(available_profiles(), interface, tag), "<demo site>")


def start_simulations(site: Site) -> tuple[list[Simulation], Site]:
    """Start a Simulation for each device of `site`. A device whose simulator fails to start is
    logged and left out: returns the running simulations and the site of the devices they serve."""
    running: list[Simulation] = []
    kept = []
    for device in site.devices:
        try:
            running.append(Simulation(replace(site, devices=[device])).start())
            kept.append(device)
        except Exception as e:
            log.warning("demo: skipping %s: its simulator did not start: %s", device.name, e)
    buses = {d.bus for d in kept}
    return running, replace(site, devices=kept, buses=[b for b in site.buses if b.name in buses])


def stop_simulations(running: list[Simulation]) -> None:
    for sim in running:
        sim.stop()


# -- writing a site file ---------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def site_toml(tables: dict[str, Any]) -> str:
    """A site document as TOML text ([site], [[bus]], [[device]])."""
    lines = ["# emsbms demo site: run `emsbms --site FILE simulate` and `emsbms --site FILE monitor`", "[site]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in tables.get("site", {}).items()]
    for kind in ("bus", "device"):
        for table in tables.get(kind, []):
            lines += ["", f"[[{kind}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_demo_site(path: str | Path, interface: str = "udp_multicast") -> Path:
    """Write the demo site as a TOML file (udp_multicast by default, so processes can share it)."""
    out = Path(path)
    tables = demo_tables(available_profiles(), interface)
    parse_site(tables, str(out))  # validate before writing
    out.write_text(site_toml(tables), encoding="utf-8")
    return out
