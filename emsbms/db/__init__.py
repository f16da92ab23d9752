"""The edge database: profile store, commissioned buses and devices, site import and export.

One SQLite file per edge, through sqlite-utils, with numbered migrations (`emsbms.db.schema`).
It is the same file as the run log of ``emsbms run``. Open it with `EdgeDb`::

    with EdgeDb("emsbms.db") as db:
        db.profiles.import_paths(["my-profiles/"])
        site = db.stored_site()          # buses and devices, profiles loaded from the store

`Edge.from_db(path)` starts an edge from it, with every profile file gone.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from emsbms.db.profiles import ImportResult, ProfileStore, StoredProfile, prepare, split_ref, version_key
from emsbms.db.schema import LATEST, MIGRATIONS, applied, connect, migrate, schema_version, transaction
from emsbms.db.sitedb import SiteStore, StoredSite, device_table, to_toml, write_toml
from emsbms.errors import ConfigError, ProfileError
from emsbms.profile.loader import list_shipped, load_profile
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.site import Site, build_adapters, load_site

log = logging.getLogger(__name__)

DEFAULT_PATH = Path("emsbms.db")


def default_path() -> Path:
    """The database path when none is given: $EMSBMS_DB, else ./emsbms.db."""
    return Path(os.environ.get("EMSBMS_DB") or DEFAULT_PATH)


@dataclass(frozen=True)
class Running:
    """What one device runs: its profile reference, and the name and version that reference gives."""

    device: str
    ref: str
    profile: str
    version: str | None  # None: the reference does not resolve

    @property
    def pinned(self) -> bool:
        return split_ref(self.ref)[1] is not None

    def text(self) -> str:
        return f"{self.profile} {self.version or '(unavailable)'}"


def changes(before: dict[str, Running], after: dict[str, Running]) -> list[str]:
    """One line per device: the version it ran and the version it runs now (or that it is unchanged)."""
    lines = []
    for name in sorted(set(before) | set(after)):
        old, new = before.get(name), after.get(name)
        if new is None:
            assert old is not None
            lines.append(f"{name}: {old.text()} -> removed")
            continue
        how = f"pinned: {new.ref}" if new.pinned else f"follows the newest {new.profile}"
        if old is None:
            lines.append(f"{name}: runs {new.text()} ({how}; new device)")
        elif old.text() == new.text():
            lines.append(f"{name}: runs {new.text()} ({how}; unchanged)")
        else:
            lines.append(f"{name}: {old.text()} -> {new.text()} ({how})")
    return lines


class EdgeDb:
    """The edge database, migrated to the latest schema when opened. A context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.db = connect(self.path)
        migrate(self.db)
        self.profiles = ProfileStore(self.db)
        self.site = SiteStore(self.db)

    @classmethod
    def existing(cls, path: str | Path) -> EdgeDb | None:
        """Open the database only if the file exists (read-only commands never create one)."""
        return cls(path) if Path(path).is_file() else None

    def close(self) -> None:
        self.db.conn.close()

    def __enter__(self) -> EdgeDb:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One write transaction: everything inside is stored, or nothing."""
        with transaction(self.db):
            yield

    # -- the stored site --------------------------------------------------------------------

    def has_devices(self) -> bool:
        return bool(self.site.devices())

    def running(self) -> dict[str, Running]:
        """What every commissioned device runs (the version its reference resolves to), by device name."""
        out = {}
        for d in self.site.devices():
            name = split_ref(d.profile)[0]
            try:
                profile = self.profiles.resolve(d.profile)
                out[d.name] = Running(d.name, d.profile, profile.name, profile.version)
            except ProfileError:
                out[d.name] = Running(d.name, d.profile, name, None)
        return out

    def stored_site(self) -> StoredSite:
        """The commissioned site, each device's profile loaded from the store (no profile file is read).

        Raises ConfigError if no device is commissioned, or a device's profile cannot be loaded.
        """
        site = self.site.to_site(f"{self.path} (database)")
        if not site.devices:
            raise ConfigError(
                f"database {self.path}: no commissioned devices; use `emsbms commission`, `emsbms scan --commission`"
                " or `emsbms site import FILE`, or give --site FILE"
            )
        profiles: dict[str, Profile] = {}
        by_ref: dict[str, Profile] = {}
        for d in site.devices:
            if d.profile not in by_ref:
                try:
                    by_ref[d.profile] = self.profiles.resolve(d.profile)
                except ProfileError as e:
                    raise ConfigError(f"{site.path or self.path}: device {d.name!r}: key 'profile': {e}") from e
            profiles[d.name] = by_ref[d.profile]
        return StoredSite(org=site.org, name=site.name, buses=site.buses, devices=site.devices,
                          path=None, extra=site.extra, profiles=profiles, source=site.source)

    def import_site(self, path: str | Path) -> tuple[Site, list[ImportResult]]:
        """Replace the stored site with a site TOML file, storing the profiles it uses.

        Everything is validated first, by the checks every site passes (`emsbms.site`: keys, types,
        python-can interfaces and options, physical channels, ID widths and collisions, J1939 NAMEs
        and addresses); then one transaction stores the profiles and the site. A refused file leaves
        the stored site as it was.

        Each device runs exactly what the file names, pinned (stored as ``NAME@VERSION``), so a later
        `profiles import` does not switch it: ``NAME`` is the shipped profile, as ``--site FILE``
        runs it (a name that is not shipped: its newest stored version), ``NAME@VERSION`` that
        version, stored or shipped, and a path that file.
        """
        site = load_site(path)
        loaded = self.site_profiles(site)
        build_adapters(site, loaded)
        items = [(_import_label(site, d.profile), loaded[d.name]) for d in site.devices]
        devices = [replace(d, profile=f"{loaded[d.name].name}@{loaded[d.name].version}") for d in site.devices]
        stored = Site(org=site.org, name=site.name, buses=site.buses, devices=devices, path=site.path,
                      extra=site.extra)
        with transaction(self.db):
            results = self.profiles.add(items) if items else []
            self.site.replace(stored)
        return stored, results

    def site_profiles(self, site: Site) -> dict[str, Profile]:
        """Every device's profile as `import_site` pins it; ConfigError naming the file, device and key."""
        out: dict[str, Profile] = {}
        for i, d in enumerate(site.devices):
            name, version = split_ref(d.profile)
            try:
                if name.endswith(".json") or "/" in name:
                    path = Path(name)
                    if site.path is not None and not path.is_absolute() and (site.path.parent / path).is_file():
                        path = site.path.parent / path
                    out[d.name] = load_profile(path)
                elif version is None and name in list_shipped():
                    out[d.name] = load_profile(name)
                else:
                    out[d.name] = self.profiles.resolve(d.profile)
            except ProfileError as e:
                raise ConfigError(f"{site.label}: [[device]] #{i + 1} {d.name!r}: key 'profile': {e}") from e
        return out

    def export_site(self, path: Path | None = None) -> str:
        """The stored site as site TOML text (written to `path` when given, validated first)."""
        tables = self.site.tables()
        header = f"emsbms site exported from {self.path}; profiles by name are in its profile store"
        if path is not None:
            write_toml(tables, path, header)
        return to_toml(tables, header)


def _import_label(site: Site, ref: str) -> str:
    name, _ = split_ref(ref)
    if name.endswith(".json") or "/" in name:
        return str(name)
    return f"shipped:{name}"


def replace_profile(device: DeviceConfig, profile: Profile) -> DeviceConfig:
    """The device referring to its profile by stored name (a path becomes the profile's name)."""
    name, version = split_ref(device.profile)
    if name.endswith(".json") or "/" in name:
        return replace(device, profile=profile.name)
    return device if version is None else replace(device, profile=f"{profile.name}@{profile.version}")


def load_stored_site(path: str | Path) -> StoredSite:
    """The commissioned site of the database at `path` (ConfigError if the file does not exist)."""
    db = EdgeDb.existing(path)
    if db is None:
        raise ConfigError(f"database {path}: no such file; commission devices first or give --site FILE")
    with db:
        return db.stored_site()


__all__ = [
    "LATEST", "MIGRATIONS", "EdgeDb", "ImportResult", "ProfileStore", "Running", "SiteStore", "StoredProfile",
    "StoredSite",
    "applied", "changes", "connect", "default_path", "device_table", "load_stored_site", "migrate", "prepare",
    "replace_profile", "schema_version", "split_ref", "to_toml", "version_key",
]
