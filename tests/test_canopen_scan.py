"""The CANopen scan finds exactly the simulated nodes, with device type, identity and matching profile."""

from __future__ import annotations

import json

import can
import pytest

from emsbms.commissioning.canopen import CanopenNode, match_profile, scan_canopen, shipped_canopen_identities
from emsbms.protocols.canopen_codes import NmtState
from emsbms.sim.runner import Simulation
from tests.conftest import virtual_site


def test_scan_finds_exactly_the_simulated_nodes_and_a_heartbeat_only_node() -> None:
    site = virtual_site(["can0"], [
        {"name": "bms_a", "bus": "can0", "profile": "cia418-bms", "node_id": 3},
        {"name": "bms_b", "bus": "can0", "profile": "cia418-bms", "node_id": 9, "nmt_master": True},
    ])
    channel = site.bus("can0").channel
    progress: list[tuple[int, int]] = []
    with Simulation(site), can.Bus(interface="virtual", channel=channel) as other, \
            can.Bus(interface="virtual", channel=channel) as scanner:
        # a node without an SDO server that only sends heartbeats (node 20, operational)
        beat = other.send_periodic(can.Message(arbitration_id=0x714, data=b"\x05", is_extended_id=False), 0.1)
        try:
            nodes = scan_canopen(scanner, timeout=0.5, listen=1.0, progress=lambda d, t: progress.append((d, t)))
        finally:
            beat.stop()
    assert [n.node_id for n in nodes] == [3, 9, 20]
    a, b, hb_only = nodes
    for node in (a, b):
        assert node.device_type == 0x1A2 and node.device_profile == 418
        assert node.vendor_id == 0x454D5342 and node.product_code == 0x418 and node.revision == 0x10000
        assert node.profile == "cia418-bms"
        assert "sdo" in node.seen_by and "heartbeat" in node.seen_by
    assert a.nmt_state is NmtState.OPERATIONAL  # starts by itself
    assert b.nmt_state is NmtState.PRE_OPERATIONAL  # waits for an NMT master
    assert hb_only.device_type is None and hb_only.profile is None and hb_only.seen_by == ["heartbeat"]
    assert progress[-1] == (127, 127) and len(progress) == 127
    doc = json.loads(json.dumps([n.as_dict() for n in nodes]))
    assert doc[0]["device_type"] == "0x000001A2" and doc[0]["profile"] == "cia418-bms"
    assert doc[0]["vendor_id"] == "0x454D5342" and doc[2]["nmt_state"] == "OPERATIONAL"


def test_scan_of_an_empty_bus_finds_nothing_and_can_open_its_own_bus() -> None:
    site = virtual_site(["can0"], [])
    assert scan_canopen(site.bus("can0"), node_ids=range(1, 20), timeout=0.2, listen=0.2) == []


@pytest.mark.parametrize(("node", "expected"), [
    (CanopenNode(1, device_type=0x1A2, vendor_id=0x454D5342, product_code=0x418), "cia418-bms"),
    (CanopenNode(1, device_type=0x1A2, vendor_id=0x454D5342, product_code=0x419), None),
    (CanopenNode(1, device_type=0x191, vendor_id=0x454D5342, product_code=0x418), None),
    (CanopenNode(1), None),
])
def test_profile_match_needs_every_stated_identity_field(node: CanopenNode, expected: str | None) -> None:
    assert match_profile(node, shipped_canopen_identities()) == expected
