"""The core wired to a running edge: [[controller]] tables, EdgeCore over simulated strings, overrides
through the edge database (the path of `emsbms overrides`)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from typer.testing import CliRunner

from emsbms.cli import app
from emsbms.core.controller import Source
from emsbms.core.overrides import read_overrides, request_cancel
from emsbms.core.service import EdgeCore, cancel_address
from emsbms.edge import Edge
from emsbms.edge.lock import EdgeLock
from emsbms.errors import ConfigError
from emsbms.sim.runner import Simulation
from emsbms.site import Site, parse_site
from emsbms.types import CommandStatus
from tests.conftest import wait

STRINGS = {"s0": (20.0, 30.0), "s1": (50.0, 12.0), "s2": (80.0, 40.0)}
"""Each simulated string: (SoC %, its own charge current limit A)."""
CAPACITY = {"s0": 100.0, "s1": 100.0, "s2": 100.0}


def core_site(tag: str, controllers: list[dict[str, Any]], period: str = "100ms") -> Site:
    names = list(STRINGS)
    return parse_site({
        "site": {"org": "test", "name": "core", "cycle_period": period},
        "bus": [{"name": f"can_{n}", "interface": "virtual", "channel": f"{n}-{tag}"} for n in names],
        "device": [{"name": n, "bus": f"can_{n}", "profile": "acme-lv-bytemap"} for n in names],
        "controller": controllers,
    }, "core.toml")


CONTROLLERS: list[dict[str, Any]] = [
    {"name": "limits", "type": "site-limits", "strings": list(STRINGS), "capacity_ah": CAPACITY},
    {"name": "enforce", "type": "limit-enforcement", "strings": list(STRINGS)},
    {"name": "balance", "type": "soc-balance", "strings": list(STRINGS), "current_a": 45.0, "capacity_ah": CAPACITY},
]


def test_controller_tables_are_checked_at_load_naming_file_table_and_key() -> None:
    import emsbms.core.registry  # noqa: F401  (registers the full check, as `emsbms run` does)

    bad: list[dict[str, Any]] = [CONTROLLERS[0],
                                 {"name": "balance", "type": "soc-balance", "strings": ["s0"], "current_a": "lots"}]
    with pytest.raises(ConfigError) as e:
        core_site("x", bad)
    assert str(e.value).startswith("core.toml: [[controller]] #2 (balance): ")
    assert "'current_a'" in str(e.value) and "'lots'" in str(e.value)
    with pytest.raises(ConfigError, match=r"core.toml: \[\[controller\]\] #1: key 'type' expected a non-empty string"):
        core_site("x", [{"name": "a"}])
    with pytest.raises(ConfigError, match=r"core.toml: \[site\]: key 'cycle_period' expected a duration"):
        core_site("x", [], period="0s")
    assert core_site("x", CONTROLLERS, period="250ms").cycle_period_s == 0.25
    assert [t["name"] for t in core_site("x", CONTROLLERS).controllers] == ["limits", "enforce", "balance"]


def setpoints(edge: Edge, listeners: dict[str, can.BusABC], seen: dict[str, list[float]]) -> None:
    """Decode every charge-current request (0x618) captured on each string's bus into `seen`."""
    message = edge.profiles["s0"].message("LV_ChargeRequest")
    for name, bus in listeners.items():
        while (msg := bus.recv(0)) is not None:
            if msg.arbitration_id == 0x618:
                seen[name].append(round(message.decode(msg.data)["ChargeCurrentRequest"], 1))


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[Edge, EdgeCore, dict[str, can.BusABC], Simulation, Path]]:
    site = core_site(tmp_path.name[-12:], CONTROLLERS)
    listeners = {n: can.Bus(interface="virtual", channel=site.bus(f"can_{n}").channel) for n in STRINGS}
    sim = Simulation(site)
    for name, (soc, limit) in STRINGS.items():
        model = sim.simulators[name].model
        model.soc = soc
        model.charge_max_current = model.default_charge_max_current = limit
    db = tmp_path / "edge.db"
    try:
        with sim, Edge(site) as edge:
            for n in STRINGS:
                edge.read(f"{n}/Soc", timeout=10)
            core = EdgeCore(edge, db, expires_s=3600).start()
            try:
                yield edge, core, listeners, sim, db
            finally:
                core.stop()
    finally:
        for bus in listeners.values():
            bus.shutdown()


