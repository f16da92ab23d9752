"""emsbms: CAN integration of battery management systems for an EMS edge gateway.

The public surface is re-exported here::

    from emsbms import Edge
    with Edge.from_site("site.toml") as edge:
        edge.read("bms_0/Soc")
"""

import emsbms.protocols  # noqa: F401  (registers every protocol's profile check with the profile engine)
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

__all__ = [
    "AlarmLevel", "BusError", "ChannelInfo", "ChannelKind", "CommState", "CommandRejected",
    "CommandResult", "CommandStatus", "ConfigError", "Edge", "EmsbmsError", "Profile",
    "ProfileError", "Quality", "ReadTimeout", "Reading", "Sample", "Site", "Snapshot",
    "Subscription", "UnknownAddressError", "__version__", "load_profile", "load_site",
]
