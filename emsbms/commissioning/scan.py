"""The unified scan: every discovery method on every bus, turned into scored device candidates.

Per bus, one python-can connection runs the methods one after the other:

1. ``passive``: listen for ``listen`` seconds (sends nothing) and score every DBC and inline
   profile, cached and shipped, against the IDs, lengths and rates heard (`emsbms.commissioning.passive`);
2. ``canopen``: the SDO sweep of 0x1000 and heartbeats (`emsbms.commissioning.canopen.scan_canopen`),
   matched against the identity of every canopen profile;
3. ``j1939``: a request for Address Claimed (`emsbms.commissioning.j1939.scan_j1939`), matched
   against the NAME fields of every j1939 profile.

Buses are scanned in parallel, one thread each. Only the methods asked for run, so
``methods=[Method.PASSIVE]`` sends nothing at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import can

from emsbms.commissioning import canopen as canopen_scan
from emsbms.commissioning import j1939 as j1939_scan
from emsbms.commissioning.passive import HIGH_CONFIDENCE, Match, Traffic, listen, match_traffic
from emsbms.errors import BusError, EmsbmsError
from emsbms.profile.loader import list_shipped, load_profile
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.site import BusConfig

log = logging.getLogger(__name__)


class Method(StrEnum):
    """A discovery method."""

    PASSIVE = "passive"
    CANOPEN = "canopen"
    J1939 = "j1939"


Progress = Callable[[str, Method, float, float], None]
"""Called as progress(bus, method, done, total)."""


@dataclass(frozen=True)
class Candidate:
    """A device the scan believes is on a bus, with the profile that fits it and how sure it is."""

    bus: str
    method: Method
    protocol: str
    profile: str | None
    version: str | None
    confidence: float
    evidence: str
    node_id: int | None = None
    source_address: int | None = None
    j1939_name: int | None = None
    id_offset: int = 0
    alternative_to: str | None = None
    device: str | None = None  # the commissioned device it already is, if any
    score: dict[str, Any] = field(default_factory=dict, compare=False)  # the terms of a passive score

    @property
    def high(self) -> bool:
        """High confidence, and not a lesser alternative: what ``--yes`` commissions."""
        return self.confidence >= HIGH_CONFIDENCE and self.alternative_to is None and self.profile is not None

    def device_config(self, name: str) -> DeviceConfig:
        """The device to commission for this candidate."""
        if self.profile is None:
            raise EmsbmsError(f"candidate on bus {self.bus} has no profile: nothing to commission")
        return DeviceConfig(name=name, bus=self.bus, profile=self.profile, id_offset=self.id_offset,
                            node_id=self.node_id, source_address=self.source_address, j1939_name=self.j1939_name)

    def addressing(self) -> list[str]:
        """The candidate's addressing as `key=value` words (the `commission` options it needs)."""
        addr = []
        if self.node_id is not None:
            addr.append(f"node_id={self.node_id}")
        if self.j1939_name is not None:
            addr.append(f"name=0x{self.j1939_name:016X}")
        if self.source_address is not None:
            addr.append(f"source_address=0x{self.source_address:02X}")
        if self.id_offset:
            addr.append(f"id_offset={self.id_offset:+#x}")
        return addr

    def describe(self) -> str:
        addr = self.addressing()
        profile = f"{self.profile} {self.version}" if self.profile else "no matching profile"
        return f"{self.bus}: {profile} ({self.method.value}{', ' + ', '.join(addr) if addr else ''})"

    def as_dict(self) -> dict[str, Any]:
        return {
            "bus": self.bus, "method": self.method.value, "protocol": self.protocol, "profile": self.profile,
            "version": self.version, "confidence": round(self.confidence, 3), "high": self.high,
            "evidence": self.evidence, "node_id": self.node_id, "source_address": self.source_address,
            "j1939_name": None if self.j1939_name is None else f"0x{self.j1939_name:016X}",
            "id_offset": self.id_offset, "alternative_to": self.alternative_to, "device": self.device,
            **self.score,
        }


