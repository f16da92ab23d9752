"""The CANopen scan: an SDO sweep of 0x1000 over node IDs, passive heartbeat listening, identity and profile match.

``scan_canopen(bus)`` sends an SDO upload request for 0x1000 (device type) to every node ID
(1-127 by default) and listens, the whole time, for heartbeats and boot-ups. Every node that
answers, or is heard, becomes a `CanopenNode`. Nodes that answered the SDO are then asked for
their identity (0x1018 sub 1-4), which is matched against the ``options.identity`` of the
shipped canopen profiles.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import can
import canopen
from canopen.objectdictionary import ObjectDictionary
from canopen.sdo.exceptions import SdoError

from emsbms.commissioning.evidence import compare, describe_fields, device_confidence
from emsbms.errors import BusError
from emsbms.profile.loader import list_shipped, load_profile
from emsbms.protocols.canopen_codes import COB_HEARTBEAT, COB_SDO_RX, COB_SDO_TX, NmtState
from emsbms.protocols.canopen_od import IdentitySpec, parse_options
from emsbms.resources import data_dir
from emsbms.site import BusConfig

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]
"""Called as progress(done, total) while the sweep's requests go out."""

_UPLOAD_1000 = bytes([0x40, 0x00, 0x10, 0x00, 0, 0, 0, 0])
IDENTITY_KEYS = ("vendor_id", "product_code", "revision", "serial")


@dataclass
class CanopenNode:
    """One node found by a scan."""

    node_id: int
    device_type: int | None = None
    vendor_id: int | None = None
    product_code: int | None = None
    revision: int | None = None
    serial: int | None = None
    nmt_state: NmtState | None = None
    seen_by: list[str] = field(default_factory=list)  # "sdo", "sdo-abort", "heartbeat", "boot-up"
    profile: str | None = None

    @property
    def device_profile(self) -> int | None:
        """The CiA device profile number (low 16 bits of 0x1000), e.g. 418."""
        return None if self.device_type is None else self.device_type & 0xFFFF

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``emsbms scan --json``)."""
        def hexed(v: int | None) -> str | None:
            return None if v is None else f"0x{v:08X}"

        return {
            "protocol": "canopen", "node_id": self.node_id,
            "device_type": hexed(self.device_type), "device_profile": self.device_profile,
            **{k: hexed(getattr(self, k)) for k in IDENTITY_KEYS},
            "nmt_state": None if self.nmt_state is None else self.nmt_state.value,
            "seen_by": list(self.seen_by), "profile": self.profile,
        }


def shipped_canopen_identities() -> list[tuple[str, IdentitySpec]]:
    """(profile name, expected identity) of every shipped canopen profile that states one."""
    out = []
    for name in list_shipped():
        try:
            raw = json.loads((data_dir("profiles") / f"{name}.json").read_text(encoding="utf-8"))
            if raw.get("protocol") != "canopen":
                continue
            options = parse_options(dict(load_profile(name).model.options), f"profile {name}: options")
        except Exception as e:  # a broken shipped profile must not break the scan
            log.debug("scan: skipping profile %s: %s", name, e)
            continue
        if options.identity is not None:
            out.append((name, options.identity))
    return out


def match_profile(node: CanopenNode, candidates: list[tuple[str, IdentitySpec]]) -> str | None:
    """The profile whose stated identity fields all equal the node's (the most specific one wins)."""
    best: tuple[int, str] | None = None
    for name, spec in candidates:
        wanted = {k: getattr(spec, k) for k in IDENTITY_KEYS if getattr(spec, k) is not None}
        if spec.device_profile is not None:
            wanted["device_profile"] = spec.device_profile
        if not wanted or any(getattr(node, k) != v for k, v in wanted.items()):
            continue
        if best is None or len(wanted) > best[0]:
            best = (len(wanted), name)
    return None if best is None else best[1]


def best_profile(node: CanopenNode, candidates: list[tuple[str, IdentitySpec]]) -> tuple[str, float, str] | None:
    """The profile the node's identity points to, with its confidence and why (None: no profile fits).

    The device profile number (0x1000) says what kind of device it is; the 0x1018 fields say whose.
    `evidence.device_confidence` gives the confidence; ties go to the profile stating more fields.
    """
    found = {"device_profile": node.device_profile, **{k: getattr(node, k) for k in IDENTITY_KEYS}}
    best: tuple[float, int, str, str] | None = None
    for name, spec in candidates:
        stated = {k: getattr(spec, k) for k in ("device_profile", *IDENTITY_KEYS) if getattr(spec, k) is not None}
        fields = compare(stated, found)
        confidence = device_confidence(("device_profile",), fields)
        if confidence is None:
            continue
        show = {k: "{}" if k == "device_profile" else "0x{:08X}" for k in stated}
        why = describe_fields(fields, stated, found, show)
        if best is None or (confidence, len(stated)) > best[:2]:
            best = (confidence, len(stated), name, why)
    return None if best is None else (best[2], best[0], best[3])


