"""Shared fixtures: unique virtual bus channels and small site builders."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from emsbms.site import Site, parse_site


@pytest.fixture
def channel() -> Callable[[str], str]:
    """Unique python-can `virtual` channel names, so parallel tests never share a bus."""
    tag = uuid.uuid4().hex[:8]
    return lambda name="can": f"{name}-{tag}"


def virtual_site(buses: list[str], devices: list[dict[str, Any]], tag: str | None = None) -> Site:
    """A site on python-can `virtual` buses with unique channels; devices as site-file tables."""
    tag = tag or uuid.uuid4().hex[:8]
    return parse_site(
        {
            "site": {"org": "test", "name": "test"},
            "bus": [{"name": b, "interface": "virtual", "channel": f"{b}-{tag}"} for b in buses],
            "device": devices,
        }
    )
