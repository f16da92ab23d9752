"""The embedded demo site: one simulated device per shipped profile, each on its own bus.

Built generically from `list_shipped()`: every shipped profile whose adapter and simulator are
available gets one device on its own bus, with the addressing keys the profile suggests in
``options.demo_device`` (e.g. ``{"node_id": 1}``). pylon-lv gets a twin with identical IDs on
a separate bus, to show that devices are kept apart by their bus. A `Scenario` then injects
faults and writes commands every so often, so the monitor's event log shows EMCY, DM1, comm
loss and recovery, and acked and rejected commands.

The demo site runs the EMS core too (`demo_controllers`): site-limits, limit-enforcement and
soc-balance over its two 48 V strings with a charge command (acme_lv_bytemap, cia418_bms), so the
monitor shows the virtual device `ess0` and, while the scenario's writes hold, their overrides.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from emsbms.profile.loader import list_shipped, load_profile
from emsbms.profile.models import Profile
from emsbms.sim import simulator_class
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site

log = logging.getLogger(__name__)

TWIN_PROFILE = "pylon-lv"
"""The profile shown twice, with identical IDs on two buses."""

ADDRESSING_KEYS = ("id_offset", "node_id", "source_address", "j1939_name", "nmt_master", "options")
"""Keys a profile's ``options.demo_device`` may set on its demo device."""

INT_KEYS = ("id_offset", "node_id", "source_address", "j1939_name")

DEMO_STRINGS = ("acme_lv_bytemap", "cia418_bms")  # the 48 V packs with a SetChargeCurrent (acme_hv is 300 V)
DEMO_CAPACITY_AH = {"acme_lv_bytemap": 100.0}  # its profile has no Capacity channel: the simulator's capacity
DEMO_CURRENT_A = 60.0  # the site current (charging) soc-balance splits
DEMO_OVERRIDE_S = 30.0  # how long a scenario write overrides the balancer (the default is 15 minutes)

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
                base_port: int = MULTICAST_BASE_PORT, controllers: bool = False) -> dict[str, Any]:
    """The demo site as a site document (the tables of a site TOML file); with `controllers`, the
    core's [[controller]] tables too (`demo_controllers`).

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
    tables: dict[str, Any] = {"site": {"org": "emsbms", "name": "demo"}, "bus": buses, "device": devices}
    if controllers and (tables_of := demo_controllers([d["name"] for d in devices])):
        tables["controller"] = tables_of
    return tables


def demo_controllers(devices: list[str]) -> list[dict[str, Any]]:
    """The demo's [[controller]] tables over those of `DEMO_STRINGS` among `devices`; none without a string."""
    strings = [d for d in DEMO_STRINGS if d in devices]
    if not strings:
        return []
    capacity = {d: c for d, c in DEMO_CAPACITY_AH.items() if d in strings}
    sized: dict[str, Any] = {"capacity_ah": capacity} if capacity else {}
    return [
        {"name": "site", "type": "site-limits", "strings": strings, **sized},
        {"name": "limits", "type": "limit-enforcement", "strings": strings},
        {"name": "balance", "type": "soc-balance", "strings": strings, "current_a": DEMO_CURRENT_A, **sized},
    ]


