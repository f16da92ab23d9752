"""The dispatcher: pure arbitration on a fake clock, then writes through a real Edge on a virtual bus."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import can
import pytest

from emsbms import Edge
from emsbms.core.arbiter import Arbiter, Write
from emsbms.core.controller import Clamp, ControllerOutput, ProcessImage, Setpoint, Source
from emsbms.core.cycle import Cycle, CycleRunner
from emsbms.core.dispatcher import CommandDispatcher, Override
from emsbms.sim.runner import Simulation
from emsbms.types import CommandResult, CommandStatus
from tests.conftest import virtual_site, wait

A, B = "bms_0/SetChargeCurrent", "bms_0/SetDischargeCurrent"
S = 1_000_000  # one second in µs


def plan(arbiter: Arbiter, now_us: int, safety: dict[str, float] | None = None, auto: dict[str, float] | None = None,
         clamps: dict[str, Clamp] | None = None, ttl: dict[str, int | None] | None = None) -> list[Write]:
    """One cycle's writes, each recorded as sent."""
    p = arbiter.plan({Source.SAFETY: safety or {}, Source.AUTO: auto or {}}, clamps or {}, now_us, ttl)
    for w in p.writes:
        arbiter.record(w.address, w.value, now_us, True)
    return p.writes


def test_safety_beats_manual_beats_auto() -> None:
    arbiter = Arbiter()
    arbiter.set_override(A, 50.0, 0, expires_s=900)
    arbiter.set_override(B, 60.0, 0, expires_s=900)
    writes = plan(arbiter, S, safety={A: 10.0}, auto={A: 30.0, B: 70.0, "bms_1/SetChargeCurrent": 80.0})
    assert writes == [Write(A, 10.0, Source.SAFETY), Write(B, 60.0, Source.MANUAL),
                      Write("bms_1/SetChargeCurrent", 80.0, Source.AUTO)]


def test_an_override_returns_control_to_auto_at_exactly_its_expiry() -> None:
    arbiter = Arbiter()
    o = arbiter.set_override(A, 50.0, 2 * S, expires_s=900)
    assert o == Override(A, 50.0, 902 * S, "manual")
    arbiter.record(A, 50.0, 2 * S, True)  # the manual write itself went out
    assert plan(arbiter, 3 * S, auto={A: 30.0}) == []  # the override holds, already sent
    assert plan(arbiter, 902 * S - 1, auto={A: 30.0}) == []
    assert arbiter.overrides(902 * S - 1) == [o]
    p = arbiter.plan({Source.AUTO: {A: 30.0}}, {}, 902 * S)
    assert p.writes == [Write(A, 30.0, Source.AUTO)]
    assert p.events == [f"override of {A} = 50 expired; control returns to auto"]
    assert arbiter.overrides(902 * S) == []


def test_a_cancelled_override_returns_control_to_auto() -> None:
    arbiter = Arbiter()
    arbiter.set_override(A, 50.0, 0)
    assert plan(arbiter, 1, auto={A: 30.0}) == [Write(A, 50.0, Source.MANUAL)]
    assert arbiter.cancel(A) == Override(A, 50.0, 900 * S, "manual")
    assert plan(arbiter, 2, auto={A: 30.0}) == [Write(A, 30.0, Source.AUTO)]
    assert arbiter.cancel(A) is None


def test_a_clamp_bounds_manual_and_auto_but_not_safety() -> None:
    arbiter = Arbiter()
    arbiter.set_override(A, 150.0, 0)
    clamps = {A: Clamp(None, 80.0), B: Clamp(20.0, 90.0), "bms_1/SetChargeCurrent": Clamp(None, 5.0)}
    writes = plan(arbiter, 1, safety={"bms_1/SetChargeCurrent": 9.0}, auto={A: 30.0, B: 10.0}, clamps=clamps)
    assert writes == [Write(A, 80.0, Source.MANUAL), Write(B, 20.0, Source.AUTO),
                      Write("bms_1/SetChargeCurrent", 9.0, Source.SAFETY)]


def test_a_rejecting_clamp_refuses_auto_once_and_cancels_an_override_above_it() -> None:
    arbiter = Arbiter()
    arbiter.set_override(A, 150.0, 0)
    clamps = {A: Clamp(None, 80.0, True, "CCL 80 A"), B: Clamp(None, 40.0, True, "DCL 40 A")}
    p = arbiter.plan({Source.AUTO: {A: 30.0, B: 45.0}}, clamps, 1)
    assert p.writes == [Write(A, 30.0, Source.AUTO)]
    assert p.events == [f"override of {A} cancelled: 150 is outside the live limits [None, 80.0] (CCL 80 A);"
                        " control returns to auto",
                        f"auto setpoint {B} = 45 refused: 45 is outside the live limits [None, 40.0] (DCL 40 A)"]
    assert arbiter.overrides(1) == []
    assert arbiter.plan({Source.AUTO: {B: 45.0}}, clamps, 2).events == []  # said once per value