@dataclass
class BusScan:
    """What the scan of one bus found."""

    bus: BusConfig
    methods: list[Method]
    candidates: list[Candidate] = field(default_factory=list)
    frames: int = 0
    ids: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"bus": self.bus.name, "interface": self.bus.interface, "channel": self.bus.channel,
                "methods": [m.value for m in self.methods], "frames_heard": self.frames, "ids_heard": self.ids,
                "error": self.error, "candidates": [c.as_dict() for c in self.candidates]}


# -- the profiles to match against ---------------------------------------------------------------


def catalog(stored: Iterable[Profile] = ()) -> list[Profile]:
    """The newest version of every profile: the stored ones first, then the shipped ones not stored."""
    newest: dict[str, Profile] = {}
    for p in stored:
        newest[p.name] = p
    for name in list_shipped():
        if name in newest:
            continue
        try:
            newest[name] = load_profile(name)
        except EmsbmsError as e:  # a shipped profile whose protocol is unavailable
            log.debug("scan: skipping shipped profile %s: %s", name, e)
    return [newest[n] for n in sorted(newest)]


def _canopen_identities(profiles: Sequence[Profile]) -> list[tuple[str, Any]]:
    from emsbms.protocols.canopen_od import parse_options

    out = []
    for p in profiles:
        if p.protocol != "canopen":
            continue
        try:
            identity = parse_options(dict(p.model.options), f"profile {p.name}: options").identity
        except EmsbmsError:
            continue
        if identity is not None:
            out.append((p.name, identity))
    return out


def _j1939_matches(profiles: Sequence[Profile]) -> list[tuple[str, dict[str, int], int | None]]:
    from emsbms.protocols.j1939 import profile_options

    out: list[tuple[str, dict[str, int], int | None]] = []
    for p in profiles:
        if p.protocol != "j1939":
            continue
        try:
            opts = profile_options(p)
        except EmsbmsError:
            continue
        out.append((p.name, dict(opts.match), opts.demo_device.j1939_name if opts.demo_device else None))
    return out


# -- one bus ---------------------------------------------------------------------------------------


def _passive_candidates(bus: str, matches: list[Match]) -> list[Candidate]:
    keep = ("expected", "required_heard", "optional", "optional_heard", "coverage", "dlc_ok", "rate_ok", "messages",
            "identity", "identity_text")
    return [Candidate(bus, Method.PASSIVE, "dbc", m.profile, m.version, m.confidence, m.evidence(),
                      id_offset=m.id_offset, alternative_to=m.alternative_to,
                      score={k: v for k, v in m.as_dict().items() if k in keep}) for m in matches]


def _canopen_candidates(bus: str, nodes: list[canopen_scan.CanopenNode], profiles: Sequence[Profile],
                        traffic: Traffic | None) -> list[Candidate]:
    identities = _canopen_identities(profiles)
    versions = {p.name: p.version for p in profiles}
    known = {n.node_id for n in nodes}
    if traffic is not None:  # heartbeats heard while listening, from nodes that did not answer the sweep
        nodes = nodes + [canopen_scan.CanopenNode(n, seen_by=["heartbeat"]) for n in traffic.heartbeats()
                         if n not in known]
    out = []
    for node in nodes:
        best = canopen_scan.best_profile(node, identities)
        profile, confidence, why = best if best is not None else (None, 0.0, "")
        seen = "+".join(node.seen_by)
        dtype = f"device type 0x{node.device_type:08X}" if node.device_type is not None else "no SDO answer"
        ident = "" if node.vendor_id is None else f", vendor 0x{node.vendor_id:08X}"
        ident += "" if node.product_code is None else f", product 0x{node.product_code:08X}"
        out.append(Candidate(bus, Method.CANOPEN, "canopen", profile, versions.get(profile or ""), confidence,
                             f"node {node.node_id} ({seen}): {dtype}{ident}" + (f"; {why}" if why else ""),
                             node_id=node.node_id))
    return out


def _j1939_candidates(bus: str, nodes: list[j1939_scan.J1939Node], profiles: Sequence[Profile]) -> list[Candidate]:
    matches = _j1939_matches(profiles)
    versions = {p.name: p.version for p in profiles}
    out = []
    for node in nodes:
        best = j1939_scan.best_profile(node.fields, matches)
        profile, confidence, why = best if best is not None else (None, 0.0, "")
        f = node.fields
        evidence = (f"address 0x{node.address:02X}, NAME 0x{node.name:016X} (function {f.function},"
                    f" manufacturer {f.manufacturer_code}, industry group {f.industry_group})"
                    + (f"; {why}" if why else ""))
        out.append(Candidate(bus, Method.J1939, "j1939", profile, versions.get(profile or ""), confidence, evidence,
                             source_address=node.address if node.claimed else None, j1939_name=node.name))
    return out


