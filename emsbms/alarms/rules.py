"""Alarm rules: the schema shared by the site file's `[[rule]]`, the cloud's desired `rules` and profiles.

Pure: no I/O. `parse_rules` checks every key and parses every expression at load.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from emsbms.alarms.expr import AlarmRuleError, Expression, parse_expression, pattern_regex


class Severity(IntEnum):
    """Ordered like OpenEMS levels: INFO < WARNING < FAULT."""

    INFO = 1
    WARNING = 2
    FAULT = 3


@dataclass(frozen=True, slots=True)
class Rule:
    """One checked rule. `for_s` is the on-delay, `off_delay_s` the off-delay, in seconds."""

    name: str
    expression: Expression
    clear_expression: Expression | None = None
    for_s: float = 0.0
    off_delay_s: float = 0.0
    severity: Severity = Severity.WARNING
    latch: bool = False


KEYS = ("name", "expression", "clear_expression", "for", "off_delay", "severity", "latch")
_NAME = re.compile(r"[A-Za-z0-9_-]+\Z")
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)\s*\Z")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: object, where: str) -> float:
    """ "2s", "500ms", "1m", "1h" (a plain number is seconds) -> seconds, finite and >= 0."""
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise AlarmRuleError(f"{where}: expected a duration like \"2s\", \"500ms\", \"1m\", \"1h\", "
                             f"found {type(text).__name__} {text!r}")
    if isinstance(text, str):
        m = _DURATION.match(text)
        if m is None:
            raise AlarmRuleError(f"{where}: expected a duration like \"2s\", \"500ms\", \"1m\", \"1h\", found {text!r}")
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        seconds = float(text)
    if not math.isfinite(seconds) or seconds < 0:
        raise AlarmRuleError(f"{where}: expected a finite duration >= 0, found {text!r}")
    return seconds


def _string(raw: Mapping[str, Any], key: str, where: str, required: bool) -> str | None:
    value = raw.get(key)
    if value is None:
        if required:
            raise AlarmRuleError(f"{where}: missing key {key!r} (expected a string)")
        return None
    if not isinstance(value, str):
        raise AlarmRuleError(f"{where}: key {key!r} expected a string, found {type(value).__name__} {value!r}")
    return value


def _check_known(expression: Expression, known: Collection[str], where: str) -> None:
    for address in expression.addresses:
        regex = pattern_regex(address.pattern)
        if not any(regex.match(a) for a in known):
            raise AlarmRuleError(f"{where} column {address.start + 1}: no channel matches {address.pattern!r}")


def parse_rule(raw: Mapping[str, Any], index: int, known_addresses: Collection[str] | None = None) -> Rule:
    """One rule from its table; every error names the rule (or its index) and the key."""
    if not isinstance(raw, Mapping):
        raise AlarmRuleError(f"rule #{index + 1}: expected a table, found {type(raw).__name__}")
    name = _string(raw, "name", f"rule #{index + 1}", required=True)
    assert name is not None
    if not _NAME.match(name):
        raise AlarmRuleError(f"rule #{index + 1}: key 'name' expected letters, digits, '_' or '-', found {name!r}")
    where = f"rule {name!r}"
    unknown = sorted(str(k) for k in raw if k not in KEYS)
    if unknown:
        raise AlarmRuleError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} "
                             f"(expected: {', '.join(KEYS)})")
    expressions: list[Expression | None] = []
    for key in ("expression", "clear_expression"):
        text = _string(raw, key, where, required=key == "expression")
        expression = None if text is None else parse_expression(text, f"{where}: {key}")
        if expression is not None and known_addresses is not None:
            _check_known(expression, known_addresses, f"{where}: {key}")
        expressions.append(expression)
    raise_expr, clear_expr = expressions
    assert raise_expr is not None
    if clear_expr is not None and set(clear_expr.per_device) - set(raw_per := raise_expr.per_device):
        extra = ", ".join(sorted(set(clear_expr.per_device) - set(raw_per)))
        raise AlarmRuleError(f"{where}: clear_expression: per-device address {extra} is not in 'expression' "
                             "(the instances come from the expression)")
    if "severity" not in raw:
        raise AlarmRuleError(f"{where}: missing key 'severity' (expected INFO, WARNING or FAULT)")
    severity_text = raw["severity"]
    if not isinstance(severity_text, str) or severity_text not in Severity.__members__:
        raise AlarmRuleError(f"{where}: key 'severity' expected INFO, WARNING or FAULT, found {severity_text!r}")
    latch = raw.get("latch", False)
    if not isinstance(latch, bool):
        raise AlarmRuleError(f"{where}: key 'latch' expected true or false, found {latch!r}")
    return Rule(name, raise_expr, clear_expr,
                parse_duration(raw.get("for", "0s"), f"{where}: key 'for'"),
                parse_duration(raw.get("off_delay", "0s"), f"{where}: key 'off_delay'"),
                Severity[severity_text], latch)


def parse_rules(raws: list[dict[str, Any]], known_addresses: Collection[str] | None = None) -> list[Rule]:
    """Every rule checked; a name used twice is refused naming both positions."""
    if not isinstance(raws, list):
        raise AlarmRuleError(f"rules: expected a list of tables, found {type(raws).__name__}")
    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, raw in enumerate(raws):
        rule = parse_rule(raw, i, known_addresses)
        if rule.name in seen:
            raise AlarmRuleError(f"rule {rule.name!r}: key 'name' is used twice (rules #{seen[rule.name] + 1} "
                                 f"and #{i + 1}); names are unique per site")
        seen[rule.name] = i
        rules.append(rule)
    return rules