def test_only_changed_or_ttl_due_values_are_sent() -> None:
    arbiter = Arbiter()
    ttl = {A: 30 * S, B: None}
    sent = [(t, [(w.address, w.value) for w in plan(arbiter, t, auto={A: a, B: b}, ttl=ttl)])
            for t, a, b in [(0, 10.0, 5.0), (1 * S, 10.0, 5.0), (2 * S, 12.0, 5.0), (17 * S - 1, 12.0, 5.0),
                            (17 * S, 12.0, 5.0), (100 * S, 12.0, 5.0), (101 * S, 12.0, 6.0)]]
    assert sent == [(0, [(A, 10.0), (B, 5.0)]), (1 * S, []), (2 * S, [(A, 12.0)]), (17 * S - 1, []),
                    (17 * S, [(A, 12.0)]),  # half the 30 s TTL after it was sent: due again
                    (100 * S, [(A, 12.0)]), (101 * S, [(B, 6.0)])]


def test_a_failed_write_is_tried_again_after_the_retry_time() -> None:
    arbiter = Arbiter(retry_us=10 * S)
    arbiter.record(A, 10.0, 0, False)
    assert [arbiter.due(A, 10.0, t, None) for t in (10 * S - 1, 10 * S)] == [False, True]
    assert arbiter.due(A, 11.0, 1, None) is True


# -- through a real Edge, a simulated BMS and a captured virtual bus ---------------------------------


class Stepper:
    """A toy AUTO controller: the charge current it asks for is `value`."""

    name, source, priority = "stepper", Source.AUTO, 0

    def __init__(self) -> None:
        self.value = 10.0

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        return ControllerOutput([Setpoint(A, self.value)])


class Clock:
    def __init__(self) -> None:
        self.us = 1_000 * S

    def __call__(self) -> int:
        return self.us


@pytest.fixture
def live() -> Iterator[tuple[Edge, can.BusABC]]:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "acme-lv-bytemap"}])
    with can.Bus(interface="virtual", channel=site.bus("can0").channel) as listener, Simulation(site), \
            Edge(site) as edge:
        edge.read("bms_0/Soc", timeout=10)  # heard: CommState OK, commands accepted
        yield edge, listener


def requests(edge: Edge, listener: can.BusABC) -> list[float]:
    """The charge-current requests (0x618) on the bus so far, decoded."""
    message = edge.profiles["bms_0"].message("LV_ChargeRequest")
    out = []
    while (msg := listener.recv(0)) is not None:
        if msg.arbitration_id == 0x618:
            out.append(round(message.decode(msg.data)["ChargeCurrentRequest"], 1))
    return out


def test_setpoints_reach_the_bus_once_per_change_and_a_manual_override_wins_until_it_expires(
        live: tuple[Edge, can.BusABC]) -> None:
    edge, listener = live
    clock, stepper, events = Clock(), Stepper(), list[str]()
    dispatcher = CommandDispatcher.for_edge(edge, clock=clock, on_event=events.append)
    runner = CycleRunner(edge, Cycle([stepper]), dispatcher, wall=clock)

    def done(n: int) -> bool:
        return wait(lambda: dispatcher.writes[Source.AUTO] == n)

    try:
        for value, writes in ((10.0, 1), (10.0, 1), (10.0, 1), (20.0, 2), (20.0, 2)):
            stepper.value = value
            runner.run_once()
            clock.us += S
            assert done(writes), (dispatcher.writes, events)
        assert requests(edge, listener) == [10.0, 20.0]

        result = dispatcher.manual_write(A, 50.0, expires_s=5)  # at 1005 s: until 1010 s
        assert (result.status, result.value) == (CommandStatus.SENT, 50.0)
        assert dispatcher.overrides() == [Override(A, 50.0, 1010 * S, "manual")]
        assert f"override of {A} = 50 for 5 s, until 00:16:50Z (manual)" in events  # 1010 s after the epoch
        for _ in range(5):  # 1005 .. 1009 s: the override holds
            runner.run_once()
            clock.us += S
        assert requests(edge, listener) == [50.0]
        assert clock.us == 1010 * S
        runner.run_once()  # at its expiry: auto again
        assert done(3)
        assert requests(edge, listener) == [20.0]
        assert dispatcher.overrides() == []

        stepper.value = 150.0  # outside the profile's 0..100 A: the edge refuses it
        runner.run_once()
        assert done(4)
        assert (dispatcher.rejected[Source.AUTO], edge.snapshot().value("core/Rejected/auto")) == (1, 1)
        assert edge.snapshot().value("core/Writes/auto") == 4
        assert edge.snapshot().value("core/Writes/manual") == 1
        assert requests(edge, listener) == []
        assert any(e.startswith(f"auto write {A} = 150: rejected") and "100" in e for e in events)
        assert f"override of {A} = 50 expired; control returns to auto" in events
    finally:
        dispatcher.stop()


