"""The configuration repository: organisation-scoped profile versions and each site's desired configuration.

A profile is validated as `emsbms profiles validate` does (`parse_profile`, its DBC/EDS text from the
request's ``files``) and stored per organisation with its version and content hash. The shipped profiles
are known to every organisation, read-only, straight from the package. A desired configuration (buses,
devices, rules) is translated into the edge's ``config`` payload (docs/uplink.md) and validated with the
edge's own site checks (`parse_site`, `build_adapters`) before it is stored as the site's next version.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from psycopg import Connection
from psycopg.types.json import Jsonb

from emsbms.db.profiles import content_hash, document_of, version_key
from emsbms.errors import EmsbmsError
from emsbms.profile.loader import list_shipped, load_profile, parse_profile
from emsbms.profile.models import Profile
from emsbms.site import build_adapters, parse_site


class ApiError(EmsbmsError):
    """A refusal the API answers with `status`, naming the offending `field`."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


def now_us() -> int:
    return time.time_ns() // 1000


@dataclass(frozen=True)
class Version:
    """One profile version the repository knows: its JSON, DBC/EDS text and hash."""

    name: str
    version: str
    hash: str
    document: dict[str, Any]
    source: str
    shipped: bool


def shipped_profiles() -> list[Version]:
    """Every shipped profile that loads (a broken one is known to nobody)."""
    out = []
    for name in list_shipped():
        try:
            p = load_profile(name)
        except EmsbmsError:
            continue
        doc = document_of(p)
        out.append(Version(p.name, p.version, content_hash(doc, p.source_text), doc, p.source_text, True))
    return out


def validate_profile(document: dict[str, Any], files: dict[str, str]) -> Profile:
    """The profile checked whole, its DBC or EDS text taken from `files` by the name `source` gives."""
    source = document.get("source") if isinstance(document.get("source"), dict) else {}
    assert isinstance(source, dict)
    text = None
    for kind in ("dbc", "eds"):
        named = source.get(kind)
        if isinstance(named, str):
            base = named.rsplit("/", 1)[-1]
            text = files.get(named, files.get(base))
            if text is None:
                raise ApiError(422, "files", f"files: expected the text of {base!r} (named by profile.source.{kind}),"
                                             f" found {sorted(files) or 'no files'}")
    try:
        return parse_profile(document, None, source_text=text)
    except EmsbmsError as e:
        raise ApiError(422, "profile", f"profile: {e}") from e


