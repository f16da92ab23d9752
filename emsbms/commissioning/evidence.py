"""Identity evidence: what a device says about itself, and how it moves a scan candidate's confidence.

Three kinds of evidence, one per discovery method:

- passive (DBC profiles): a manufacturer string the device sends, e.g. 0x35E "PYLON   ". A DBC
  profile states it as ``options.identity = {"message": "<name>", "manufacturer": ["PYLON", ...]}``;
  the last payload heard of that message is read as ASCII (trailing spaces and NULs dropped) and
  matches when it starts with one of the names (case-insensitive). It moves the message score:
  ``c + (1 - c) * 0.5`` when it matches, ``c * 0.7`` when it names another manufacturer, unchanged
  when the profile states none, the message was not heard, or its bytes are not text.
- canopen: the device profile number (low 16 bits of 0x1000, 418 for a CiA 418 battery) is the
  device's kind; the 0x1018 fields (vendor, product, revision, serial) are its maker and model.
- j1939: the NAME's function (with its industry group) is the kind; manufacturer code and the
  other NAME fields the maker and model.

For canopen and j1939, `device_confidence` turns the comparison of each field the profile states
into a confidence (the table is in docs/commissioning.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emsbms.profile.models import Profile

IDENTITY_MATCH_WEIGHT = 0.5
"""A matching manufacturer string closes this share of the gap to 1."""

IDENTITY_MISMATCH_FACTOR = 0.7
"""A manufacturer string naming another maker multiplies the message score by this."""

KIND_ONLY = 0.6
"""canopen/j1939: the device kind matches and the maker fields could not be read (or none is stated)."""

OTHER_MAKER = 0.4
"""canopen/j1939: the device kind matches, a maker or model field differs."""


class Evidence(StrEnum):
    """How one piece of identity compares with what the profile states."""

    MATCH = "match"
    MISMATCH = "mismatch"
    UNKNOWN = "unknown"  # stated by the profile, not told by the device
    NONE = "none"  # not stated by the profile


@dataclass(frozen=True)
class Clue:
    """One piece of identity evidence and its text for the scan output."""

    evidence: Evidence
    text: str = ""

    def apply(self, score: float) -> float:
        """The confidence after this clue, from a message score."""
        if self.evidence is Evidence.MATCH:
            return score + (1.0 - score) * IDENTITY_MATCH_WEIGHT
        if self.evidence is Evidence.MISMATCH:
            return score * IDENTITY_MISMATCH_FACTOR
        return score

    def describe(self, score: float) -> str:
        """'0x35E "PYLON" matches PYLON/PYTES: 0.67 -> 0.83' (empty when there is no evidence)."""
        if self.evidence in (Evidence.MATCH, Evidence.MISMATCH):
            return f"{self.text}: {score:.2f} -> {self.apply(score):.2f}"
        return self.text


NO_CLUE = Clue(Evidence.NONE)


class ManufacturerSpec(BaseModel):
    """``options.identity`` of a DBC profile: the message carrying the maker's name, and the names it may say."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str
    manufacturer: list[str] = Field(min_length=1)


def manufacturer_spec(profile: Profile) -> ManufacturerSpec | None:
    """The profile's manufacturer identity, or None; raises ValueError naming the key, expected and found."""
    raw = profile.model.options.get("identity")
    if raw is None:
        return None
    where = f"profile {profile.name}: options.identity"
    try:
        spec = ManufacturerSpec.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        path = ".".join(str(p) for p in first["loc"])
        raise ValueError(f"{where}{'.' + path if path else ''}: {first['msg']};"
                         f" expected {{\"message\": NAME, \"manufacturer\": [TEXT, ...]}}, found {raw!r}") from None
    names = [m.name for m in profile.db.messages] if profile.db is not None else []
    if spec.message not in names:
        raise ValueError(f"{where}.message: expected one of the profile's messages ({', '.join(names)});"
                         f" found {spec.message!r}")
    return spec


def manufacturer_text(data: bytes) -> str | None:
    """The ASCII text of a payload without trailing spaces and NULs (None if empty or not printable)."""
    text = data.rstrip(b"\x00 ")
    if not text or any(b < 0x20 or b > 0x7E for b in text):
        return None
    return text.decode("ascii")


def manufacturer_clue(spec: ManufacturerSpec, can_id: int, data: bytes | None) -> Clue:
    """Compare the payload heard of the identity message (None: not heard) with the names stated."""
    names = "/".join(spec.manufacturer)
    where = f"0x{can_id:X}"
    if data is None:
        return Clue(Evidence.UNKNOWN, f"{where} not heard: no identity")
    text = manufacturer_text(data)
    if text is None:
        return Clue(Evidence.UNKNOWN, f"{where} {data.hex(' ')} is no text: no identity")
    if any(text.upper().startswith(n.upper()) for n in spec.manufacturer):
        return Clue(Evidence.MATCH, f"{where} {text!r} matches {names}")
    return Clue(Evidence.MISMATCH, f"{where} {text!r} is not {names}")


def compare(stated: dict[str, Any], found: dict[str, Any]) -> dict[str, Evidence]:
    """Each stated field against what the device told (a missing or None value is UNKNOWN)."""
    out = {}
    for key, want in stated.items():
        got = found.get(key)
        out[key] = Evidence.UNKNOWN if got is None else Evidence.MATCH if got == want else Evidence.MISMATCH
    return out


def device_confidence(kind: Sequence[str], fields: dict[str, Evidence], full: float = 1.0) -> float | None:
    """The confidence that a canopen or j1939 device is the profile's, from its stated fields compared.

    `kind`: the fields naming the kind of device (canopen: device_profile; j1939: function,
    industry_group); `full`: the confidence when every stated field matches and there are two or
    more. None: not this profile's device.
    """
    stated = {k: e for k, e in fields.items() if e is not Evidence.NONE}
    if not stated or Evidence.MATCH not in stated.values():
        return None
    kinds = [stated[k] for k in kind if k in stated]
    kind_ok = bool(kinds) and all(e is Evidence.MATCH for e in kinds)
    if any(e is Evidence.MISMATCH for e in kinds):
        return None  # another kind of device
    if all(e is Evidence.MATCH for e in stated.values()):
        return full if len(stated) >= 2 else KIND_ONLY
    if not kind_ok:
        return None  # no kind stated or told, and the maker fields do not all match: nothing to go on
    if any(e is Evidence.MISMATCH for e in stated.values()):
        return OTHER_MAKER
    return KIND_ONLY


def describe_fields(fields: dict[str, Evidence], stated: dict[str, Any], found: dict[str, Any],
                    show: dict[str, str] | None = None) -> str:
    """'device_profile 418 matches, vendor_id 0x1 is not 0x454D5342' for the scan output."""
    show = show or {}
    parts = []
    for key, e in fields.items():
        fmt = show.get(key, "{}")
        want = fmt.format(stated[key])
        if e is Evidence.MATCH:
            parts.append(f"{key} {want} matches")
        elif e is Evidence.MISMATCH:
            parts.append(f"{key} {fmt.format(found[key])} is not {want}")
        elif e is Evidence.UNKNOWN:
            parts.append(f"{key} unknown (profile: {want})")
    return ", ".join(parts)
