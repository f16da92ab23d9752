"""Configuration from the cloud as desired state: validated whole, stored, applied hot, all or nothing.

The transport hands `ConfigHandler.handle` the raw payload of the retained ``ems/{org}/{site}/config``
and publishes what it returns on ``config/status``. A payload (see docs/uplink.md)::

    {"version": "7",
     "site": {"bus": [...], "device": [...]},           # site-file tables ([site] is the edge's own)
     "profiles": [{"document": {...}, "source": "VERSION \\"\\" ..."}]}   # profile JSON + DBC/EDS text

Order: the payload is parsed; a version already applied answers ``applied`` again and changes
nothing; the profiles are validated, the site is validated with the site file's own checks
(`parse_site`, `build_adapters`: keys, types, interfaces, ID collisions, J1939 NAMEs); then one
database transaction stores the profiles, the site (pinned ``NAME@VERSION``) and the applied
version while `Edge.apply_site` moves the running edge there: devices added, removed or switched,
buses added, removed or restarted (only those). Any failure puts the edge back and rolls the
transaction back: the running configuration and the database stay as they were. `[site]` and
`[uplink]` stay the edge's own (the cloud's configuration carries no credentials).
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from emsbms.alarms.applied import RULES_SCHEMA
from emsbms.alarms.rules import Rule, parse_rules
from emsbms.db import EdgeDb, split_ref, version_key
from emsbms.edge.edge import Edge
from emsbms.edge.reconfig import SiteChange
from emsbms.errors import ConfigError, EmsbmsError
from emsbms.profile.loader import parse_profile
from emsbms.profile.models import Profile
from emsbms.site import Site, build_adapters, parse_site

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uplink_config (
    key TEXT PRIMARY KEY CHECK (key = 'applied'),
    version TEXT NOT NULL,
    hash TEXT NOT NULL,
    applied_us INTEGER NOT NULL
)
"""


class ConfigStatus(StrEnum):
    APPLIED = "applied"
    FAILED = "failed"


@dataclass(frozen=True)
class Status:
    """The body of one `config/status` message."""

    version: str | None
    status: ConfigStatus
    detail: str
    switched: tuple[str, ...] = ()

    def to_json(self) -> bytes:
        body = {"version": self.version, "status": self.status.value, "detail": self.detail,
                "switched": list(self.switched)}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


@dataclass(frozen=True)
class Desired:
    """A parsed, validated desired configuration."""

    version: str
    hash: str
    site: Site
    profiles: dict[str, Profile]  # by device name
    rules: list[dict[str, Any]] | None = None  # the alarm rules (None: the key is absent, the rules stay)
    parsed_rules: list[Rule] | None = None


