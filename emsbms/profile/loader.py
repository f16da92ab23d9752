"""Load a profile by shipped name or path, validate it as a whole, and resolve its source."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import tempfile
import threading
from pathlib import Path
from typing import Any

import cantools
import textparser
from cantools.database.errors import Error as CantoolsError
from cantools.database.errors import UnsupportedDatabaseFormatError
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


def _roots(kind: str, profile_path: Path | None) -> list[Path]:
    """The folders a profile's `source.<kind>` may name a file in, most specific first."""
    roots = [profile_path.parent, profile_path.parent.parent / kind] if profile_path is not None else []
    roots.append(data_dir(kind))
    return roots


def _locate(kind: str, ref: str, profile_path: Path | None) -> Path:
    """The file `source.<kind>` names, inside the profile's folder, its sibling `<kind>/` or the shipped data.

    A reference that leaves them (an absolute path elsewhere, `..`, a symbolic link pointing out)
    is refused, whether or not the file exists.
    """
    roots = _roots(kind, profile_path)
    real_roots = [r.resolve() for r in roots]
    ref_path = Path(ref)
    candidates = [r / ref_path for r in roots]
    if ref_path.name != ref:  # the shipped file of the same name, e.g. for a profile kept elsewhere
        candidates.append(roots[-1] / ref_path.name)
    looked = []
    for c in dict.fromkeys(candidates):
        real = c.resolve()
        inside = any(real.is_relative_to(r) for r in real_roots)
        if inside:
            looked.append(c)
        if c.is_file():
            if not inside:
                break
            return c
    else:
        if looked:
            raise ProfileError(f"source.{kind} {ref!r} not found; looked in {', '.join(map(str, looked))}")
    raise ProfileError(
        f"source.{kind} {ref!r}: expected a file inside {', '.join(map(str, real_roots))};"
        f" found a path outside them ({real})"
    )


def _materialize(kind: str, text: str) -> Path:
    """A file holding `text` (named by its SHA-256), for libraries that parse only files.

    A file already there is used only if its content still hashes to its name; otherwise it is
    written again (another process, or a hand, may have changed it).
    """
    data = text.encode("utf-8")
    digest = hashlib.sha256(data).hexdigest()
    folder = Path(tempfile.gettempdir()) / "emsbms-sources"
    target = folder / f"{digest}.{kind}"
    if not _holds(target, digest):
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}"
        partial.write_bytes(data)
        os.replace(partial, target)
    return target


def _holds(path: Path, digest: str) -> bool:
    """Whether `path` is a regular file (not a link) whose content has the SHA-256 `digest`."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest() == digest
    except OSError:
        return False


def _shown(found: object) -> str:
    """A found value as the profile's author wrote it: NaN and Infinity as in JSON, huge integers cut."""
    if isinstance(found, float) and not math.isfinite(found):
        return "NaN" if math.isnan(found) else ("Infinity" if found > 0 else "-Infinity")
    if isinstance(found, int) and not isinstance(found, bool) and abs(found) >= 10**20:
        return f"an integer of {found.bit_length()} bits (about 10**{int(found.bit_length() * 0.30103)})"
    return repr(found)


def _format_pydantic(name: str, err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"]) or "(root)"
        found = e.get("input")
        found_text = "" if isinstance(found, dict | list) else f"; found {_shown(found)}"
        parts.append(f"{loc}: {e['msg']}{found_text}")
    return f"profile {name}: " + "; ".join(parts)


_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


def source_error(kind: str, e: Exception) -> str:
    """Why a DBC did not load, without the file's content.

    cantools quotes the offending line of a syntax error ('Invalid syntax at line 1, column 17:
    "<the line>"'): only its position is kept. Its own checks (overlapping signals ...) are kept
    whole; any other error keeps its text with quoted parts left out.
    """
    inner = getattr(e, "e_dbc", None) or e
    what = f"source.{kind}: not a valid {kind.upper()} file"
    if isinstance(inner, textparser.ParseError):
        return f"{what}: invalid syntax at line {inner.line}, column {inner.column}"
    if isinstance(inner, CantoolsError) and not isinstance(inner, UnsupportedDatabaseFormatError):
        return f"source.{kind}: {inner}"
    return f"{what}: {type(inner).__name__}: {_QUOTED.sub('...', str(inner))}"


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
            try:
                db = cantools.database.load_string(text, database_format="dbc", strict=True)
            except Exception as e:  # cantools raises many types for a bad DBC
                raise ProfileError(source_error("dbc", e)) from e
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
