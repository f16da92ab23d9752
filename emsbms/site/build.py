"""From a site to its devices: every device's profile loaded, one adapter each, colliding IDs refused."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from emsbms.errors import ConfigError, ProfileError
from emsbms.profile.loader import load_profile
from emsbms.profile.models import Profile
from emsbms.protocols import adapter_class
from emsbms.protocols.base import EXTENDED, Adapter
from emsbms.site.model import Site


def load_profiles(site: Site) -> dict[str, Profile]:
    """Load every device's profile; errors name the site file, the device and the key.

    A site read from the database (`emsbms.db.StoredSite`) brings its profiles, loaded from the store.
    """
    stored = getattr(site, "profiles", None)
    if isinstance(stored, dict):
        return {d.name: stored[d.name] for d in site.devices}
    source = str(site.path or "<site>")
    profiles: dict[str, Profile] = {}
    cache: dict[str, Profile] = {}
    for i, d in enumerate(site.devices):
        ref = d.profile
        if ref not in cache:
            path = Path(ref)
            if site.path is not None and not path.is_absolute() and (site.path.parent / path).is_file():
                ref = str(site.path.parent / path)
            try:
                cache[d.profile] = load_profile(ref)
            except ProfileError as e:
                raise ConfigError(f"{source}: [[device]] #{i + 1} {d.name!r}: key 'profile': {e}") from e
        profiles[d.name] = cache[d.profile]
    return profiles


def build_adapters(site: Site, profiles: dict[str, Profile]) -> dict[str, Adapter]:
    """One adapter per device; refuses devices whose frames collide on one bus."""
    adapters: dict[str, Adapter] = {}
    owners: dict[tuple[str, int], str] = {}
    for d in site.devices:
        profile = profiles[d.name]
        shared = site.extra.get(profile.protocol)
        if isinstance(shared, dict) and shared:  # site-wide [j1939] / [canopen] settings
            d = replace(d, options={**shared, **d.options})
        adapter = adapter_class(profile.protocol)(d, profile)
        for key in adapter.frame_keys():
            other = owners.get((d.bus, key))
            if other is not None and not (
                profile.model.allow_shared_ids and profiles[other].model.allow_shared_ids
            ):
                can_id = key & ~EXTENDED
                raise ConfigError(
                    f"{site.path or '<site>'}: [[device]] {d.name!r}: frame 0x{can_id:X} on bus"
                    f" {d.bus!r} is already used by device {other!r}; put it on another bus or"
                    f" give it an id_offset"
                )
            owners[(d.bus, key)] = d.name
        adapters[d.name] = adapter
    return adapters