def demo_site(interface: str = "virtual", tag: str | None = None) -> Site:
    """The demo site, validated, on `interface` buses."""
    return parse_site(demo_tables(available_profiles(), interface, tag, controllers=True), "<demo site>")


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
    kept_site = replace(site, devices=kept, buses=[b for b in site.buses if b.name in buses])
    if site.controllers:  # the demo's controllers over the devices kept
        kept_site = replace(kept_site, controllers=demo_controllers([d.name for d in kept]))
    return running, kept_site


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
    """A site document as TOML text ([site], [[bus]], [[device]], [[controller]])."""
    lines = ["# emsbms demo site: run `emsbms --site FILE simulate` and `emsbms --site FILE monitor`", "[site]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in tables.get("site", {}).items()]
    for kind in ("bus", "device", "controller"):
        for table in tables.get(kind, []):
            lines += ["", f"[[{kind}]]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def write_demo_site(path: str | Path, interface: str = "udp_multicast") -> Path:
    """Write the demo site as a TOML file (udp_multicast by default, so processes can share it)."""
    out = Path(path)
    tables = demo_tables(available_profiles(), interface, controllers=True)
    parse_site(tables, str(out))  # validate before writing
    out.write_text(site_toml(tables), encoding="utf-8")
    return out


# -- the scenario: faults and commands, so the monitor's event log has a story to tell ---------


class Action(StrEnum):
    """What a scenario step does."""

    INJECT = "inject"  # turn a simulator fault on
    CLEAR = "clear"  # turn it off
    WRITE = "write"  # write a command through the edge


@dataclass(frozen=True)
class Step:
    """At `at_s` seconds into each cycle, do `action` on `device` (a fault name, or a command and its value)."""

    at_s: float
    device: str
    action: Action
    target: str
    value: float = 0.0

    def describe(self) -> str:
        if self.action is Action.WRITE:
            return f"write {self.device}/{self.target} = {self.value:g}"
        return f"{self.action.value} {self.device}:{self.target}"


SCENARIO = (
    Step(3, "cia418_bms", Action.INJECT, "emcy"),  # EMCY 0x5000, Alarm/Emcy
    Step(4, "j1939_hvess", Action.INJECT, "dtc2"),  # DM1 by BAM: two warning DTCs, amber lamp
    Step(5, "acme_hv", Action.WRITE, "SetChargeCurrent", 40),  # acked by its echo; overrides the balancer 30 s
    Step(6, "pylon_lv_2", Action.INJECT, "silent"),  # LOST after its 5 s timeout
    # above its 100 A maximum: rejected by the edge; with the core, limit-enforcement first clamps it to its CCL
    Step(8, "acme_lv_bytemap", Action.WRITE, "SetChargeCurrent", 150),
    Step(10, "j1939_hvess", Action.WRITE, "ResetFaults", 1),  # DM11: acked, DM1 clears
    Step(12, "cia418_bms", Action.CLEAR, "emcy"),  # EMCY 0x0000: cleared
    Step(15, "pylon_lv_2", Action.CLEAR, "silent"),  # recovered
    Step(17, "cia418_bms", Action.WRITE, "SetChargeCurrent", 60),  # SDO download: acked
)
"""What the demo plays, again every `SCENARIO_PERIOD_S`; steps of devices the demo lacks are skipped."""

SCENARIO_PERIOD_S = 40.0


class Scenario:
    """Plays `steps` on a background thread, again every `period_s`, until stopped.

    `write(address, value)` sends a command (the demo passes `Edge.write`, on this thread: it
    waits for the acknowledgement); `simulations` are the running simulators.
    """

    def __init__(self, write: Callable[[str, float], object], simulations: list[Simulation],
                 steps: tuple[Step, ...] = SCENARIO, period_s: float = SCENARIO_PERIOD_S) -> None:
        self._write = write
        self._sims = {name: sim for sim in simulations for name in sim.simulators}
        self.steps = tuple(s for s in steps if s.device in self._sims)
        self.period_s = period_s
        self.done: list[Step] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> Scenario:
        self._thread = threading.Thread(target=self._run, name="emsbms-demo-scenario", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def _run(self) -> None:
        started = time.monotonic()
        cycle = 0
        while self.steps:
            for step in self.steps:
                if self._stop.wait(max(0.0, started + cycle * self.period_s + step.at_s - time.monotonic())):
                    return
                self.play(step)
            cycle += 1

    def play(self, step: Step) -> None:
        """Do one step now; a failure is logged, never raised."""
        log.info("demo scenario: %s", step.describe())
        try:
            if step.action is Action.WRITE:
                self._write(f"{step.device}/{step.target}", step.value)
            elif step.action is Action.INJECT:
                self._sims[step.device].inject(step.device, step.target)
            else:
                self._sims[step.device].clear(step.device, step.target)
            self.done.append(step)
        except Exception as e:
            log.warning("demo scenario: %s failed: %s", step.describe(), e)
