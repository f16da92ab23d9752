"""The alarm expression language: parsed and type-checked at load, evaluated without `eval`.

Grammar (docs/alarms.md)::

    condition := or
    or        := and ("or" and)*
    and       := not ("and" not)*
    not       := "not" not | compare
    compare   := sum (("<" | "<=" | ">" | ">=" | "==" | "!=") sum)?
    sum       := product (("+" | "-") product)*
    product   := unary (("*" | "/") unary)*
    unary     := "-" unary | atom
    atom      := NUMBER | ADDRESS | "(" or ")" | "abs" "(" sum ")" | "between" "(" sum "," sum "," sum ")"
               | ("max" | "min" | "avg" | "sum" | "count") "(" ADDRESS ")" | "rate" "(" ADDRESS ")"

An ADDRESS has at least one "/"; its segments are letters, digits, "_", "." and "*", where "*" matches
any run of characters inside one segment. Outside an aggregate a wildcard may only be the whole
first segment ("*/MaxCellVoltage": one alarm instance per device).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass

from emsbms.alarms.nodes import (
    AGGREGATES,
    COMPARE,
    NO_DATA,
    Address,
    Aggregate,
    AlarmRuleError,
    Call,
    Context,
    Expression,
    NoData,
    Node,
    Number,
    pattern_regex,
)

__all__ = ["NO_DATA", "AlarmRuleError", "Context", "Expression", "NoData", "parse_expression", "pattern_regex"]

_TOKEN = re.compile(
    r"\s*(?:(?P<address>[A-Za-z0-9_.*]+(?:/[A-Za-z0-9_.*]+)+)"
    r"|(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)(?![A-Za-z0-9_.*/])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<op><=|>=|==|!=|[<>+\-*/(),]))"
)

@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "address", "number", "name", "op", "end"
    text: str
    start: int


def _describe(token: _Token) -> str:
    return "the end" if token.kind == "end" else repr(token.text)


def _tokens(source: str, fail: Callable[[int, str], AlarmRuleError]) -> list[_Token]:
    out: list[_Token] = []
    pos = 0
    while source[pos:].strip():
        m = _TOKEN.match(source, pos)
        if m is None or m.lastgroup is None:
            at = len(source) - len(source[pos:].lstrip())
            raise fail(at, f"unexpected character {source[at]!r}")
        out.append(_Token(m.lastgroup, m.group(m.lastgroup), m.start(m.lastgroup)))
        pos = m.end()
    out.append(_Token("end", "", len(source)))
    return out


class _Parser:
    """Recursive descent over the tokens; `kind` of each result is "number" or "condition"."""

    def __init__(self, source: str, where: str) -> None:
        self.source, self.where = source, where
        self.tokens = _tokens(source, self.error)
        self.i = 0
        self.addresses: list[Address] = []
        self.rated: list[Address] = []
        self.aggregated: set[int] = set()  # id() of the addresses inside max/min/avg/sum/count
        self.value_node: Node | None = None

    def error(self, at: int, message: str) -> AlarmRuleError:
        return AlarmRuleError(f"{self.where} column {at + 1}: {message}")

    @property
    def tok(self) -> _Token:
        return self.tokens[self.i]

    def take(self, *texts: str) -> _Token | None:
        if self.tok.kind in {"op", "name"} and self.tok.text in texts:
            self.i += 1
            return self.tokens[self.i - 1]
        return None

    def expect(self, text: str) -> _Token:
        token = self.take(text)
        if token is None:
            raise self.error(self.tok.start, f"expected {text!r}, found {_describe(self.tok)}")
        return token

    def need(self, node: tuple[Node, str], kind: str, what: str) -> Node:
        if node[1] != kind:
            found = "a condition" if node[1] == "condition" else "a number"
            raise self.error(node[0].start, f"expected {what}, found {found}")
        return node[0]

    def logic(self, op: str, sub: Callable[[], tuple[Node, str]]) -> tuple[Node, str]:
        first = sub()
        items = [first]
        while self.take(op):
            items.append(sub())
        if len(items) == 1:
            return first
        args = tuple(self.need(n, "condition", f"a condition after or before {op!r}") for n in items)
        return Call(args[0].start, args[-1].end, op, args), "condition"

    def parse_or(self) -> tuple[Node, str]:
        return self.logic("or", self.parse_and)

    def parse_and(self) -> tuple[Node, str]:
        return self.logic("and", self.parse_not)

    def parse_not(self) -> tuple[Node, str]:
        token = self.take("not")
        if token is None:
            return self.parse_compare()
        operand = self.need(self.parse_not(), "condition", "a condition after 'not'")
        return Call(token.start, operand.end, "not", (operand,)), "condition"

    def parse_compare(self) -> tuple[Node, str]:
        left = self.parse_sum()
        token = self.take(*COMPARE)
        if token is None:
            return left
        a = self.need(left, "number", f"a number before {token.text!r}")
        b = self.need(self.parse_sum(), "number", f"a number after {token.text!r}")
        if self.tok.text in COMPARE and self.tok.kind == "op":
            raise self.error(self.tok.start, "comparisons do not chain: use between(x, lo, hi) or 'and'")
        self.value_node = self.value_node or a
        return Call(a.start, b.end, token.text, (a, b)), "condition"

    def arith(self, ops: tuple[str, ...], sub: Callable[[], tuple[Node, str]]) -> tuple[Node, str]:
        node = sub()
        while (token := self.take(*ops)) is not None:
            a = self.need(node, "number", f"a number before {token.text!r}")
            b = self.need(sub(), "number", f"a number after {token.text!r}")
            node = Call(a.start, b.end, token.text, (a, b)), "number"
        return node

    def parse_sum(self) -> tuple[Node, str]:
        return self.arith(("+", "-"), self.parse_product)

    def parse_product(self) -> tuple[Node, str]:
        return self.arith(("*", "/"), self.parse_unary)

    def parse_unary(self) -> tuple[Node, str]:
        token = self.take("-")
        if token is None:
            return self.parse_atom()
        operand = self.need(self.parse_unary(), "number", "a number after '-'")
        return Call(token.start, operand.end, "neg", (operand,)), "number"

    def address(self, aggregated: bool) -> Address:
        token = self.tok
        if token.kind != "address":
            raise self.error(token.start, f"expected an address, found {_describe(token)}")
        self.i += 1
        if not aggregated and "*" in token.text and not (token.text.startswith("*/") and "*" not in token.text[2:]):
            raise self.error(token.start, f"wildcard in {token.text!r}: outside max/min/avg/sum/count a '*' may "
                                          "only stand for the whole device ('*/Channel')")
        node = Address(token.start, token.start + len(token.text), token.text)
        self.addresses.append(node)
        if aggregated:
            self.aggregated.add(id(node))
        return node

    def parse_atom(self) -> tuple[Node, str]:
        token = self.tok
        if token.kind == "number":
            self.i += 1
            return Number(token.start, token.start + len(token.text), float(token.text)), "number"
        if token.kind == "address":
            return self.address(aggregated=False), "number"
        if self.take("("):
            inner, kind = self.parse_or()
            close = self.expect(")")
            return _span(inner, token.start, close.start + 1), kind
        if token.kind == "name" and token.text in (*AGGREGATES, "rate", "abs", "between"):
            self.i += 1
            self.expect("(")
            node: Node
            if token.text in (*AGGREGATES, "rate"):
                address = self.address(aggregated=token.text != "rate")
                if token.text == "rate":
                    self.rated.append(address)
                node = Aggregate(token.start, 0, token.text, address)
                kind = "number"
            else:
                args = [self.need(self.parse_sum(), "number", f"a number in {token.text}()")]
                for _ in range(2 if token.text == "between" else 0):
                    self.expect(",")
                    args.append(self.need(self.parse_sum(), "number", "a number in between()"))
                if token.text == "between":
                    self.value_node = self.value_node or args[0]
                node, kind = Call(token.start, 0, token.text, tuple(args)), (
                    "condition" if token.text == "between" else "number")
            close = self.expect(")")
            return _span(node, token.start, close.start + 1), kind
        if token.kind == "name":
            raise self.error(token.start, f"unknown name {token.text!r} (functions: abs, between, rate, "
                                          f"{', '.join(AGGREGATES)}; an address has a '/')")
        raise self.error(token.start, f"expected a number or an address, found {_describe(token)}")


def _span(node: Node, start: int, end: int) -> Node:
    """`node` with its span widened to the parentheses or the call around it."""
    return dataclasses.replace(node, start=start, end=end)


def parse_expression(source: str, where: str = "expression") -> Expression:
    """Parse and check a condition; `where` starts every error ("rule 'hot': expression")."""
    parser = _Parser(source, where)
    if parser.tok.kind == "end":
        raise parser.error(0, "empty expression")
    node = parser.need(parser.parse_or(), "condition", "a condition (a comparison, between(), and/or/not)")
    if parser.tok.kind != "end":
        raise parser.error(parser.tok.start, f"expected an operator or the end, found {_describe(parser.tok)}")
    substituted = tuple(a for a in parser.addresses if id(a) not in parser.aggregated and a.pattern.startswith("*/"))
    per_device = tuple(dict.fromkeys(a.pattern for a in substituted))
    return Expression(source, node, tuple(parser.addresses), per_device, substituted, tuple(parser.rated),
                      parser.value_node)
