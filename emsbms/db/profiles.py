"""The profile store: every imported version of every profile, with its DBC or EDS content.

A profile is stored as its JSON (the source file referred to by its base name) plus the text of
that file, so the edge can load it with every file gone. Each version is stored once: importing
the same name and version again is a no-op if the content is identical and an error otherwise
(bump the version). The version a device uses is the newest stored one unless it names one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from emsbms.db.schema import transaction
from emsbms.errors import ProfileError
from emsbms.profile.loader import list_shipped, load_profile, parse_profile
from emsbms.profile.models import Profile


def version_key(version: str) -> tuple[int, ...]:
    """Sortable form of a profile version ('1.10.0' sorts after '1.9.2'; '1.2' equals '1.2.0')."""
    parts = [int(p) for p in version.split(".") if p.isdigit()]
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def split_ref(ref: str) -> tuple[str, str | None]:
    """'NAME@VERSION' into (NAME, VERSION); 'NAME' into (NAME, None)."""
    name, sep, version = ref.partition("@")
    return name, (version if sep else None)


def document_of(profile: Profile) -> dict[str, Any]:
    """The JSON stored for a profile: its model, with the source file named by its base name."""
    doc = profile.model.model_dump(mode="json", by_alias=True, exclude_none=True)
    source = doc.get("source", {})
    for kind in ("dbc", "eds"):
        if kind in source:
            source[kind] = Path(source[kind]).name
    return doc


def content_hash(document: dict[str, Any], source_text: str) -> str:
    """SHA-256 over the canonical JSON and the source file's text."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256((canonical + "\0" + source_text).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class StoredProfile:
    """One stored profile version."""

    id: int
    name: str
    version: str
    protocol: str
    hash: str
    source: str
    imported_us: int
    document: dict[str, Any]
    source_kind: str | None = None
    source_name: str | None = None
    source_content: str | None = None

    def load(self) -> Profile:
        """The profile, validated, from the stored JSON and source text only (no file is read)."""
        try:
            return parse_profile(self.document, None, source_text=self.source_content)
        except ProfileError as e:
            raise ProfileError(f"stored profile {self.name} {self.version}: {e}") from e

    def summary(self) -> dict[str, Any]:
        """JSON-ready description (``profiles list --json``)."""
        return {"name": self.name, "version": self.version, "protocol": self.protocol, "hash": self.hash,
                "source": self.source, "imported_us": self.imported_us}


@dataclass(frozen=True)
class ImportResult:
    """What became of one profile in an import: ``stored`` or ``unchanged``."""

    name: str
    version: str
    status: str
    source: str
    id: int


def prepare(paths: Iterable[str | Path]) -> list[tuple[Path, Profile]]:
    """Load and validate every profile file named (directories: their *.json files) before storing any.

    Raises ProfileError naming the file and the JSON path of the first fault.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(p.glob("*.json"))
            if not found:
                raise ProfileError(f"{p}: no *.json profile files in this directory")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise ProfileError(f"{p}: no such file or directory")
    out = []
    for f in files:
        try:
            out.append((f, load_profile(f)))
        except ProfileError as e:
            raise ProfileError(f"{f}: {e}") from e
    return out


_SELECT = """
SELECT p.id, p.name, p.version, p.protocol, p.hash, p.source, p.imported_us, p.document,
       s.kind, s.name, s.content
