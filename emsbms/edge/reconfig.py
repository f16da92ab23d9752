"""What changes when a running edge moves to another site: a plan, computed without I/O.

`plan_change` compares the running site and profiles with the wanted ones and says which buses are
added, removed or restarted, and which devices are added, removed or switched in place on a bus
that keeps running. `Edge.apply_site` carries the plan out.

- A bus whose settings (interface, channel, bitrate, options) change is restarted: a new runner
  and dispatcher, every device on it on a fresh adapter. Only that bus stops.
- A device whose settings other than its profile change (bus, id_offset, node_id, ...) is
  removed and added again.
- A J1939 device added to or removed from a running bus restarts that bus: the devices of a bus
  share one J1939 ECU (`protocols/j1939_stack.py`), which takes no device once it has started.
- A device that only changes profile content is switched in place (`Edge.activate_profile`'s
  way); to or from j1939 in place is refused, as there.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from emsbms.db.profiles import content_hash, document_of
from emsbms.errors import UnsupportedError
from emsbms.profile.models import Profile
from emsbms.site import Site


@dataclass(frozen=True)
class SiteChange:
    """One step from the running site to the wanted one."""

    added_buses: tuple[str, ...] = ()
    removed_buses: tuple[str, ...] = ()
    restarted_buses: tuple[str, ...] = ()  # kept buses that restart (settings changed, or a j1939 device)
    added: tuple[str, ...] = ()  # devices added to a bus that keeps running
    removed: tuple[str, ...] = ()  # devices taken off a bus that keeps running, or off a bus that goes
    switched: tuple[str, ...] = ()  # devices on other profile content, switched in place
    fresh: tuple[str, ...] = ()  # devices on added or restarted buses (each on a fresh adapter)

    @property
    def empty(self) -> bool:
        return not (self.added_buses or self.removed_buses or self.restarted_buses or self.added
                    or self.removed or self.switched)

    @property
    def structural(self) -> bool:
        """True if channels, buses or a device's profile version change (a new birth must list them)."""
        return bool(self.added_buses or self.removed_buses or self.restarted_buses or self.added or self.removed
                    or self.switched)


def identity(profile: Profile) -> str:
    """The content hash of a profile: two profiles with it decode alike."""
    return content_hash(document_of(profile), profile.source_text)


def plan_change(running: Site, profiles: dict[str, Profile], want: Site,
                want_profiles: dict[str, Profile]) -> SiteChange:
    """The buses and devices that change from `running` to `want` (UnsupportedError for a j1939 switch in place)."""
    old_buses = {b.name: b for b in running.buses}
    new_buses = {b.name: b for b in want.buses}
    added_buses = [n for n in new_buses if n not in old_buses]
    removed_buses = [n for n in old_buses if n not in new_buses]
    restart = {n for n in new_buses if n in old_buses and new_buses[n] != old_buses[n]}
    if running.extra != want.extra:  # site-wide [j1939] / [canopen] settings: every bus using them restarts
        restart |= {d.bus for d in want.devices if want_profiles[d.name].protocol in want.extra} & set(old_buses)
        restart |= {d.bus for d in running.devices if profiles[d.name].protocol in running.extra} & set(new_buses)
    old_devices = {d.name: d for d in running.devices}
    new_devices = {d.name: d for d in want.devices}
    gone = [n for n in old_devices
            if n not in new_devices or replace(old_devices[n], profile="") != replace(new_devices[n], profile="")]
    come = [n for n in new_devices if n not in old_devices or n in gone]
    for n in gone:
        if profiles[n].protocol == "j1939" and old_devices[n].bus in new_buses:
            restart.add(old_devices[n].bus)
    for n in come:
        if want_profiles[n].protocol == "j1939" and new_devices[n].bus in old_buses:
            restart.add(new_devices[n].bus)
    running_on = set(old_buses) - restart - set(removed_buses)  # buses that keep their dispatcher
    switched = []
    for n, d in new_devices.items():
        if n not in old_devices or n in gone or d.bus not in running_on:
            continue
        if identity(want_profiles[n]) == identity(profiles[n]):
            continue
        old_p, new_p = profiles[n], want_profiles[n]
        if old_p.protocol != new_p.protocol and "j1939" in (old_p.protocol, new_p.protocol):
            raise UnsupportedError(f"device {n}: cannot switch from protocol {old_p.protocol} to {new_p.protocol}"
                                   f" ({new_p.name} {new_p.version}) in place: a j1939 device shares its"
                                   " bus's J1939 ECU; remove the device and add it under another name")
        switched.append(n)
    return SiteChange(
        added_buses=tuple(added_buses),
        removed_buses=tuple(removed_buses),
        restarted_buses=tuple(sorted(restart)),
        added=tuple(n for n in come if new_devices[n].bus in running_on),
        removed=tuple(n for n in gone if old_devices[n].bus in running_on or old_devices[n].bus not in new_buses),
        switched=tuple(sorted(switched)),
        fresh=tuple(n for n, d in new_devices.items() if d.bus not in running_on),
    )