def test_a_manual_write_the_edge_refuses_records_no_override(live: tuple[Edge, can.BusABC]) -> None:
    edge, listener = live
    dispatcher = CommandDispatcher.for_edge(edge)
    try:
        result = dispatcher.manual_write(A, 101.0)
        assert result.status is CommandStatus.REJECTED and "100" in result.detail
        assert dispatcher.overrides() == []
        assert dispatcher.manual_write(A, 5.0, expires_s=0).detail == (
            f"{A}: expires_s: expected a positive number of seconds, found 0; nothing sent")
        assert (dispatcher.writes[Source.MANUAL], dispatcher.rejected[Source.MANUAL]) == (2, 2)
        assert edge.snapshot().value("core/Rejected/manual") == 2
        assert requests(edge, listener) == []
    finally:
        dispatcher.stop()


class GatedWriter:
    """A writer whose writes to bms_1 wait for a gate (a device that answers slowly); the others answer at once."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.done: list[tuple[str, float]] = []
        self.timeouts: list[float] = []

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult:
        if address.startswith("bms_1/"):
            self.gate.wait(30)
        self.done.append((address, value))
        self.timeouts.append(timeout)
        return CommandResult(address, value, CommandStatus.SENT)


def test_a_slow_device_blocks_neither_the_cycle_nor_another_device_and_keeps_only_its_newest_value() -> None:
    writer = GatedWriter()
    with CommandDispatcher(writer, clock=lambda: 0) as dispatcher:
        dispatcher.submit({Source.AUTO: {"bms_1/SetChargeCurrent": 1.0}}, {}, 0)
        assert wait(lambda: dispatcher.pending("bms_1") == 0)  # taken by its worker, which now waits
        for t, value in ((1, 2.0), (2, 3.0), (3, 4.0)):  # the cycle goes on while bms_1 is busy
            dispatcher.submit({Source.AUTO: {"bms_1/SetChargeCurrent": value, A: value}}, {}, t)
        assert wait(lambda: writer.done[-1:] == [(A, 4.0)])  # bms_0 written while bms_1 still waits
        assert {a for a, _ in writer.done} == {A}
        assert dispatcher.pending("bms_1") == 1  # 2 and 3 replaced by the newest, 4
        writer.gate.set()
        assert wait(lambda: writer.done[-2:] == [("bms_1/SetChargeCurrent", 1.0), ("bms_1/SetChargeCurrent", 4.0)])


def test_a_manual_write_to_an_address_a_safety_controller_holds_is_refused_unsent() -> None:
    writer = GatedWriter()
    with CommandDispatcher(writer, clock=lambda: 0) as dispatcher:
        dispatcher.submit({Source.SAFETY: {A: 0.0}}, {B: Clamp(None, 40.0, True, "DCL 40 A")}, 0)
        assert wait(lambda: writer.done == [(A, 0.0)])
        held = dispatcher.manual_write(A, 50.0)
        assert (held.status, held.detail) == (
            CommandStatus.REJECTED, f"{A} is held by a safety controller at 0; a manual value cannot override it;"
                                    " nothing sent")
        above = dispatcher.manual_write(B, 45.0)
        assert above.detail == "45 is outside the live limits [None, 40.0] (DCL 40 A); nothing sent"
        assert dispatcher.manual_write(B, 35.0, timeout=0.5).status is CommandStatus.SENT
        assert writer.done == [(A, 0.0), (B, 35.0)]
        assert writer.timeouts == [2.0, 0.5]  # the dispatcher's default for the cycle, the caller's for its write
        assert [o.address for o in dispatcher.overrides()] == [B]
        assert (dispatcher.writes[Source.MANUAL], dispatcher.rejected[Source.MANUAL]) == (3, 2)