def add_profile(conn: Connection[Any], org: str, profile: Profile, shipped: list[Version]) -> Version:
    """Store a validated profile version for `org`; the same content again is the same version."""
    doc = document_of(profile)
    digest = content_hash(doc, profile.source_text)
    for s in shipped:
        if s.name == profile.name and version_key(s.version) == version_key(profile.version):
            raise ApiError(409, "profile.version", f"profile.version: {profile.name} {profile.version} is a shipped"
                                                   " profile (read-only): expected a new version")
    row = conn.execute("SELECT hash FROM profiles WHERE org_id = %s AND name = %s AND version = %s",
                       [org, profile.name, profile.version]).fetchone()
    if row is not None and row[0] != digest:
        raise ApiError(409, "profile.version", f"profile.version: {profile.name} {profile.version} is stored already"
                                               " with other content: expected a new version")
    if row is None:
        conn.execute("INSERT INTO profiles (org_id, name, version, hash, document, source, created_us)"
                     " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                     [org, profile.name, profile.version, digest, Jsonb(doc), profile.source_text, now_us()])
    return Version(profile.name, profile.version, digest, doc, profile.source_text, False)


def find_profile(conn: Connection[Any], name: str, version: str | None, shipped: list[Version]) -> Version | None:
    """The organisation's or the shipped version of `name` (the newest when `version` is None)."""
    rows = conn.execute("SELECT name, version, hash, document, source FROM profiles WHERE name = %s",
                        [name]).fetchall()
    known = [Version(r[0], r[1], r[2], r[3], r[4] or "", False) for r in rows]
    known += [s for s in shipped if s.name == name]
    if version is not None:
        known = [k for k in known if version_key(k.version) == version_key(version)]
    return max(known, key=lambda k: version_key(k.version), default=None)


_DEVICE_FIELDS = ("name", "bus", "profile", "version")


def config_payload(conn: Connection[Any], org: str, site: str, version: int, body: dict[str, Any],
                   shipped: list[Version]) -> dict[str, Any]:
    """The edge's `config` payload for a desired configuration, validated with the edge's site checks."""
    devices = []
    used: dict[str, Version] = {}
    for i, d in enumerate(body["devices"]):
        where = f"devices[{i}]"
        if not isinstance(d, dict):
            raise ApiError(422, where, f"{where}: expected an object, found {type(d).__name__}")
        name, wanted = d.get("profile"), d.get("version")
        if not isinstance(name, str) or not name:
            raise ApiError(422, f"{where}.profile", f"{where}.profile: expected a profile name, found {name!r}")
        if wanted is not None and not isinstance(wanted, str):
            raise ApiError(422, f"{where}.version", f"{where}.version: expected a version string, found {wanted!r}")
        found = find_profile(conn, name, wanted, shipped)
        if found is None:
            what = f"{name} {wanted}" if wanted else name
            raise ApiError(422, f"{where}.profile", f"{where}.profile: unknown profile {what!r}: expected one of"
                                                    f" this organisation's or the shipped profiles")
        used[f"{found.name}@{found.version}"] = found
        devices.append({k: v for k, v in d.items() if k != "version"} | {"profile": f"{found.name}@{found.version}"})
    payload = {"version": str(version), "site": {"bus": list(body["buses"]), "device": devices},
               "profiles": [{"document": v.document, "source": v.source} for v in used.values()]}
    check_payload(org, site, payload)
    return payload


def check_payload(org: str, site: str, payload: dict[str, Any]) -> None:
    """Run the edge's own checks on a `config` payload: parse_site, every profile, build_adapters."""
    label = "config"
    try:
        parsed = parse_site({**payload["site"], "site": {"org": org, "name": site}}, label)
        by_ref = {f"{p['document']['name']}@{p['document']['version']}": parse_profile(
            p["document"], None, source_text=p["source"] or None) for p in payload["profiles"]}
        build_adapters(parsed, {d.name: by_ref[d.profile] for d in parsed.devices})
    except EmsbmsError as e:
        text = str(e).replace("[[device]]", "devices").replace("[[bus]]", "buses")
        field = "devices" if "devices #" in text else "buses" if "buses #" in text else "config"
        raise ApiError(422, field, text) from e


def put_config(conn: Connection[Any], org: str, site: str, body: dict[str, Any],
               shipped: list[Version]) -> tuple[int, dict[str, Any]]:
    """Validate and store the site's next desired version; returns (version, the edge's payload)."""
    row = conn.execute("SELECT coalesce(max(version), 0) FROM site_configs WHERE site = %s", [site]).fetchone()
    version = int(row[0] if row else 0) + 1
    payload = config_payload(conn, org, site, version, body, shipped)
    now = now_us()
    conn.execute("INSERT INTO site_configs (org_id, site, version, body, created_us) VALUES (%s, %s, %s, %s, %s)",
                 [org, site, version, Jsonb(body), now])
    conn.execute("UPDATE sites SET desired_version = %s, config_status = 'pending', config_reason = NULL,"
                 " config_changed_us = %s, sync_ms = NULL WHERE site = %s", [version, now, site])
    return version, payload


def desired_body(conn: Connection[Any], site: str) -> dict[str, Any] | None:
    """The site's newest desired configuration as it was PUT, or None."""
    row = conn.execute("SELECT body FROM site_configs WHERE site = %s ORDER BY version DESC LIMIT 1",
                       [site]).fetchone()
    return None if row is None else dict(row[0])


def config_state(conn: Connection[Any], site: str) -> dict[str, Any]:
    row = conn.execute("SELECT desired_version, applied_version, config_status, config_reason, sync_ms"
                       " FROM sites WHERE site = %s", [site]).fetchone()
    assert row is not None
    return {"desired_version": row[0], "applied_version": row[1], "status": row[2], "reason": row[3],
            "sync_ms": row[4]}


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
