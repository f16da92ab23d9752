"""The channel and command addresses of alarm instances, and the error of an acknowledgement."""

from __future__ import annotations

from emsbms.errors import EmsbmsError


class AlarmError(EmsbmsError):
    """An acknowledgement names no known alarm, or one with nothing to acknowledge."""


def state_address(rule: str, device: str) -> str:
    """The instance's channel (kind STATE, the state's value): ``alarms/<rule>/<device>/State``."""
    return f"alarms/{rule}/{device}/State"


def ack_target(address: str) -> tuple[str, str]:
    """(rule, device) of an acknowledgement command address ``alarms/<rule>/<device>/Ack``."""
    parts = address.split("/")
    if len(parts) != 4 or parts[0] != "alarms" or parts[3] != "Ack" or not parts[1] or not parts[2]:
        raise AlarmError(f"expected an address alarms/<rule>/<device>/Ack, found {address!r}")
    return parts[1], parts[2]
