"""A grouped bus's devices with background work (CANopen's SDO reads) run it in their worker only."""

from __future__ import annotations

import random

from emsbms.edge import Edge
from emsbms.sim.runner import Simulation
from emsbms.site import parse_site
from emsbms.types import CommState
from tests.conftest import wait


def test_a_canopen_device_on_a_grouped_bus_starts_and_decodes_in_its_worker() -> None:
    port = random.Random().randrange(43000, 47900)
    site = parse_site({
        "site": {"org": "test", "name": "bg", "workers": "on"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": "239.74.163.7", "port": port}],
        "device": [{"name": "co_0", "bus": "can0", "profile": "cia418-bms", "node_id": 1}],
    })
    with Simulation(site), Edge(site) as edge:  # raised KeyError 'can0' in start(): no dispatcher in this process
        assert edge.pool is not None and edge.dispatchers == {}
        assert wait(lambda: edge.registry.get("co_0/CommState") is not None
                    and edge.registry.get("co_0/CommState").value == CommState.OK, 120)  # type: ignore[union-attr]
        assert edge._device_workers == {}  # its SDO reads run in the worker, not here