def scan_bus(
    config: BusConfig,
    profiles: Sequence[Profile],
    methods: Sequence[Method] = tuple(Method),
    listen_s: float = 3.0,
    timeout: float = 1.0,
    progress: Progress | None = None,
) -> BusScan:
    """Run the methods on one bus (opening and closing it) and list its candidates, best first."""
    result = BusScan(config, list(methods))
    try:
        bus = can.Bus(**config.can_kwargs())
    except Exception as e:
        raise BusError(f"scan: cannot open bus {config.name} ({config.interface}:{config.channel}): {e}") from e
    name = config.name

    def report(method: Method) -> Callable[[float, float], None]:
        return lambda done, total: progress(name, method, done, total) if progress is not None else None

    try:
        traffic = None
        if Method.PASSIVE in methods:
            traffic = listen(bus, listen_s, report(Method.PASSIVE))
            result.frames, result.ids = traffic.frames, len(traffic.heard)
            result.candidates += _passive_candidates(name, match_traffic(traffic, profiles))
        if Method.CANOPEN in methods:
            nodes = canopen_scan.scan_canopen(bus, timeout=timeout, listen=timeout,
                                              progress=lambda d, t: report(Method.CANOPEN)(d, t))
            result.candidates += _canopen_candidates(name, nodes, profiles, traffic)
        if Method.J1939 in methods:
            j1939 = report(Method.J1939)
            j1939(0, 1)
            answers: list[j1939_scan.J1939Node] = []

            def answered(node: j1939_scan.J1939Node) -> None:
                answers.append(node)
                j1939(len(answers), len(answers) + 1)  # the answers come in until the timeout

            nodes_j = j1939_scan.scan_j1939(bus, timeout, answered)
            j1939(1, 1)
            result.candidates += _j1939_candidates(name, nodes_j, profiles)
    finally:
        bus.shutdown()
    result.candidates.sort(key=lambda c: (c.profile is None, c.alternative_to is not None, -c.confidence))
    return result


def scan(
    buses: Sequence[BusConfig],
    profiles: Sequence[Profile] | None = None,
    methods: Sequence[Method] = tuple(Method),
    listen_s: float = 3.0,
    timeout: float = 1.0,
    progress: Progress | None = None,
    devices: Sequence[DeviceConfig] = (),
) -> list[BusScan]:
    """Scan every bus in parallel; a bus that fails has its `error` set. Candidates that are already
    one of `devices` (same bus, profile and addressing) name it in `device`."""
    chosen = list(profiles) if profiles is not None else catalog()
    results: list[BusScan | None] = [None] * len(buses)

    def one(i: int, config: BusConfig) -> None:
        try:
            results[i] = scan_bus(config, chosen, methods, listen_s, timeout, progress)
        except Exception as e:  # report the bus's failure, scan the others
            log.debug("scan of bus %s failed", config.name, exc_info=True)
            results[i] = BusScan(config, list(methods), error=str(e) or type(e).__name__)

    threads = [threading.Thread(target=one, args=(i, b), name=f"emsbms-scan-{b.name}", daemon=True)
               for i, b in enumerate(buses)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out = [r for r in results if r is not None]
    for r in out:
        r.candidates = [mark_known(c, devices) for c in r.candidates]
    return out


def mark_known(c: Candidate, devices: Sequence[DeviceConfig]) -> Candidate:
    """The candidate, naming the commissioned device it already is (if any)."""
    for d in devices:
        if d.bus != c.bus or d.profile.split("@")[0] != c.profile:
            continue
        same = (d.id_offset == c.id_offset and (c.node_id is None or d.node_id == c.node_id)
                and (c.j1939_name is None or d.j1939_name is None or int(d.j1939_name) == c.j1939_name))
        if same:
            return replace(c, device=d.name)
    return c
