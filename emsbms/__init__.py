"""emsbms: CAN integration of battery management systems for an EMS edge gateway.

The public surface is re-exported here::

    from emsbms import Edge
    with Edge.from_site("site.toml") as edge:
        edge.read("bms_0/Soc")

The names are imported when first used (PEP 562), so ``import emsbms`` (and the command line's
``--help``) does not load the edge, the database or the profile engine's libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Registers every protocol's profile check with the profile engine, so that loading a profile runs
# it whatever imported the loader. Cheap: it loads neither the adapters nor the profile models.
import emsbms.protocols  # noqa: F401

if TYPE_CHECKING:
    from emsbms.edge import Edge
    from emsbms.edge.registry import Snapshot, Subscription
    from emsbms.errors import (
        BusError,
        CommandRejected,
        ConfigError,
        EmsbmsError,
        ProfileError,
        ReadTimeout,
        UnknownAddressError,
    )
    from emsbms.profile import Profile, load_profile
    from emsbms.site import Site, load_site
    from emsbms.types import (
        AlarmLevel,
        ChannelInfo,
        ChannelKind,
        CommandResult,
        CommandStatus,
        CommState,
        Quality,
        Reading,
        Sample,
    )

__version__ = "0.1.0"

_MODULES = {
    "emsbms.edge": ("Edge",),
    "emsbms.edge.registry": ("Snapshot", "Subscription"),
    "emsbms.errors": ("BusError", "CommandRejected", "ConfigError", "EmsbmsError", "ProfileError", "ReadTimeout",
                      "UnknownAddressError"),
    "emsbms.profile": ("Profile", "load_profile"),
    "emsbms.site": ("Site", "load_site"),
    "emsbms.types": ("AlarmLevel", "ChannelInfo", "ChannelKind", "CommandResult", "CommandStatus", "CommState",
                     "Quality", "Reading", "Sample"),
}
_WHERE = {name: module for module, names in _MODULES.items() for name in names}


def __getattr__(name: str) -> Any:
    """A public name, imported from its module on first use (and then kept in this module)."""
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'emsbms' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_WHERE})


__all__ = [
    "AlarmLevel", "BusError", "ChannelInfo", "ChannelKind", "CommState", "CommandRejected",
    "CommandResult", "CommandStatus", "ConfigError", "Edge", "EmsbmsError", "Profile",
    "ProfileError", "Quality", "ReadTimeout", "Reading", "Sample", "Site", "Snapshot",
    "Subscription", "UnknownAddressError", "__version__", "load_profile", "load_site",
]
