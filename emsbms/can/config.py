"""A bus's configuration: which python-can interface and channel, at which bitrate."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class BusConfig:
    """One `[[bus]]`: a python-can bus and the options passed through to it."""

    name: str
    interface: str
    channel: str
    bitrate: int = 500_000
    options: dict[str, Any] = field(default_factory=dict)

    def can_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for python-can's Bus(...)."""
        return {"interface": self.interface, "channel": self.channel, "bitrate": self.bitrate,
                **self.options}
