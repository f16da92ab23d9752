"""Load a profile by shipped name or path, validate it as a whole, and resolve its source."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

import cantools
from pydantic import ValidationError

from emsbms.errors import ProfileError
from emsbms.profile.checks import check_protocol
from emsbms.profile.inline import build_database
from emsbms.profile.models import Profile, ProfileModel
from emsbms.resources import data_dir


def list_shipped() -> list[str]:
    """Names of the profiles that ship with emsbms."""
    return sorted(p.stem for p in data_dir("profiles").glob("*.json"))


def _resolve_path(name_or_path: str | Path) -> Path:
    text = str(name_or_path)
    candidate = Path(text)
    if candidate.suffix == ".json" or "/" in text or candidate.exists():
        if not candidate.is_file():
            raise ProfileError(f"profile file {text!r} not found")
        return candidate
    shipped = data_dir("profiles") / f"{text}.json"
    if not shipped.is_file():
        raise ProfileError(
            f"unknown profile {text!r}: expected a shipped profile name or a path to a .json file;"
            f" shipped: {', '.join(list_shipped())}"
        )
    return shipped


def _locate(kind: str, ref: str, profile_path: Path | None) -> Path:
    ref_path = Path(ref)
    candidates = [ref_path] if ref_path.is_absolute() else []
    if profile_path is not None and not ref_path.is_absolute():
        candidates.append(profile_path.parent / ref_path)
        candidates.append(profile_path.parent.parent / kind / ref_path)
    candidates.append(data_dir(kind) / ref_path.name)
    for c in candidates:
        if c.is_file():
            return c
    raise ProfileError(f"source.{kind} {ref!r} not found; looked in {', '.join(map(str, candidates))}")


def _materialize(kind: str, text: str) -> Path:
    """A file holding `text` (named by its SHA-256), for libraries that parse only files."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    folder = Path(tempfile.gettempdir()) / "emsbms-sources"
    target = folder / f"{digest}.{kind}"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}"
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    return target


def _format_pydantic(name: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        found = e.get("input")
        found_text = "" if isinstance(found, dict | list) else f"; found {found!r}"
        parts.append(f"{loc}: {e['msg']}{found_text}")
    return f"profile {name}: " + "; ".join(parts)


def parse_profile(data: dict[str, Any], path: Path | None = None, source_text: str | None = None) -> Profile:
    """Validate a profile document and resolve its source; raises ProfileError on any fault.

    `source_text` is the content of the DBC or EDS file the profile names (a profile kept in the
    database): then no file is looked up. An EDS is parsed from a file, so its text is written
    once to a content-addressed file under the temporary directory (`source_path`).
    """
    label = str(data.get("name", path or "?")) if isinstance(data, dict) else str(path)
    try:
        model = ProfileModel.model_validate(data)
    except ValidationError as e:
        raise ProfileError(_format_pydantic(label, e)) from e
    db = None
    source_path = None
    text = ""
    try:
        if model.source.dbc is not None:
            if source_text is None:
                source_path = _locate("dbc", model.source.dbc, path)
            text = source_path.read_text(encoding="utf-8") if source_path is not None else str(source_text)
            db = cantools.database.load_string(text, database_format="dbc", strict=True)
        elif model.source.messages is not None:
            db = build_database(list(model.source.messages))
        elif model.source.eds is not None:
            if source_text is None:
                source_path = _locate("eds", model.source.eds, path)
                text = source_path.read_text(encoding="utf-8")
            else:
                text, source_path = source_text, _materialize("eds", source_text)
    except ProfileError as e:
        raise ProfileError(f"profile {model.name}: {e}") from e
    except Exception as e:  # cantools raises many types for a bad DBC or layout
        raise ProfileError(f"profile {model.name}: source: {e}") from e
    profile = Profile(model=model, path=path, db=db, source_path=source_path, source_text=text)
    check_protocol(profile)
    return profile


def load_profile(name_or_path: str | Path) -> Profile:
    """Load a shipped profile by name, or a profile file by path."""
    path = _resolve_path(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ProfileError(f"profile {path}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path}: expected a JSON object, found {type(data).__name__}")
    return parse_profile(data, path)


def profile_json_schema() -> dict[str, Any]:
    """The JSON Schema of the profile format, generated from the models."""
    return ProfileModel.model_json_schema(by_alias=True)