def test_the_balancer_favours_the_emptiest_string_and_no_setpoint_exceeds_a_strings_limit(
        running: tuple[Edge, EdgeCore, dict[str, can.BusABC], Simulation, Path]) -> None:
    edge, core, listeners, _sim, _db = running
    seen: dict[str, list[float]] = {n: [] for n in STRINGS}

    def each_string_got_a_setpoint() -> bool:
        setpoints(edge, listeners, seen)
        return all(seen.values()) and core.runner.cycles >= 5

    assert wait(each_string_got_a_setpoint, 20), seen
    for name, (_soc, limit) in STRINGS.items():
        assert max(seen[name]) <= limit, (name, seen[name])
    last = {n: seen[n][-1] for n in STRINGS}
    assert last["s0"] > last["s2"], last  # 20 % SoC charges faster than 80 %
    assert last["s1"] <= 12.0
    snap = edge.snapshot()
    assert snap.value("ess0/Soc") == pytest.approx(50.0, abs=1.0)  # capacity-weighted mean of 20, 50, 80
    assert isinstance(snap.value("core/CycleTime"), float)
    assert snap.value("core/Writes/auto") >= 3  # type: ignore[operator]


def test_a_cloud_write_wins_until_cancelled_through_the_database(
        running: tuple[Edge, EdgeCore, dict[str, can.BusABC], Simulation, Path]) -> None:
    edge, core, listeners, _sim, db = running
    seen: dict[str, list[float]] = {n: [] for n in STRINGS}
    assert wait(lambda: core.dispatcher.writes[Source.AUTO] >= 3, 20)
    setpoints(edge, listeners, seen)
    result = core.writer.write("s2/SetChargeCurrent", 7.0, timeout=2.0)  # the cloud's path
    assert result.status is CommandStatus.SENT, result
    assert [(o.address, o.value, o.source_text) for o in read_overrides(db)] == [("s2/SetChargeCurrent", 7.0, "cloud")]
    setpoints(edge, listeners, seen)
    for _ in range(3):  # three more cycles: the override holds
        n = core.runner.cycles
        assert wait(lambda n=n: core.runner.cycles > n)  # type: ignore[misc]
    setpoints(edge, listeners, seen)
    after = seen["s2"][seen["s2"].index(7.0):]  # a cycle value still in flight may precede it
    assert set(after) == {7.0} and core.runner.cycles >= 3, seen["s2"]

    answer: list[str] = []
    asker = threading.Thread(target=lambda: answer.append(request_cancel(db, "s2/SetChargeCurrent", 10.0)))
    asker.start()
    asker.join(15)
    assert answer == ["override of s2/SetChargeCurrent = 7 cancelled"]
    assert wait(lambda: read_overrides(db) == [])
    assert request_cancel(db, "s2/SetChargeCurrent", 10.0) == "s2/SetChargeCurrent has no active override"
    gone = core.writer.write(cancel_address("s2/SetChargeCurrent"), 1.0)
    assert (gone.status, gone.detail) == (CommandStatus.REJECTED, "s2/SetChargeCurrent has no active override")


def test_emsbms_overrides_lists_and_cancels_the_running_edges_overrides(
        running: tuple[Edge, EdgeCore, dict[str, can.BusABC], Simulation, Path]) -> None:
    _edge, core, _listeners, _sim, db = running
    runner = CliRunner()
    assert runner.invoke(app, ["overrides", "--db", str(db)]).exit_code == 2  # no edge holds the lock
    lock = EdgeLock.acquire(db)  # as `emsbms run` holds it
    try:
        assert runner.invoke(app, ["overrides", "--db", str(db)]).output == "no active overrides\n"
        assert wait(lambda: core.dispatcher.writes[Source.AUTO] >= 3, 20)
        assert core.writer.write("s0/SetChargeCurrent", 9.0).status is CommandStatus.SENT
        listed = runner.invoke(app, ["overrides", "--db", str(db), "--json"])
        assert json.loads(listed.output)[0]["address"] == "s0/SetChargeCurrent"
        assert json.loads(listed.output)[0]["value"] == 9.0
        cancelled = runner.invoke(app, ["overrides", "--db", str(db), "--cancel", "s0/SetChargeCurrent"])
        assert (cancelled.exit_code, cancelled.output) == (0, "override of s0/SetChargeCurrent = 9 cancelled\n")
        assert core.dispatcher.overrides() == []
        again = runner.invoke(app, ["overrides", "--db", str(db), "--cancel", "s0/SetChargeCurrent"])
        assert again.exit_code == 4
    finally:
        lock.release()
