"""From a site to its devices: every device's profile loaded, one adapter each, and the checks that
need the profiles.

`build_adapters` is the one place the edge, `site import` and `commission` check a site's devices
against each other, on each bus:

- every ID the edge receives from a device or sends to it, with its `id_offset`, fits its frame
  (11-bit 0..0x7FF, 29-bit 0..0x1FFFFFFF);
- no ID is used by two devices. Received IDs may be shared when both profiles set
  `allow_shared_ids` (as before); IDs the edge sends may be shared that way only when neither
  frame carries a command (e.g. a keepalive): a command for one device must never reach another.
  An ID the edge sends is never one a device sends;
- no two J1939 devices have the same NAME, or the same source address;
- a device's `options` are its protocol's.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from emsbms.errors import ConfigError, ProfileError
from emsbms.profile.loader import load_profile
from emsbms.profile.models import Profile
from emsbms.protocols import adapter_class
from emsbms.protocols.base import EXTENDED, Adapter, DeviceConfig
from emsbms.site.model import MAX_ID, Site, protocol_options, unknown_key

MAX_STANDARD_ID = 0x7FF


def load_profiles(site: Site) -> dict[str, Profile]:
    """Load every device's profile; errors name the site file, the device and the key.

    A site read from the database (`emsbms.db.StoredSite`) brings its profiles, loaded from the store.
    """
    stored = getattr(site, "profiles", None)
    if isinstance(stored, dict):
        return {d.name: stored[d.name] for d in site.devices}
    profiles: dict[str, Profile] = {}
    cache: dict[str, Profile] = {}
    for i, d in enumerate(site.devices):
        ref = d.profile
        if ref not in cache:
            path = Path(ref)
            if site.path is not None and not path.is_absolute() and (site.path.parent / path).is_file():
                ref = str(site.path.parent / path)
            try:
                cache[d.profile] = _load_ref(ref)
            except ProfileError as e:
                raise ConfigError(f"{site.label}: [[device]] #{i + 1} {d.name!r}: key 'profile': {e}") from e
        profiles[d.name] = cache[d.profile]
    return profiles


def _load_ref(ref: str) -> Profile:
    """A profile file, a shipped NAME, or NAME@VERSION of a shipped profile (other versions are in a database)."""
    name, sep, version = ref.partition("@")
    profile = load_profile(name if sep and not ref.endswith(".json") else ref)
    if sep and not ref.endswith(".json") and profile.version.split(".") != version.split("."):
        raise ProfileError(f"profile {ref}: the shipped {name} is version {profile.version}; other versions are"
                           " in an edge database: `emsbms site import` this file, then run without --site")
    return profile


@dataclass(frozen=True)
class _Use:
    """One device's use of an ID on its bus."""

    device: str
    sent: bool  # the edge sends it (else the device does)
    name: str  # the message or service, for sent frames
    command: bool
    shared_ok: bool  # the device's profile sets allow_shared_ids

    def describe(self) -> str:
        if not self.sent:
            return "received"
        return f"sent: {'command ' if self.command else ''}{self.name}"

    def may_share(self, other: _Use) -> bool:
        if not (self.shared_ok and other.shared_ok) or self.sent != other.sent:
            return False
        return not (self.command or other.command)


def build_adapters(site: Site, profiles: dict[str, Profile]) -> dict[str, Adapter]:
    """One adapter per device; refuses IDs that do not fit or collide, and twin J1939 devices."""
    adapters: dict[str, Adapter] = {}
    owners: dict[tuple[str, int], _Use] = {}
    for i, d in enumerate(site.devices):
        where = f"{site.label}: [[device]] #{i + 1} {d.name!r}"
        profile = profiles[d.name]
        _check_options(where, d, profile.protocol)
        if profile.protocol == "j1939":
            _check_j1939(where, d, site.devices[:i], profiles)
        shared = site.extra.get(profile.protocol)
        if isinstance(shared, dict) and shared:  # site-wide [j1939] / [canopen] settings
            d = replace(d, options={**shared, **d.options})
        try:
            adapter = adapter_class(profile.protocol)(d, profile)
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from e
        shares = profile.model.allow_shared_ids
        uses = [(key, _Use(d.name, False, "", False, shares)) for key in adapter.frame_keys()]
        uses += [(f.key, _Use(d.name, True, f.name, f.command, shares)) for f in adapter.sent_frames()]
        key_name = "id_offset" if d.id_offset else "profile"
        for key, use in uses:
            problem = id_problem(key, d.id_offset)
            if problem is not None:
                raise ConfigError(f"{where}: key {key_name!r} expected IDs that fit their frames (11-bit"
                                  f" 0..0x7FF, 29-bit 0..0x1FFFFFFF), found {problem} ({use.describe()})")
        for key, use in uses:
            other = owners.get((d.bus, key))
            if other is not None and other.device != d.name and not use.may_share(other):
                raise ConfigError(
                    f"{where}: key {'id_offset' if d.id_offset else 'bus'!r} expected IDs no other device on"
                    f" bus {d.bus!r} uses, found frame 0x{key & ~EXTENDED:X} ({use.describe()}), already"
                    f" used by device {other.device!r} ({other.describe()}); put it on another bus or give"
                    f" it an id_offset"
                )
            owners.setdefault((d.bus, key), use)
        adapters[d.name] = adapter
    return adapters


def id_problem(key: int, offset: int) -> str | None:
    """What is wrong with the ID of a dispatch key whose ID carries `offset`, or None if it fits.

    A standard ID must be 0..0x7FF. An extended one 0..0x1FFFFFFF, and the profile's own ID
    (the ID less the offset) must not be negative: one that is was an ID that overflowed bit 29,
    which the key's extended bit hides.
    """
    if key < 0:
        return f"{_id_text(key - offset, offset)} = -0x{-key:X}"
    if not key & EXTENDED:
        return None if key <= MAX_STANDARD_ID else f"{_id_text(key - offset, offset)} = 0x{key:X} (11-bit)"
    can_id = key & ~EXTENDED
    if can_id <= MAX_ID and can_id - offset >= 0:
        return None
    raw = key if can_id - offset < 0 else can_id  # the overflowed ID: bit 29 is its own
    return f"{_id_text(raw - offset, offset)} = 0x{raw:X}"


def _id_text(base: int, offset: int) -> str:
    if not offset:
        return f"0x{base:X}"
    return f"0x{base:X} {'-' if offset < 0 else '+'} 0x{abs(offset):X}"


def _check_options(where: str, d: DeviceConfig, protocol: str) -> None:
    known = protocol_options(protocol)
    for key in d.options:
        if key not in known:
            raise unknown_key(where, f"options.{key}", [f"options.{k}" for k in known])


def _check_j1939(where: str, d: DeviceConfig, before: list[DeviceConfig], profiles: dict[str, Profile]) -> None:
    """No two J1939 devices on one bus with the same NAME, or the same source address."""
    for other in before:
        if other.bus != d.bus or profiles[other.name].protocol != "j1939":
            continue
        for key, width in (("j1939_name", 16), ("source_address", 2)):
            mine, theirs = getattr(d, key), getattr(other, key)
            if mine is not None and theirs is not None and int(str(mine), 0) == int(str(theirs), 0):
                raise ConfigError(f"{where}: key {key!r} expected one no other device on bus {d.bus!r} has,"
                                  f" found 0x{int(str(mine), 0):0{width}X}, already device {other.name!r}")
