"""Bus groups: which buses run in which worker process (`[[bus]] group`, `[site] workers`).

`workers` is ``"auto"`` (the default), ``"off"``, ``"on"`` or a number of worker processes:

- ``"off"``: every bus in the main process, `group` keys ignored.
- ``"auto"``: the buses that name a `group` run in one worker process per group when the machine
  has more than one core; one process on one core. Without any `group`: one process. A bus's
  bitrate says what it could carry, not what it carries (most sites' BMS buses carry a few
  hundred frames/s), and a grouped edge gives up hot profile activation and `apply_site`, so
  buses are never grouped unasked.
- ``"on"``: the groups named run in worker processes whatever the cores. Without any `group`,
  the buses are grouped by what one process serves: `PROCESS_BITS` of bus bitrate at full load
  (two buses at 1 Mbit/s, four at 500 kbit/s: see docs/performance.md), so
  min(cores, ⌈bitrate / PROCESS_BITS⌉, buses) workers ``g1``, ``g2``, … (at least one) share
  the buses, heaviest first.
- N (≥ 1): the buses are spread over N worker processes the same way (at most one per bus),
  whatever the cores; not allowed together with `group` keys (those name the groups already).

A ``virtual`` bus (python-can's in-process bus, also inside a wrapping interface) is never put
in a worker: its frames exist only in the process that opened it. `group` on one is refused;
automatic grouping leaves it in the main process.

`plan_groups` is pure: the number of cores is an argument.
"""

from __future__ import annotations

import math
import re
from typing import Any

from emsbms.can.config import BusConfig
from emsbms.errors import ConfigError
from emsbms.site.interfaces import wrapped_interface

PROCESS_BITS = 2_000_000
"""Bus bitrate (at 100 % load) one process keeps up with, end to end, with no loss."""

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,31}$")

Workers = str | int


def process_local(bus: BusConfig) -> bool:
    """True for a bus only its own process can hear (python-can ``virtual``, wrapped or not)."""
    return "virtual" in (bus.interface, wrapped_interface(bus.interface, bus.options))


def parse_group(where: str, bus: dict[str, Any]) -> str | None:
    """The `group` key of one `[[bus]]` (None when absent): a plain name."""
    if "group" not in bus:
        return None
    value = bus["group"]
    if not isinstance(value, str) or not _NAME.match(value):
        raise ConfigError(f"{where}: key 'group' expected a name (a letter, then letters, digits, '_' or '-',"
                          f" at most 32), found {type(value).__name__} {value!r}")
    return value


def check_group(where: str, bus: BusConfig, group: str | None) -> None:
    """Refuse a group on a bus that cannot leave the main process."""
    if group is not None and process_local(bus):
        raise ConfigError(f"{where}: key 'group' expected no group on a {bus.interface!r} bus (its frames exist"
                          f" only in the process that opens it), found {group!r}")


def parse_workers(where: str, value: object, groups: dict[str, str], names: set[str]) -> Workers:
    """The `[site] workers` key: "auto", "off" or a positive int; checked against the groups named."""
    if value is None:
        value = "auto"
    ok = value in ("auto", "off", "on") or (isinstance(value, int) and not isinstance(value, bool) and value >= 1)
    if not ok:
        raise ConfigError(f"{where}: key 'workers' expected \"auto\", \"off\", \"on\" or an int >= 1,"
                          f" found {type(value).__name__} {value!r}")
    if isinstance(value, int) and groups:
        raise ConfigError(f"{where}: key 'workers' expected \"auto\", \"off\" or \"on\" when buses name a group"
                          f" ({', '.join(sorted(set(groups.values())))}), found {value}")
    for group in sorted(set(groups.values())):
        if group in names:
            raise ConfigError(f"{where}: group {group!r} expected a name no bus or device has, found it taken")
    assert isinstance(value, str | int)
    return value


def plan_groups(buses: list[BusConfig], groups: dict[str, str], workers: Workers,
                cores: int) -> dict[str, list[str]]:
    """Group name -> its bus names, in site order; empty: everything in one process."""
    if workers == "off" or not buses or (workers == "auto" and not groups):
        return {}
    if groups:
        if workers == "auto" and cores < 2:
            return {}
        planned: dict[str, list[str]] = {}
        for b in buses:
            if b.name in groups:
                planned.setdefault(groups[b.name], []).append(b.name)
        return planned
    buses = [b for b in buses if not process_local(b)]
    if not buses:
        return {}
    total = sum(b.bitrate for b in buses)
    if workers == "auto":
        return {}
    if workers == "on":
        count = max(1, min(cores, math.ceil(total / PROCESS_BITS), len(buses)))
    else:
        count = min(int(workers), len(buses))
    loads = [0] * count
    members: list[list[str]] = [[] for _ in range(count)]
    for b in sorted(buses, key=lambda b: -b.bitrate):
        i = loads.index(min(loads))
        loads[i] += b.bitrate
        members[i].append(b.name)
    order = {b.name: n for n, b in enumerate(buses)}
    return {f"g{i + 1}": sorted(m, key=order.__getitem__) for i, m in enumerate(members) if m}
