"""The J1939 scan: ask every ECU on a bus for its NAME and match it to a shipped profile.

``scan_j1939(bus, timeout)`` sends a Request for Address Claimed (PGN 0xEE00) to the global
address from the null address (no claim of our own is needed or made), then collects the
address-claimed answers through can-j1939 until the timeout. Each answer becomes a
`J1939Node`: address, NAME, the NAME's decoded fields and the shipped profile whose
``options.match`` (or demo NAME) fits it.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import can

from emsbms.commissioning.evidence import compare, describe_fields, device_confidence
from emsbms.errors import BusError
from emsbms.profile.loader import list_shipped, load_profile
from emsbms.protocols.j1939 import profile_options
from emsbms.protocols.j1939_names import (
    ADDRESS_GLOBAL,
    ADDRESS_NULL,
    PGN_ADDRESS_CLAIMED,
    NameFields,
    decode_name,
)
from emsbms.protocols.j1939_stack import DEFAULT_EDGE_NAME, DrivenEcu, GuardedCA
from emsbms.resources import data_dir
from emsbms.site import BusConfig

log = logging.getLogger(__name__)

Progress = Callable[["J1939Node"], None]


@dataclass(frozen=True)
class J1939Node:
    """One ECU found by a scan."""

    address: int  # 254: the ECU announced that it cannot claim an address
    fields: NameFields
    profile: str | None = None

    @property
    def name(self) -> int:
        return self.fields.name

    @property
    def claimed(self) -> bool:
        return self.address != ADDRESS_NULL

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (``emsbms scan --json``)."""
        return {"protocol": "j1939", "address": self.address, "address_hex": f"0x{self.address:02X}",
                "claimed": self.claimed, **self.fields.as_dict(), "profile": self.profile}


def shipped_j1939_matches() -> list[tuple[str, dict[str, int], int | None]]:
    """(profile name, NAME fields to match, demo NAME) of every shipped j1939 profile."""
    out: list[tuple[str, dict[str, int], int | None]] = []
    for name in list_shipped():
        try:
            raw = json.loads((data_dir("profiles") / f"{name}.json").read_text(encoding="utf-8"))
            if raw.get("protocol") != "j1939":
                continue
            opts = profile_options(load_profile(name))
        except Exception as e:  # a broken shipped profile must not break the scan
            log.debug("scan: skipping profile %s: %s", name, e)
            continue
        demo = opts.demo_device.j1939_name if opts.demo_device else None
        out.append((name, dict(opts.match), demo))
    return out


def match_profile(fields: NameFields, candidates: list[tuple[str, dict[str, int], int | None]]) -> str | None:
    """The first profile whose match fields all equal the NAME's (or whose demo NAME it is)."""
    for name, match, demo in candidates:
        if demo == fields.name or (match and all(getattr(fields, k) == v for k, v in match.items())):
            return name
    return None


def best_profile(fields: NameFields, candidates: list[tuple[str, dict[str, int], int | None]]
                 ) -> tuple[str, float, str] | None:
    """The profile the NAME points to, with its confidence and why (None: no profile fits).

    A profile's demo NAME gives 1.0. Otherwise the function (with the industry group) says what
    kind of ECU it is and the other ``options.match`` fields whose: `evidence.device_confidence`
    with 0.9 when all of them match.
    """
    best: tuple[float, int, str, str] | None = None
    for name, match, demo in candidates:
        if demo == fields.name:
            found: tuple[float, int, str, str] = (1.0, 99, name, f"NAME is {name}'s demo device")
        else:
            got = {k: getattr(fields, k) for k in match}
            compared = compare(match, got)
            confidence = device_confidence(("function", "industry_group"), compared, full=0.9)
            if confidence is None:
                continue
            found = (confidence, len(match), name, describe_fields(compared, match, got))
        if best is None or found[:2] > best[:2]:
            best = found
    return None if best is None else (best[2], best[0], best[3])


def scan_j1939(bus: can.BusABC | BusConfig, timeout: float = 1.0, progress: Progress | None = None) -> list[J1939Node]:
    """Request Address Claimed from every ECU on `bus` and list the answers, sorted by address.

    `bus` is an open python-can bus (the caller keeps it), or a BusConfig to open and close.
    `progress` is called with each node as it answers (again if it claims another address).
    Raises BusError if the bus cannot be opened or the request cannot be sent.
    """
    if isinstance(bus, BusConfig):
        config = bus
        try:
            opened = can.Bus(**config.can_kwargs())
        except Exception as e:
            raise BusError(f"scan: cannot open bus {config.name} ({config.interface}:{config.channel}): {e}") from e
        try:
            return scan_j1939(opened, timeout, progress)
        finally:
            opened.shutdown()
    candidates = shipped_j1939_matches()
    found: dict[int, J1939Node] = {}  # by NAME

    def claimed(address: int, name: int) -> None:
        fields = decode_name(name)
        node = J1939Node(address, fields, match_profile(fields, candidates))
        if found.get(name) != node:
            found[name] = node
            if progress is not None:
                progress(node)

    sent: list[can.Message] = []
    ecu = DrivenEcu(sent.append)
    ca = GuardedCA(DEFAULT_EDGE_NAME, None, claimed)  # never started: it listens, it does not claim
    ecu.add_ca(controller_application=ca)
    ca.send_request(0, PGN_ADDRESS_CLAIMED, ADDRESS_GLOBAL)  # from the null address 254
    _send_all(bus, sent)
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = bus.recv(min(left, 0.05))
        except Exception as e:
            raise BusError(f"J1939 scan: receiving failed: {e}") from e
        if msg is not None and msg.is_extended_id and not msg.is_error_frame:
            ecu.notify(msg.arbitration_id, msg.data, msg.timestamp)
        ecu.run_jobs(time.time())
        _send_all(bus, sent)
    nodes = sorted(found.values(), key=lambda n: (n.address, n.name))
    log.info("scan: %d J1939 node(s): %s", len(nodes), ", ".join(f"0x{n.address:02X}" for n in nodes))
    return nodes


def _send_all(bus: can.BusABC, frames: list[can.Message]) -> None:
    while frames:
        msg = frames.pop(0)
        try:
            bus.send(msg)
        except Exception as e:
            raise BusError(f"J1939 scan: cannot send 0x{msg.arbitration_id:08X}: {e}") from e
