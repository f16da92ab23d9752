"""The protocol checks of a profile, filled in by the protocol layer.

A profile that passes its model may still be unusable by its protocol (a J1939 profile with 11-bit
IDs, a CANopen command on an object the EDS does not have). Each protocol registers its check here
(`emsbms.protocols` does, for every adapter it knows), so that loading a profile runs it without the
profile engine importing the protocol layer above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from emsbms.errors import ProfileError

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

ProfileCheck = Callable[["Profile"], None]

_CHECKS: dict[str, ProfileCheck] = {}


def register_check(protocol: str, check: ProfileCheck) -> None:
    """Run `check` on every profile of `protocol` that is loaded (it raises ProfileError)."""
    _CHECKS[protocol] = check


def check_protocol(profile: Profile) -> None:
    """Run the check registered for the profile's protocol; ProfileError if there is none."""
    check = _CHECKS.get(profile.protocol)
    if check is None:
        known = ", ".join(sorted(_CHECKS)) or "none (emsbms.protocols is not imported)"
        raise ProfileError(f"profile {profile.name}: no check for protocol {profile.protocol!r}; registered: {known}")
    check(profile)
