"""The differences between two profile versions: channels, commands, alarms, messages, settings.

Each section is compared entry by entry (a channel, a command, a message, ...): an entry is
added, removed, or changed, and a change lists each field that differs (``scale 1 -> 0.1``).
Messages are compared as the source defines them (ID, length, signal layout and scaling) and
with the profile's own settings for them (period, timeout, min_dlc).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from emsbms.profile.models import Profile

SECTIONS = ("profile", "channels", "alarms", "commands", "messages", "transmit")


@dataclass(frozen=True)
class Change:
    """One entry added, removed or changed between two versions."""

    section: str
    name: str
    kind: str  # "added", "removed", "changed"
    fields: tuple[tuple[str, Any, Any], ...] = ()

    def text(self) -> str:
        sign = {"added": "+", "removed": "-", "changed": "~"}[self.kind]
        line = f"{sign} {self.section}.{self.name}"
        if self.fields:
            line += ": " + ", ".join(f"{f} {_show(a)} -> {_show(b)}" for f, a, b in self.fields)
        return line

    def as_dict(self) -> dict[str, Any]:
        return {"section": self.section, "name": self.name, "kind": self.kind,
                "fields": [{"field": f, "old": a, "new": b} for f, a, b in self.fields]}


def _show(value: Any) -> str:
    if value is None:
        return "(none)"
    return json.dumps(value, ensure_ascii=False) if isinstance(value, str) else str(value)


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys; lists as JSON text (compared as a whole)."""
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(value, list):
        return {prefix: json.dumps(value, sort_keys=True, ensure_ascii=False)}
    return {prefix: value}


def _message(msg: Any) -> dict[str, Any]:
    signals = {
        s.name: {"start": s.start, "length": s.length, "byte_order": s.byte_order, "signed": s.is_signed,
                 "scale": s.scale, "offset": s.offset, "unit": s.unit or ""}
        for s in msg.signals
    }
    return {"id": f"0x{msg.frame_id:X}", "extended": msg.is_extended_frame, "dlc": msg.length, "signals": signals}


def view(profile: Profile) -> dict[str, dict[str, dict[str, Any]]]:
    """A profile as comparable sections of flat entries."""
    m = profile.model

    def dump(model: Any) -> dict[str, Any]:
        return _flat(model.model_dump(mode="json", exclude_none=True))

    messages: dict[str, dict[str, Any]] = {}
    if profile.db is not None:
        messages = {msg.name: _flat(_message(msg)) for msg in profile.db.messages}
    for name, settings in m.messages.items():
        messages.setdefault(name, {}).update(_flat(settings.model_dump(mode="json", exclude_none=True),
                                                   "settings"))
    source = m.source.dbc or m.source.eds or "inline messages"
    top = {"protocol": m.protocol, "source": source, "timeout_ms": m.timeout_ms,
           "allow_shared_ids": m.allow_shared_ids, **_flat(dict(m.options), "options")}
    return {
        "profile": {"settings": top},
        "channels": {k: dump(v) for k, v in m.channels.items()},
        "alarms": {k: dump(v) for k, v in m.alarms.items()},
        "commands": {k: dump(v) for k, v in m.commands.items()},
        "messages": messages,
        "transmit": {t.message: dump(t) for t in m.transmit},
    }


def diff(old: Profile, new: Profile) -> list[Change]:
    """Every entry added, removed or changed from `old` to `new`, section by section."""
    a, b = view(old), view(new)
    out: list[Change] = []
    for section in SECTIONS:
        before, after = a[section], b[section]
        for name in sorted(before.keys() - after.keys()):
            out.append(Change(section, name, "removed"))
        for name in sorted(after.keys() - before.keys()):
            out.append(Change(section, name, "added"))
        for name in sorted(before.keys() & after.keys()):
            x, y = before[name], after[name]
            fields = tuple((f, x.get(f), y.get(f)) for f in sorted(x.keys() | y.keys()) if x.get(f) != y.get(f))
            if fields:
                out.append(Change(section, name, "changed", fields))
    return out
