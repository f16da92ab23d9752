"""The python-can side of a `[[bus]]`: the interface exists, its options are known and typed, and
which physical channel (wire) it opens.

python-can passes unknown keyword arguments on to `BusABC`, which ignores them: a misspelled
option (``bitrte``) silently opens the bus on a default. So the options a site may give an
interface are read from python-can itself: the keyword parameters of the interface class's
``__init__`` (and of its base classes up to `can.BusABC`), the ``kwargs`` keys its code reads
(e.g. kvaser's ``kwargs.get("data_bitrate")``), and python-can's bit-timing keys when the class
takes ``timing``. A class that wraps another interface (``inner_interface``, as ``emsbms_faulty``
does) also takes the inner interface's options. Where the signature gives a plain type (``port:
int``) the value must have it.
"""

from __future__ import annotations

import importlib
import inspect
import re
import types
import typing
from dataclasses import dataclass
from functools import cache
from typing import Any

import can
from can.interfaces import BACKENDS, VALID_INTERFACES
from can.typechecking import BitTimingDict, BitTimingFdDict

from emsbms.can.config import BusConfig

CORE_KEYS = ("name", "interface", "channel", "bitrate")
"""The keys of a `[[bus]]` that emsbms reads itself; every other key is a python-can option."""

_KWARG = re.compile(r"""kwargs(?:\.get|\.pop|\.setdefault)?[\[(]\s*["'](\w+)["']|["'](\w+)["']\s+in\s+kwargs""")
_SIMPLE: tuple[type, ...] = (bool, int, float, str)
_NOT_OPTIONS = {"self", *CORE_KEYS}


@dataclass(frozen=True)
class Option:
    """One option of an interface: the types its value may have (empty: not checked) and its default."""

    types: tuple[type, ...] = ()
    default: Any = None

    @property
    def expected(self) -> str:
        return self.types[0].__name__ if self.types else "any"

    def fits(self, value: object) -> bool:
        if not self.types:
            return True
        if isinstance(value, bool):
            return bool in self.types
        return isinstance(value, self.types)


class InterfaceError(Exception):
    """An interface that python-can does not know, or that cannot be loaded here."""


def interfaces() -> list[str]:
    """Every python-can interface name, entry points (e.g. ``emsbms_faulty``) included."""
    return sorted(VALID_INTERFACES)


@cache
def interface_options(interface: str) -> dict[str, Option]:
    """The options python-can's `interface` takes, by name. Raises InterfaceError."""
    if interface not in VALID_INTERFACES:
        raise InterfaceError(f"no python-can interface {interface!r}")
    module_name, class_name = BACKENDS[interface]
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except Exception as e:  # any import failure means the bus cannot open here
        raise InterfaceError(f"python-can interface {interface!r} cannot be loaded here:"
                             f" {type(e).__name__}: {e}") from e
    options: dict[str, Option] = {}
    for klass in inspect.getmro(cls):
        if not issubclass(klass, can.BusABC) or "__init__" not in vars(klass):
            continue
        init = vars(klass)["__init__"]
        try:
            hints = typing.get_type_hints(init)
        except Exception:  # unresolvable annotations: fall back to the defaults
            hints = {}
        for p in inspect.signature(init).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name in _NOT_OPTIONS:
                continue
            default = None if p.default is p.empty else p.default
            options.setdefault(p.name, Option(_types(hints.get(p.name), p.default), default))
        try:
            source = inspect.getsource(klass)
        except (OSError, TypeError):
            source = ""
        for m in _KWARG.finditer(source):
            name = m.group(1) or m.group(2)
            if name not in _NOT_OPTIONS:
                options.setdefault(name, Option())
    if "timing" in options:
        for key in (*BitTimingDict.__annotations__, *BitTimingFdDict.__annotations__):
            options.setdefault(key, Option((int,)))
    return options


def _types(hint: Any, default: Any) -> tuple[type, ...]:
    """The plain types a parameter takes, from its annotation (else its default); () if not plain."""
    if hint is None:
        return _widen((type(default),)) if type(default) in _SIMPLE else ()
    if hint in _SIMPLE:
        return _widen((hint,))
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = tuple(a for a in typing.get_args(hint) if a is not type(None))
        if args and all(a in _SIMPLE for a in args):
            return _widen(args)
    return ()


def _widen(kinds: tuple[type, ...]) -> tuple[type, ...]:
    """A float option also takes an int (TOML ``1`` for ``1.0``)."""
    return (*kinds, int) if float in kinds and int not in kinds else kinds


def wrapped_interface(interface: str, options: dict[str, Any]) -> str | None:
    """The interface a wrapping interface (one taking ``inner_interface``) opens, else None."""
    inner = interface_options(interface).get("inner_interface")
    if inner is None:
        return None
    return str(options.get("inner_interface", inner.default))


def wire(bus: BusConfig) -> tuple[str, str, str]:
    """The physical channel a bus opens, as (interface, description, the key that sets it).

    Two buses on one wire read each other's frames. A wrapping interface is its inner one;
    udp_multicast is its port alone: Linux hands a multicast datagram to every socket bound to the
    port, whatever the group (docs: PROTOCOLS.md, measured here).
    """
    interface = wrapped_interface(bus.interface, bus.options) or bus.interface
    if interface == "udp_multicast":
        port = bus.options.get("port", interface_options("udp_multicast")["port"].default)
        return interface, f"udp_multicast port {port}", "port"
    return interface, f"{interface} channel {bus.channel!r}", "channel"