class _Sweep:
    """Collects what the nodes answer during a scan (runs on the Notifier thread)."""

    def __init__(self, network: canopen.Network, node_ids: list[int]) -> None:
        self.nodes: dict[int, CanopenNode] = {}
        for n in node_ids:
            network.subscribe(COB_SDO_TX + n, self._on_sdo)
            network.subscribe(COB_HEARTBEAT + n, self._on_heartbeat)

    def _node(self, node_id: int) -> CanopenNode:
        return self.nodes.setdefault(node_id, CanopenNode(node_id))

    def _on_sdo(self, can_id: int, data: bytearray, timestamp: float) -> None:
        if len(data) < 8 or data[1:4] != b"\x00\x10\x00":
            return  # not the answer to our 0x1000 upload
        node = self._node(can_id - COB_SDO_TX)
        command = data[0]
        if command & 0xE0 == 0x40 and command & 0x02:  # expedited upload response
            size = 4 - ((command >> 2) & 0x3) if command & 0x01 else 4
            node.device_type = int.from_bytes(data[4:4 + size], "little")
            _note(node, "sdo")
        elif command == 0x80:
            _note(node, "sdo-abort")

    def _on_heartbeat(self, can_id: int, data: bytearray, timestamp: float) -> None:
        if len(data) != 1:
            return
        node = self._node(can_id - COB_HEARTBEAT)
        state = NmtState.from_byte(data[0])
        node.nmt_state = state
        _note(node, "boot-up" if state is NmtState.INITIALISING else "heartbeat")


def _note(node: CanopenNode, how: str) -> None:
    if how not in node.seen_by:
        node.seen_by.append(how)


def scan_canopen(
    bus: can.BusABC | BusConfig,
    node_ids: Iterable[int] = range(1, 128),
    timeout: float = 0.5,
    listen: float = 1.0,
    progress: Progress | None = None,
) -> list[CanopenNode]:
    """Find the CANopen nodes on a bus (an open python-can bus, or a BusConfig to open and close).

    `timeout`: how long to wait for SDO answers after the last request (and per identity read);
    `listen`: the shortest total time to listen for heartbeats. Returns nodes sorted by node ID.
    """
    ids = [n for n in node_ids if 1 <= n <= 127]
    own = isinstance(bus, BusConfig)
    if isinstance(bus, BusConfig):
        config = bus
        try:
            bus = can.Bus(**config.can_kwargs())
        except Exception as e:
            raise BusError(f"scan: cannot open bus {config.name} ({config.interface}:{config.channel}): {e}") from e
    network = canopen.Network(bus)
    notifier = can.Notifier(bus, network.listeners, 0.1)
    try:
        started = time.monotonic()
        sweep = _Sweep(network, ids)
        _send_requests(network, ids, progress)
        time.sleep(max(timeout, listen - (time.monotonic() - started)))
        nodes = sorted(sweep.nodes.values(), key=lambda n: n.node_id)
        candidates = shipped_canopen_identities()
        for node in nodes:
            if "sdo" in node.seen_by:
                _read_identity(network, node, timeout)
            node.profile = match_profile(node, candidates)
    finally:
        notifier.stop()
        if own:
            bus.shutdown()
    log.info("scan: %d CANopen node(s): %s", len(nodes), ", ".join(str(n.node_id) for n in nodes))
    return nodes


def _send_requests(network: canopen.Network, ids: list[int], progress: Progress | None) -> None:
    for i, n in enumerate(ids, 1):
        for attempt in range(3):
            try:
                network.send_message(COB_SDO_RX + n, _UPLOAD_1000)
                break
            except can.CanError as e:  # a full transmit queue: give it a moment
                if attempt == 2:
                    raise BusError(f"scan: cannot send the SDO request to node {n}: {e}") from e
                time.sleep(0.01)
        if progress is not None:
            progress(i, len(ids))


def _read_identity(network: canopen.Network, node: CanopenNode, timeout: float) -> None:
    empty: Any = ObjectDictionary  # untyped constructor
    remote = canopen.RemoteNode(node.node_id, empty())
    network.add_node(remote)
    remote.sdo.RESPONSE_TIMEOUT = timeout
    try:
        for sub, key in enumerate(IDENTITY_KEYS, 1):
            try:
                data = remote.sdo.upload(0x1018, sub)
            except SdoError as e:
                log.debug("scan: node %d 0x1018 sub %d: %s", node.node_id, sub, e)
                continue
            setattr(node, key, int.from_bytes(data[:4], "little"))
    finally:
        del network[node.node_id]
