"""The checked tree of an alarm expression and its evaluation (parsed by `emsbms.alarms.expr`)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from emsbms.errors import ConfigError


class AlarmRuleError(ConfigError):
    """An alarm rule is invalid: names the rule, the key and, for expressions, the column."""


class NoData:
    """The result of an expression with a missing or not-ok operand (or a division by zero)."""

    def __repr__(self) -> str:
        return "NO_DATA"


NO_DATA = NoData()
Result = float | bool | NoData

AGGREGATES = ("max", "min", "avg", "sum", "count")
COMPARE: dict[str, Callable[[float, float], bool]] = {
    "<": lambda a, b: a < b, "<=": lambda a, b: a <= b, ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b, "==": lambda a, b: a == b, "!=": lambda a, b: a != b,
}


class Context(Protocol):
    """What an expression reads while it is evaluated (the engine provides it)."""

    def reading(self, address: str) -> float | NoData: ...
    def aggregate(self, name: str, pattern: str) -> float | NoData: ...
    def rate(self, address: str) -> float | NoData: ...


def pattern_regex(pattern: str) -> re.Pattern[str]:
    """The anchored regex of an address pattern: "*" matches within one segment."""
    return re.compile("[^/]*".join(re.escape(part) for part in pattern.split("*")) + r"\Z")


@dataclass(frozen=True, slots=True)
class Node:
    """A node of the checked tree; `start`/`end` are its span in the source (0-based)."""

    start: int
    end: int

    def eval(self, ctx: Context, device: str) -> Result:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Number(Node):
    value: float

    def eval(self, ctx: Context, device: str) -> Result:
        return self.value


@dataclass(frozen=True, slots=True)
class Address(Node):
    pattern: str  # "*/Soc" (per device) or a literal address

    def resolve(self, device: str) -> str:
        return device + self.pattern[1:] if self.pattern.startswith("*/") else self.pattern

    def eval(self, ctx: Context, device: str) -> Result:
        return ctx.reading(self.resolve(device))


@dataclass(frozen=True, slots=True)
class Call(Node):
    name: str  # "neg", "abs", "between", "not", "+", "-", "*", "/", a comparison, "and", "or"
    args: tuple[Node, ...]

    def eval(self, ctx: Context, device: str) -> Result:
        values = [a.eval(ctx, device) for a in self.args]  # every operand, so no_data is never hidden
        if any(isinstance(v, NoData) for v in values):
            return NO_DATA
        nums = [float(v) for v in values]  # type: ignore[arg-type]
        name = self.name
        if name == "and":
            return all(values)
        if name == "or":
            return any(values)
        if name == "not":
            return not values[0]
        if name in COMPARE:
            return COMPARE[name](nums[0], nums[1])
        if name == "between":
            return nums[1] <= nums[0] <= nums[2]
        if name == "neg":
            return -nums[0]
        if name == "abs":
            return abs(nums[0])
        if name == "/":
            return NO_DATA if nums[1] == 0 else _finite(nums[0] / nums[1])
        if name == "*":
            return _finite(nums[0] * nums[1])
        return _finite(nums[0] + nums[1] if name == "+" else nums[0] - nums[1])


@dataclass(frozen=True, slots=True)
class Aggregate(Node):
    name: str  # one of AGGREGATES, or "rate"
    address: Address

    def eval(self, ctx: Context, device: str) -> Result:
        if self.name == "rate":
            return ctx.rate(self.address.resolve(device))
        return ctx.aggregate(self.name, self.address.pattern)


def _finite(value: float) -> float | NoData:
    return value if math.isfinite(value) else NO_DATA


@dataclass(frozen=True, slots=True)
class Expression:
    """A checked condition: its source, its tree, its addresses, and the node whose value is reported."""

    source: str
    root: Node
    addresses: tuple[Address, ...]  # every address, in source order (aggregates' and rate's too)
    per_device: tuple[str, ...]  # the "*/..." patterns outside aggregates: one instance per device
    substituted: tuple[Address, ...]  # the addresses of those patterns (the device is put in for "*")
    rated: tuple[Address, ...]  # the addresses inside rate() (the engine keeps their previous sample)
    value_node: Node | None  # the left operand of the first comparison or between()

    def evaluate(self, ctx: Context, device: str = "site") -> bool | NoData:
        result = self.root.eval(ctx, device)
        return result if isinstance(result, NoData) else bool(result)

    def value(self, ctx: Context, device: str = "site") -> float | None:
        if self.value_node is None:
            return None
        result = self.value_node.eval(ctx, device)
        return None if isinstance(result, NoData) else float(result)

    def text(self, device: str, value: float | None) -> str:
        """The source with the device put in for "*/" and the reported value after its operand."""
        edits = [(a.start, a.end, a.resolve(device)) for a in self.substituted]
        if self.value_node is not None and value is not None:
            edits.append((self.value_node.end, self.value_node.end, f" {value:.6g}"))
        out = self.source
        for start, end, text in sorted(edits, key=lambda e: e[0], reverse=True):
            out = out[:start] + text + out[end:]
        return " ".join(out.split())
