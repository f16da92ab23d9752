"""Which rule instances a changed channel can move: address -> (rule, device), so the runner
steps only those (and the ones whose delay runs) instead of every instance on every update.

Pure: no I/O. A per-device use of ``*/X`` (outside aggregates, or in ``rate(*/X)``) maps the
address ``dev/X`` to (rule, "dev"); any other use (an aggregate, a literal address) maps it to
(rule, None): every instance of the rule. A device's ``CommState`` maps to that device's instance of
every per-device rule and to every instance of the rules with an aggregate or a literal address.
"""

from __future__ import annotations

from collections.abc import Iterable

from emsbms.alarms.expr import pattern_regex
from emsbms.alarms.rules import Rule

Targets = dict[str, set[str] | None]
"""rule name -> the devices whose instances to step (None: all of the rule's instances)."""


class RuleIndex:
    """The rules that read each address (looked up once per address, then cached)."""

    def __init__(self, rules: Iterable[Rule]) -> None:
        self.rules = [r.name for r in rules]
        # pattern -> [(rule, per_device)]; split by shape for a fast lookup
        self._exact: dict[str, list[tuple[str, bool]]] = {}  # literal address
        self._tail: dict[str, list[tuple[str, bool]]] = {}  # "*/Rest" without another wildcard
        self._other: list[tuple[str, str, bool]] = []  # (pattern, rule, per_device)
        for rule in rules:
            for expression in (rule.expression, rule.clear_expression):
                if expression is None:
                    continue
                substituted = set(expression.substituted)
                for a in expression.addresses:
                    per = bool(rule.expression.per_device) and a.pattern.startswith("*/") and (
                        a in substituted or a in expression.rated)
                    self._add(a.pattern, rule.name, per)
        self._regex = [(pattern_regex(p), r, per) for p, r, per in self._other]
        uses = [*self._exact.values(), *self._tail.values(), [(r, per) for _, r, per in self._other]]
        self._comm = tuple(dict.fromkeys((r, per) for use in uses for r, per in use))  # what a CommState moves
        self._cache: dict[str, tuple[tuple[str, str | None], ...]] = {}

    def _add(self, pattern: str, rule: str, per: bool) -> None:
        if "*" not in pattern:
            self._exact.setdefault(pattern, []).append((rule, per))
        elif pattern.startswith("*/") and "*" not in pattern[2:]:
            self._tail.setdefault(pattern[2:], []).append((rule, per))
        else:
            self._other.append((pattern, rule, per))

    def lookup(self, address: str) -> tuple[tuple[str, str | None], ...]:
        """(rule, device or None) pairs an update of `address` can move."""
        found = self._cache.get(address)
        if found is not None:
            return found
        device, _, rest = address.partition("/")
        if rest == "CommState":
            found = self._cache[address] = tuple(dict.fromkeys((r, device if per else None) for r, per in self._comm))
            return found
        hits: list[tuple[str, bool]] = [*self._exact.get(address, ()), *self._tail.get(rest, ())]
        hits += [(r, per) for regex, r, per in self._regex if regex.match(address)]
        found = self._cache[address] = tuple(dict.fromkeys((r, device if per else None) for r, per in hits))
        return found

    def targets(self, addresses: Iterable[str]) -> Targets:
        """What the changed `addresses` can move."""
        out: Targets = {}
        for address in addresses:
            for rule, device in self.lookup(address):
                if device is None:
                    out[rule] = None
                elif rule not in out:
                    out[rule] = {device}
                else:
                    devices = out[rule]
                    if devices is not None:
                        devices.add(device)
        return out
