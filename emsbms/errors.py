"""The one error tree of emsbms: every error the package raises derives from EmsbmsError."""

from __future__ import annotations


class EmsbmsError(Exception):
    """Root of every emsbms error."""


class ConfigError(EmsbmsError, ValueError):
    """A site file is malformed: names the file, the table and the key."""


class ProfileError(EmsbmsError, ValueError):
    """A device profile is invalid: names the profile and the JSON path of the fault."""


class UnknownAddressError(EmsbmsError, KeyError):
    """A channel or command address names no known device or channel."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it plain
        return str(self.args[0]) if self.args else ""


class CommandRejected(EmsbmsError):
    """A command failed validation before anything was sent."""


class ReadTimeout(EmsbmsError, TimeoutError):
    """No fresh value arrived for a channel within the timeout."""


class BusError(EmsbmsError):
    """A CAN bus could not be opened or failed while in use."""


class UnsupportedError(EmsbmsError):
    """The device's protocol cannot do what was asked (e.g. an on-demand read of a DBC device)."""


class DecodeError(EmsbmsError):
    """A frame could not be decoded under its profile."""
