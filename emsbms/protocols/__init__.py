"""Protocol adapters by name, imported only when used (as python-can does with interfaces)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from emsbms.errors import ProfileError
from emsbms.profile.checks import register_check

if TYPE_CHECKING:
    from emsbms.profile.models import Profile
    from emsbms.protocols.base import Adapter

ADAPTERS: dict[str, tuple[str, str]] = {
    "dbc": ("emsbms.protocols.dbc", "DbcAdapter"),
    "canopen": ("emsbms.protocols.canopen", "CanopenAdapter"),
    "j1939": ("emsbms.protocols.j1939", "J1939Adapter"),
}


def adapter_class(protocol: str) -> type[Adapter]:
    """The adapter class for a protocol name."""
    try:
        module_name, class_name = ADAPTERS[protocol]
    except KeyError:
        raise ProfileError(
            f"unknown protocol {protocol!r}; expected one of {', '.join(ADAPTERS)}"
        ) from None
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        raise ProfileError(f"protocol {protocol!r} is not available in this build: {e}") from e
    cls: type[Adapter] = getattr(module, class_name)
    return cls


def _check(profile: Profile) -> None:
    adapter_class(profile.protocol).check_profile(profile)


for _name in ADAPTERS:
    register_check(_name, _check)