FROM profiles p LEFT JOIN source_files s ON s.hash = p.source_file
"""


class ProfileStore:
    """Profiles kept in the edge database (see emsbms.db.schema, migration 1)."""

    def __init__(self, db: sqlite_utils.Database) -> None:
        self.db = db

    # -- reading ----------------------------------------------------------------------------

    def _rows(self, where: str = "", args: Sequence[Any] = ()) -> list[StoredProfile]:
        rows = self.db.execute(_SELECT + where, list(args)).fetchall()
        out = [
            StoredProfile(int(r[0]), r[1], r[2], r[3], r[4], r[5], int(r[6]), json.loads(r[7]), r[8], r[9], r[10])
            for r in rows
        ]
        return sorted(out, key=lambda p: (p.name, version_key(p.version)))

    def all(self) -> list[StoredProfile]:
        """Every stored version, by name then version."""
        return self._rows()

    def names(self) -> list[str]:
        return sorted({p.name for p in self._rows()})

    def versions(self, name: str) -> list[StoredProfile]:
        """The stored versions of `name`, oldest first."""
        return self._rows("WHERE p.name = ?", [name])

    def get(self, name: str, version: str | None = None) -> StoredProfile | None:
        """Version `version` of `name`, or its newest stored version; None if not stored."""
        versions = self.versions(name)
        if version is None:
            return versions[-1] if versions else None
        return next((p for p in versions if version_key(p.version) == version_key(version)), None)

    def last_id(self) -> int:
        """The id of the latest import (0 if none): it grows with every stored version."""
        row = self.db.execute("SELECT max(id) FROM profiles").fetchone()
        return int(row[0] or 0)

    def since(self, last_id: int) -> list[StoredProfile]:
        """Versions stored after import `last_id`."""
        return self._rows("WHERE p.id > ?", [last_id])

    # -- writing ----------------------------------------------------------------------------

    def add(self, items: Sequence[tuple[str, Profile]]) -> list[ImportResult]:
        """Store (source label, profile) pairs in one transaction: all of them or, on a conflict, none.

        A version already stored with the same content is ``unchanged``; with different content it
        is a ProfileError (nothing is stored): a changed profile needs a new version.
        """
        planned: dict[tuple[str, str], tuple[str, str, Profile, dict[str, Any]]] = {}
        for source, profile in items:
            doc = document_of(profile)
            digest = content_hash(doc, profile.source_text)
            key = (profile.name, profile.version)
            if key in planned and planned[key][0] != digest:
                raise ProfileError(
                    f"{source}: profile {profile.name} {profile.version} differs from {planned[key][1]},"
                    " which has the same name and version; give one of them another version"
                )
            planned.setdefault(key, (digest, source, profile, doc))
        with transaction(self.db):
            return [self._add_one(*value) for value in planned.values()]

    def _add_one(self, digest: str, source: str, profile: Profile, doc: dict[str, Any]) -> ImportResult:
        existing = self.get(profile.name, profile.version)
        if existing is not None:
            if existing.hash != digest:
                raise ProfileError(
                    f"{source}: profile {profile.name} {profile.version} is already stored (from {existing.source})"
                    " with different content; a changed profile needs a new version"
                )
            return ImportResult(profile.name, profile.version, "unchanged", existing.source, existing.id)
        source_file = None
        kind = "dbc" if profile.model.source.dbc else "eds" if profile.model.source.eds else None
        if kind is not None:
            source_file = hashlib.sha256(profile.source_text.encode("utf-8")).hexdigest()
            self.db.execute(
                "INSERT OR IGNORE INTO source_files (hash, kind, name, content) VALUES (?, ?, ?, ?)",
                [source_file, kind, doc["source"][kind], profile.source_text],
            )
        cursor = self.db.execute(
            "INSERT INTO profiles (name, version, protocol, document, hash, source, source_file, imported_us)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            [profile.name, profile.version, profile.protocol, json.dumps(doc, ensure_ascii=False), digest, source,
             source_file, time.time_ns() // 1000],
        )
        return ImportResult(profile.name, profile.version, "stored", source, int(cursor.lastrowid or 0))

    def import_paths(self, paths: Iterable[str | Path]) -> list[ImportResult]:
        """Validate every profile file (or directory of them), then store them all in one transaction."""
        return self.add([(str(path), profile) for path, profile in prepare(paths)])

    # -- resolving references ---------------------------------------------------------------

    def resolve(self, ref: str) -> Profile:
        """The profile a device reference names: NAME, NAME@VERSION, or a profile file path.

        NAME is the newest stored version, else the shipped profile; NAME@VERSION that version
        (stored, or shipped if it has that version); a path is read from disk.
        """
        name, version = split_ref(ref)
        if name.endswith(".json") or "/" in name:
            return load_profile(name)
        stored = self.get(name, version)
        if stored is not None:
            return stored.load()
        if name in list_shipped():
            shipped = load_profile(name)
            if version is None or version_key(shipped.version) == version_key(version):
                return shipped
        known = ", ".join(p.version for p in self.versions(name)) or "none stored"
        if version is not None:
            raise ProfileError(f"profile {name}: no version {version}; stored versions: {known}")
        raise ProfileError(
            f"unknown profile {name!r}: not in the database and not shipped; shipped: {', '.join(list_shipped())}"
        )


def shipped_source(name: str) -> str:
    """The import source label of a shipped profile."""
    return f"shipped:{name}"
