"""The site file's `[[controller]]` tables and `[site] cycle_period`.

The site layer checks their shape (each a table with a non-empty `name` and `type`); the core
(`emsbms.core.registry`, above this layer) registers the full check (`build_controllers`: known
types, their options) with `register_controller_check` when it is imported, as the protocols
register their profile checks. Every command that runs an edge imports the core first.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from emsbms.errors import ConfigError

ControllerCheck = Callable[[Sequence[dict[str, Any]]], object]

_CHECK: list[ControllerCheck] = []

DEFAULT_CYCLE_PERIOD_S = 1.0
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0}


def register_controller_check(check: ControllerCheck) -> None:
    """Run `check(tables)` on the `[[controller]]` tables of every site loaded (it raises ConfigError
    naming the table as `[[controller]] #N (name): ...`)."""
    _CHECK[:] = [check]


def parse_cycle_period(where: str, value: object) -> float:
    """`[site] cycle_period`: "1s", "500ms", "2m" or a number of seconds, above 0 and at most 1 hour."""
    if value is None:
        return DEFAULT_CYCLE_PERIOD_S
    seconds: float | None = None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str):
        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*", value)
        if found is not None:
            seconds = float(found[1]) * _UNITS[found[2] or "s"]
    if seconds is None or not 0 < seconds <= 3600:
        raise ConfigError(f"{where}: key 'cycle_period' expected a duration above 0 and at most 1 h such as"
                          f" \"1s\", \"500ms\" or 2, found {value!r}")
    return seconds


def parse_controllers(source: str, value: object) -> list[dict[str, Any]]:
    """The `[[controller]]` tables: an array of tables with `name` and `type`, then the core's check."""
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise ConfigError(f"{source}: [[controller]] expected an array of tables, found {value!r}")
    for i, table in enumerate(value):
        for key in ("name", "type"):
            v = table.get(key)
            if not isinstance(v, str) or not v:
                found = "nothing" if key not in table else f"{type(v).__name__} {v!r}"
                raise ConfigError(f"{source}: [[controller]] #{i + 1}: key {key!r} expected a non-empty string,"
                                  f" found {found}")
    tables = [dict(t) for t in value]
    for check in _CHECK:
        try:
            check(tables)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from e
    return tables