def payload_hash(data: dict[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def parse_payload(payload: bytes) -> tuple[str, dict[str, Any]]:
    """(version, document) of a config payload; ConfigError naming the key, expected and found."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"config: expected a JSON object, found text that is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a JSON object, found {type(data).__name__}")
    version = data.get("version")
    if not isinstance(version, str) or not version:
        found = "nothing" if "version" not in data else repr(version)
        raise ConfigError(f"config: key 'version': expected a non-empty string, found {found}")
    unknown = sorted(set(data) - {"version", "site", "profiles", "rules"})
    if unknown:
        raise ConfigError(f"config {version}: unknown key {unknown[0]!r}; known: version, site, profiles, rules")
    if not isinstance(data.get("site"), dict):
        raise ConfigError(f"config {version}: key 'site': expected an object of site-file tables"
                          f" (bus, device), found {type(data.get('site')).__name__}")
    if not isinstance(data.get("profiles", []), list):
        raise ConfigError(f"config {version}: key 'profiles': expected a list,"
                          f" found {type(data.get('profiles')).__name__}")
    return version, data


def parse_profiles(version: str, items: list[Any]) -> list[Profile]:
    """Every profile of the payload, validated (the DBC/EDS text from its ``source``)."""
    out = []
    for i, item in enumerate(items):
        where = f"config {version}: profiles[{i}]"
        if not isinstance(item, dict) or not isinstance(item.get("document"), dict):
            raise ConfigError(f"{where}: expected an object with key 'document' (the profile JSON), found {item!r:.60}")
        source = item.get("source")
        if source is not None and not isinstance(source, str):
            raise ConfigError(f"{where}: key 'source': expected the DBC/EDS text, found {type(source).__name__}")
        try:
            out.append(parse_profile(item["document"], None, source_text=source))
        except EmsbmsError as e:
            raise ConfigError(f"{where}: {e}") from e
    return out


def desired(payload: bytes, running: Site, db: EdgeDb) -> Desired:
    """Parse and validate the whole desired configuration (nothing is applied or stored)."""
    version, data = parse_payload(payload)
    given = parse_profiles(version, list(data.get("profiles", [])))
    label = f"config {version}"
    tables = dict(data["site"])
    site_table = tables.get("site", {})
    if site_table and site_table != {"org": running.org, "name": running.name}:
        raise ConfigError(f"{label}: [site]: expected org {running.org!r} and name {running.name!r} (this edge),"
                          f" found {site_table!r}")
    tables["site"] = {"org": running.org, "name": running.name}
    site = parse_site(tables, label)
    profiles: dict[str, Profile] = {}
    for i, d in enumerate(site.devices):
        name, wanted = split_ref(d.profile)
        matches = [p for p in given
                   if p.name == name and (wanted is None or version_key(p.version) == version_key(wanted))]
        try:
            if matches:
                profiles[d.name] = max(matches, key=lambda p: version_key(p.version))
            else:
                profiles[d.name] = db.profiles.resolve(d.profile)
        except EmsbmsError as e:
            raise ConfigError(f"{label}: [[device]] #{i + 1} {d.name!r}: key 'profile': {e}") from e
    build_adapters(site, profiles)  # the site's own checks: IDs, widths, collisions, J1939
    raw_rules = data.get("rules")
    rules = None
    if raw_rules is not None:
        try:
            rules = parse_rules(raw_rules)
        except ConfigError as e:
            raise ConfigError(f"{label}: key 'rules': {e}") from e
    return Desired(version, payload_hash(data), site, profiles, raw_rules, rules)


class ConfigHandler:
    """``handle(payload, now_us) -> bytes``: the `config/status` to publish for one `config` message."""

    def __init__(self, edge: Edge, db_path: str | Path) -> None:
        self.edge = edge
        self.db_path = Path(db_path)
        self.activations = 0  # devices switched, added or removed by this handler (a repeated version adds none)
        self.structural_changes = 0  # applied versions that added or removed channels or buses (a new birth)
        self.on_rules: Callable[[list[Rule]], None] | None = None  # the alarm runner's `replace_rules`
        with EdgeDb(self.db_path) as db:
            db.db.execute(_SCHEMA)
            db.db.execute(RULES_SCHEMA)

    def applied(self) -> tuple[str, str] | None:
        """(version, hash) of the configuration applied last, or None."""
        return applied_version(self.db_path)

    def handle(self, payload: bytes, now_us: int) -> bytes:
        try:
            return self._handle(payload, now_us).to_json()
        except EmsbmsError as e:
            version = _version_of(payload)
            return Status(version, ConfigStatus.FAILED, f"{e}; the running configuration stays").to_json()

    def _handle(self, payload: bytes, now_us: int) -> Status:
        version, data = parse_payload(payload)
        applied = self.applied()
        if applied is not None and applied[0] == version:
            if applied[1] != payload_hash(data):
                raise ConfigError(f"config {version}: version {version} is applied already with other content;"
                                  " a changed configuration needs a new version")
            return Status(version, ConfigStatus.APPLIED, f"version {version} is applied already; nothing changed")
        with EdgeDb(self.db_path) as db:
            want = desired(payload, self.edge.site, db)
            return self._apply(db, want, now_us)

    def _apply(self, db: EdgeDb, want: Desired, now_us: int) -> Status:
        running = self.edge.site
        target = replace(want.site, org=running.org, name=running.name, uplink=running.uplink, path=running.path)
        before = (running, dict(self.edge.profiles))
        pinned = [replace(d, profile=f"{want.profiles[d.name].name}@{want.profiles[d.name].version}")
                  for d in want.site.devices]
        stored = Site(org=running.org, name=running.name, buses=want.site.buses, devices=pinned,
                      extra=want.site.extra, source=want.site.source)
        change: SiteChange | None = None
        try:
            with db.transaction():
                unique = {id(p): p for p in want.profiles.values()}.values()
                db.profiles.add([(f"config {want.version}", p) for p in unique])
                db.site.replace(stored)
                db.db.execute("INSERT OR REPLACE INTO uplink_config (key, version, hash, applied_us)"
                              " VALUES ('applied', ?, ?, ?)", [want.version, want.hash, now_us])
                if want.rules is not None:
                    db.db.execute("INSERT OR REPLACE INTO alarm_rules (key, version, rules) VALUES ('applied', ?, ?)",
                                  [want.version, json.dumps(want.rules)])
                try:
                    change = self.edge.apply_site(target, want.profiles)  # goes back itself if it fails
                except EmsbmsError as e:
                    raise ConfigError(f"config {want.version}: {e}") from e
        except BaseException:
            if change is not None:  # applied, then the commit failed: the edge goes back too
                self.edge.apply_site(*before)
            raise
        if want.parsed_rules is not None and self.on_rules is not None:
            self.on_rules(want.parsed_rules)
        self.activations += len(change.switched) + len(change.added) + len(change.removed) + len(change.fresh)
        self.structural_changes += int(change.structural)
        return Status(want.version, ConfigStatus.APPLIED, _detail(want, change), change.switched)


def _detail(want: Desired, change: SiteChange) -> str:
    parts = [f"{n} -> {want.profiles[n].name} {want.profiles[n].version}" for n in change.switched]
    parts += [f"bus {b} added" for b in change.added_buses]
    parts += [f"bus {b} removed" for b in change.removed_buses]
    parts += [f"bus {b} restarted" for b in change.restarted_buses]
    parts += [f"{n} removed" for n in change.removed]
    parts += [f"{n} added ({want.profiles[n].name} {want.profiles[n].version})" for n in change.added]
    parts += [f"{n} on {want.profiles[n].name} {want.profiles[n].version} (bus {d.bus})"
              for n in change.fresh for d in want.site.devices if d.name == n]
    if want.rules is not None:
        parts.append(f"{len(want.rules)} alarm rule{'s' if len(want.rules) != 1 else ''}")
    if not parts:
        return f"version {want.version} applied: every device runs its profile already"
    return f"version {want.version} applied: " + ", ".join(parts)


def applied_version(db_path: str | Path) -> tuple[str, str] | None:
    """(version, hash) of the last configuration applied from the cloud, or None (read only)."""
    if not Path(db_path).is_file():
        return None
    with closing(sqlite3.connect(db_path)) as conn:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'uplink_config'")
        if found.fetchone() is None:
            return None
        row = conn.execute("SELECT version, hash FROM uplink_config WHERE key = 'applied'").fetchone()
    return None if row is None else (str(row[0]), str(row[1]))


def _version_of(payload: bytes) -> str | None:
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    version = data.get("version") if isinstance(data, dict) else None
    return version if isinstance(version, str) else None
