"""Command scenario: the round trip of ``Edge.write`` against the simulators, and the bare libraries'.

Three acknowledgement paths, each on its own python-can virtual bus with its real simulator:

- DBC echo: ``acme-hv`` ``SetChargeCurrent`` (EMS_Setpoints out, the value echoed in ACME_Status,
  sent every 100 ms). Baseline: the same frame sent with a bare python-can bus and cantools,
  waiting for the echo.
- CANopen SDO: ``cia418-bms`` ``SetChargeVoltage`` (an SDO download of 0x480C). Baseline: the
  same download through a bare ``canopen`` RemoteNode.
- J1939 DM11/ACK: ``j1939-hvess`` ``ResetFaults`` (request of PGN 0xFED3, answered by an ACK).
  Baseline: the same request sent from another address with a bare python-can bus, waiting for
  the ACK frame.

The baseline runs first (without the edge: two SDO clients of one node would see each other's
answers), then the edge, on the same simulator. Values alternate so that every answer is new.
"""

from __future__ import annotations

import random
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import can
import canopen

from emsbms.bench.measure import percentile
from emsbms.edge import Edge
from emsbms.profile import load_profile
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site
from emsbms.types import CommandStatus

TIMEOUT_S = 3.0
JITTER_S = 0.1  # the DBC device's status period
BASELINE_SA = 0xF9  # the bare J1939 requester's source address


@dataclass
class CommandResult:
    """Round-trip times of one acknowledgement path, edge and bare library, in ms."""

    path: str
    address: str
    writes: int
    acked: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    baseline_acked: int
    baseline_p50_ms: float | None
    baseline_p99_ms: float | None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        ok = self.p50_ms is not None and self.baseline_p50_ms
        d["ratio_p50_vs_baseline"] = round(self.p50_ms / self.baseline_p50_ms, 2) if ok else None  # type: ignore[operator]
        return d


@dataclass(frozen=True)
class _Path:
    name: str
    device: dict[str, Any]
    command: str
    values: tuple[float, float]
    baseline: Callable[[Site], _Bare]  # a bare client; calling it makes one round trip, True when acknowledged


def _site(device: dict[str, Any]) -> Site:
    tag = uuid.uuid4().hex[:8]
    return parse_site({"site": {"org": "bench", "name": "commands"},
                       "bus": [{"name": "can0", "interface": "virtual", "channel": f"cmd-{tag}"}],
                       "device": [{"name": "bms", "bus": "can0", **device}]})


def _wait_for(bus: can.BusABC, match: Callable[[can.Message], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        msg = bus.recv(left)
        if msg is not None and match(msg):
            return True
    return False


class _Bare:
    """A bare-library client of the simulated device: open once, round trips, close."""

    def __init__(self, site: Site) -> None:
        self.bus = can.Bus(**site.buses[0].can_kwargs())

    def __call__(self, value: float) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        self.bus.shutdown()


class _DbcEcho(_Bare):
    def __init__(self, site: Site) -> None:
        super().__init__(site)
        db = load_profile("acme-hv").db
        self.out, self.status = db.get_message_by_name("EMS_Setpoints"), db.get_message_by_name("ACME_Status")
        self.values = {s.name: (s.initial or 0) for s in self.out.signals}
        self.values["DischargeCurrentRequest"] = 6553.5  # idle

    def __call__(self, value: float) -> bool:
        data = self.out.encode({**self.values, "ChargeCurrentRequest": value}, strict=False)
        self.bus.send(can.Message(arbitration_id=self.out.frame_id, data=data, is_extended_id=False))
        status = self.status

        def echoed(m: can.Message) -> bool:
            if m.arbitration_id != status.frame_id:
                return False
            got = status.decode(bytes(m.data), decode_choices=False)["ChargeCurrentRequestEcho"]
            return bool(abs(got - value) < 0.05)

        return _wait_for(self.bus, echoed, TIMEOUT_S)


class _CanopenSdo(_Bare):
    def __init__(self, site: Site) -> None:
        self.network = canopen.Network()
        self.network.connect(**site.buses[0].can_kwargs())
        self.node = self.network.add_node(1, str(load_profile("cia418-bms").source_path))
        self.node.sdo.RESPONSE_TIMEOUT = TIMEOUT_S

    def __call__(self, value: float) -> bool:
        try:
            self.node.sdo[0x480C].phys = value
        except Exception:
            return False
        return True

    def close(self) -> None:
        self.network.disconnect()


class _J1939Dm11(_Bare):
    SA = 0xF3

    def __call__(self, value: float) -> bool:
        sa = self.SA
        self.bus.send(can.Message(arbitration_id=0x18EA0000 | sa << 8 | BASELINE_SA, data=bytes([0xD3, 0xFE, 0x00]),
                                  is_extended_id=True))

        def acked(m: can.Message) -> bool:
            return bool(m.is_extended_id and (m.arbitration_id >> 8) & 0x3FF00 == 0xE800
                        and m.arbitration_id & 0xFF == sa and bytes(m.data[5:8]) == b"\xd3\xfe\x00" and m.data[0] == 0)

        return _wait_for(self.bus, acked, TIMEOUT_S)


PATHS = (
    _Path("DBC echo", {"profile": "acme-hv"}, "SetChargeCurrent", (42.5, 40.0), _DbcEcho),
    _Path("CANopen SDO", {"profile": "cia418-bms", "node_id": 1}, "SetChargeVoltage", (55.0, 54.0), _CanopenSdo),
    _Path("J1939 DM11/ACK", {"profile": "j1939-hvess", "source_address": 0xF3, "j1939_name": 0x9000A0005CA01F3A},
          "ResetFaults", (1.0, 1.0), _J1939Dm11),
)


def _round_trips(write: Callable[[float], bool], values: tuple[float, float], writes: int) -> list[float]:
    """ms of each acknowledged write, after one untimed write (claims, connections settle).

    A random pause before each write puts it at a random phase of the device's cyclic frames
    (an echo arrives with the next status frame, so back-to-back writes would all wait one period).
    """
    write(values[1])
    rng = random.Random(7)
    times = []
    for i in range(writes):
        time.sleep(rng.uniform(0.0, JITTER_S))
        t0 = time.perf_counter()
        if write(values[i % 2]):
            times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _stats(times: list[float]) -> tuple[float | None, float | None, float | None]:
    r = [None if x is None else round(x, 2) for x in (percentile(times, 50), percentile(times, 99))]
    return r[0], r[1], round(max(times), 2) if times else None


def run_path(path: _Path, writes: int = 30) -> CommandResult:
    """Round trips of one path: the bare library first, then the edge, on the same simulator."""
    site = _site(path.device)
    address = f"bms/{path.command}"
    with Simulation(site):
        time.sleep(0.5)  # the simulator claims its address / boots
        bare = path.baseline(site)
        try:
            base = _round_trips(bare, path.values, writes)
        finally:
            bare.close()
        with Edge(site) as edge:
            edge.wait_until(lambda s: s.value("bms/CommState") == "OK", 10.0)
            edge_times = _round_trips(lambda v: edge.write(address, v, TIMEOUT_S).status is CommandStatus.ACKED,
                                      path.values, writes)
    p50, p99, worst = _stats(edge_times)
    b50, b99, _ = _stats(base)
    return CommandResult(path.name, address, writes, len(edge_times), p50, p99, worst, len(base), b50, b99)


def run(writes: int = 30) -> list[CommandResult]:
    """The command scenario over the three acknowledgement paths."""
    return [run_path(p, writes) for p in PATHS]
