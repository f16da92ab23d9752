"""Shared fixtures: unique virtual bus channels and small site builders."""

from __future__ import annotations

import time
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


def wait(predicate: Callable[[], object], timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns its last truth value.

    Tests assert on the result, so a slow machine only makes them slower, never wrong.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return bool(predicate())
