"""What the shipped controllers share: option checks, numbers from readings, exclusion events."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from emsbms.core.controller import Limits, ProcessImage
from emsbms.errors import ConfigError, UnknownAddressError
from emsbms.types import Quality, Reading


def _found(value: object) -> str:
    return f"{type(value).__name__} {value!r}"


class Options:
    """A controller's options table, checked key by key; every refusal names the controller and key."""

    def __init__(self, name: str, type_name: str, options: Mapping[str, Any], known: set[str]) -> None:
        self.where = f"controller {name!r} (type {type_name!r})"
        self.values = dict(options)
        unknown = sorted(set(self.values) - known)
        if unknown:
            raise ConfigError(
                f"{self.where}: unknown option {unknown[0]!r} (expected one of: {', '.join(sorted(known))})"
            )

    def refuse(self, key: str, expected: str, found: object) -> ConfigError:
        return ConfigError(f"{self.where}: option {key!r} expected {expected}, found {_found(found)}")

    def names(self, key: str, default: list[str] | None = None) -> list[str]:
        """A non-empty list of distinct non-empty strings (device names)."""
        if key not in self.values:
            if default is None:
                raise ConfigError(f"{self.where}: missing option {key!r} (expected a list of device names)")
            return default
        value = self.values[key]
        expected = "a non-empty list of distinct device names"
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.refuse(key, expected, value)
        if len(set(value)) != len(value):
            raise self.refuse(key, expected, value)
        return list(value)

    def text(self, key: str, default: str) -> str:
        value = self.values.get(key, default)
        if not isinstance(value, str) or not value or "/" in value:
            raise self.refuse(key, "a non-empty name without '/'", value)
        return value

    def choice(self, key: str, choices: tuple[str, ...]) -> str:
        value = self.values.get(key, choices[0])
        if value not in choices:
            raise self.refuse(key, " or ".join(repr(c) for c in choices), value)
        return str(value)

    def number(self, key: str, default: float | None, *, positive: bool = False) -> float | None:
        """A finite number (not a bool); positive if asked; `default` when absent."""
        if key not in self.values:
            return default
        value = self.values[key]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        if not ok or (positive and value <= 0):
            raise self.refuse(key, "a positive number" if positive else "a finite number", value)
        return float(value)

    def integer(self, key: str, default: int) -> int:
        """An int (not a bool); `default` when absent."""
        value = self.values.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.refuse(key, "an integer", value)
        return value

    def per_name(self, key: str, names: list[str]) -> dict[str, float]:
        """A table name -> positive number whose names are all in `names` (e.g. capacity_ah)."""
        value = self.values.get(key, {})
        if not isinstance(value, dict):
            raise self.refuse(key, "a table of device name = positive number", value)
        result: dict[str, float] = {}
        for name, number in value.items():
            if name not in names:
                raise ConfigError(f"{self.where}: option {key!r}: {name!r} is not one of strings ({', '.join(names)})")
            if isinstance(number, bool) or not isinstance(number, int | float) or not number > 0:
                raise self.refuse(f"{key}.{name}", "a positive number", number)
            result[name] = float(number)
        return result

    def table(self, key: str, default: dict[str, str]) -> dict[str, str]:
        """A non-empty table of name = name (e.g. command channel = limit channel)."""
        value = self.values.get(key, default)
        if not isinstance(value, dict) or not value or not all(
            isinstance(k, str) and k and isinstance(v, str) and v for k, v in value.items()
        ):
            raise self.refuse(key, "a non-empty table of channel name = channel name", value)
        return dict(value)


def number(reading: Reading | None) -> float | None:
    """The reading's value as a float when it is usable: present, quality ok, a finite number."""
    if reading is None or reading.quality is not Quality.OK:
        return None
    value = reading.value
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def command_bounds(image: ProcessImage, address: str) -> Limits | None:
    """The profile's (min, max) of command channel `address`, or None if it is no command channel."""
    try:
        return image.limits(address)
    except UnknownAddressError:
        return None


def why_unusable(reading: Reading | None, address: str) -> str | None:
    """Why `number(reading)` is None, in words; None when it is usable."""
    if reading is None:
        return f"{address} has no value"
    if reading.quality is not Quality.OK:
        return f"{address} is {reading.quality.value}"
    if number(reading) is None:
        return f"{address} is not a number ({reading.value!r})"
    return None


class Exclusions:
    """Which strings (or addresses) are out and why; `update` gives one event per change, not one per cycle.

    Events read "<name> <left>: <reason>" and "<name> <back>" (the cycle prefixes the controller).
    """

    def __init__(self, left: str, back: str) -> None:
        self.left = left
        self.back = back
        self.reasons: dict[str, str] = {}

    def update(self, reasons: Mapping[str, str | None]) -> list[str]:
        """`reasons`: name -> why it is out, or None when it is in."""
        events: list[str] = []
        for name, reason in reasons.items():
            before = self.reasons.get(name)
            if reason is None and before is not None:
                del self.reasons[name]
                events.append(f"{name} {self.back}")
            elif reason is not None and reason != before:
                self.reasons[name] = reason
                events.append(f"{name} {self.left}: {reason}")
        return events


ECHO_TOLERANCE = 0.1
"""How close (A) a reported limit must be to the command held to count as its echo."""


class OwnLimits:
    """A BMS's own current limit, seen through the echo of the EMS's own command.

    A BMS that takes SetChargeCurrent as its limit reports it back as ChargeMaxCurrent (the shipped
    simulators and acme-hv do): while a command is held, the reported limit is the command, not the
    BMS's own limit, and bounding the next command by it would only ever ratchet down. So: when no
    command is held (the command channel has no usable value) or the reported limit differs from it,
    the reported limit is the BMS's own and is remembered; when it echoes the command held, the last
    own limit seen stands (the reported one if none was seen yet).
    """

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}

    def own(self, limit_address: str, reported: float, held: float | None) -> float:
        """The own limit behind `reported`, given the command value `held` (None: none held)."""
        if held is None or abs(reported - held) > ECHO_TOLERANCE:
            self.seen[limit_address] = reported
            return reported
        return self.seen.setdefault(limit_address, reported)
