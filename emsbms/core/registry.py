"""Controllers by type name: the shipped ones (`@register`), then the `emsbms.controllers` entry points.

A controller class builds itself from a `[[controller]]` table with a classmethod
``from_options(name, options)`` that validates the options (`keyword_options` does it from the
class's keyword-only ``__init__`` parameters).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Mapping, Sequence
from importlib.metadata import entry_points
from typing import Any, Protocol, TypeVar

from emsbms.core.controller import Controller, Source
from emsbms.errors import ConfigError
from emsbms.site.controllers import register_controller_check

ENTRY_POINT_GROUP = "emsbms.controllers"
SHIPPED = "emsbms.core.controllers"  # the shipped controllers; importing it runs their @register


class ControllerType(Protocol):
    """A controller class (or factory): builds one controller from its table's options."""

    def from_options(self, name: str, options: Mapping[str, object]) -> Controller: ...


CONTROLLERS: dict[str, ControllerType] = {}
"""The shipped controller types by name, filled by `@register`."""

T = TypeVar("T")


def register(type_name: str) -> Callable[[T], T]:
    """Class decorator: ``@register("site-limits")`` makes the class the type `type_name`."""

    def add(cls: T) -> T:
        if not callable(getattr(cls, "from_options", None)):
            raise TypeError(f"controller type {type_name!r}: {cls!r} has no from_options(name, options)")
        old = CONTROLLERS.get(type_name)
        if old is not None and old is not cls:
            raise ConfigError(f"controller type {type_name!r} is registered twice: {old!r} and {cls!r}")
        CONTROLLERS[type_name] = cls  # type: ignore[assignment]
        return cls

    return add


def _load_shipped() -> None:
    try:
        importlib.import_module(SHIPPED)
    except ModuleNotFoundError as e:
        if e.name != SHIPPED:
            raise


def known_types() -> list[str]:
    """Every controller type name: the shipped ones, then the entry points'."""
    _load_shipped()
    extra = [ep.name for ep in entry_points(group=ENTRY_POINT_GROUP) if ep.name not in CONTROLLERS]
    return [*sorted(CONTROLLERS), *sorted(extra)]


def controller_class(name: str) -> ControllerType:
    """The controller type called `name`: shipped first, then the `emsbms.controllers` entry points."""
    _load_shipped()
    if name in CONTROLLERS:
        return CONTROLLERS[name]
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name == name:
            try:
                cls = ep.load()
            except Exception as e:
                raise ConfigError(f"controller type {name!r}: entry point {ep.value!r} does not load:"
                                  f" {type(e).__name__}: {e}") from e
            if not callable(getattr(cls, "from_options", None)):
                raise ConfigError(f"controller type {name!r}: entry point {ep.value!r} has no"
                                  " from_options(name, options)")
            found: ControllerType = cls
            return found
    raise ConfigError(f"unknown controller type {name!r}; known types: {', '.join(known_types()) or 'none'}")


def keyword_options(cls: Callable[..., T], name: str, options: Mapping[str, object]) -> T:
    """``cls(name=name, **options)``, refusing unknown and missing keys by name.

    The options a class takes are its keyword-only ``__init__`` parameters; a ValueError or
    TypeError from ``__init__`` becomes a ConfigError naming the controller.
    """
    params = inspect.signature(cls).parameters
    accepted = [p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY and p != "name"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"controller {name!r}: unknown option(s) {', '.join(unknown)};"
                          f" accepted: {', '.join(accepted) or 'none'}")
    missing = [p for p in accepted if params[p].default is inspect.Parameter.empty and p not in options]
    if missing:
        raise ConfigError(f"controller {name!r}: missing option(s) {', '.join(missing)}")
    try:
        return cls(name=name, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"controller {name!r}: {e}") from e


def build_controllers(tables: Sequence[Mapping[str, Any]]) -> list[Controller]:
    """One controller per ``[[controller]]`` table ``{name, type, ...options}``, in table order.

    Refused (ConfigError naming the table): a missing or empty name or type, a duplicate name,
    an unknown type, bad options, a controller whose source is not SAFETY or AUTO.
    """
    built: list[Controller] = []
    seen: set[str] = set()
    for i, table in enumerate(tables):
        where = f"[[controller]] #{i + 1}"
        if not isinstance(table, Mapping):
            raise ConfigError(f"{where}: expected a table, found {type(table).__name__}")
        name, type_name = table.get("name"), table.get("type")
        for key, value in (("name", name), ("type", type_name)):
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}: key {key!r}: expected a non-empty string, found {value!r}")
        assert isinstance(name, str) and isinstance(type_name, str)
        if name in seen:
            raise ConfigError(f"{where}: name {name!r} is used by an earlier controller")
        seen.add(name)
        options = {k: v for k, v in table.items() if k not in ("name", "type")}
        try:
            controller = controller_class(type_name).from_options(name, options)
        except ConfigError as e:
            raise ConfigError(f"{where} ({name}): {e}") from e
        if controller.source not in (Source.SAFETY, Source.AUTO):
            raise ConfigError(f"{where} ({name}): source must be safety or auto, found {controller.source!r}")
        built.append(controller)
    return built


register_controller_check(build_controllers)  # the site file's [[controller]] tables are checked at load
