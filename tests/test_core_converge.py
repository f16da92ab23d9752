"""End to end: three simulated strings with different SoCs and limits converge under the balancer. The
simulated strings take the current they are commanded (`follow_commands`), fast-forwarded (`time_scale`),
so their SoCs move in seconds; every charge request on the captured buses stays within its string's limit."""

from __future__ import annotations

import math
from pathlib import Path

import can
import pytest

from emsbms.core.service import EdgeCore
from emsbms.edge import Edge
from emsbms.sim.battery import BatteryModel
from emsbms.sim.runner import Simulation
from tests.conftest import wait
from tests.test_core_run import CONTROLLERS, STRINGS, core_site, setpoints

TIME_SCALE = 600.0
"""One second of the test is ten minutes of the strings' SoC."""


def test_the_model_follows_its_command_and_fast_forwards() -> None:
    model = BatteryModel(capacity_ah=100.0, soc=50.0, follow_commands=True, time_scale=3600.0)
    model.set_charge_current(10.0)
    model.step(1.0)  # an hour at 10 A into 100 Ah: +10 %
    assert model.current == 10.0 and model.soc == pytest.approx(60.0)
    model.set_charge_current(0.0)
    model.set_discharge_current(20.0)
    model.step(0.5)  # half an hour at -20 A: -10 %
    assert model.current == -20.0 and model.soc == pytest.approx(50.0)
    sine = BatteryModel(soc=50.0)  # the default: a sine load, not the command, at real time
    sine.step(1.0)
    assert sine.current == pytest.approx(30.0 * math.sin(1.0 / 20.0)) and sine.soc < 50.01


def spread(edge: Edge) -> float:
    socs = [edge.snapshot().value(f"{n}/Soc") for n in STRINGS]
    assert all(isinstance(s, int | float) for s in socs), socs
    return float(max(socs) - min(socs))  # type: ignore[type-var, operator]


def test_three_strings_converge_under_the_balancer_and_no_setpoint_exceeds_a_limit(tmp_path: Path) -> None:
    site = core_site(tmp_path.name[-12:], CONTROLLERS)
    listeners = {n: can.Bus(interface="virtual", channel=site.bus(f"can_{n}").channel) for n in STRINGS}
    sim = Simulation(site)
    for name, (soc, limit) in STRINGS.items():
        model = sim.simulators[name].model
        model.soc = soc
        model.charge_max_current = model.default_charge_max_current = limit
        model.follow_commands, model.time_scale = True, TIME_SCALE
    seen: dict[str, list[float]] = {n: [] for n in STRINGS}
    try:
        with sim, Edge(site) as edge:
            for n in STRINGS:
                edge.read(f"{n}/Soc", timeout=10)
            core = EdgeCore(edge, tmp_path / "edge.db").start()
            try:
                def balancing() -> bool:  # until then each string charges at its own limit
                    setpoints(edge, listeners, seen)
                    return all(seen.values()) and core.runner.cycles >= 3

                assert wait(balancing, 30), seen
                start = spread(edge)
                top_start = max(float(edge.snapshot().value(f"{n}/Soc")) for n in STRINGS)  # type: ignore[arg-type]
                def halved() -> bool:
                    setpoints(edge, listeners, seen)
                    return spread(edge) <= start / 2

                assert wait(halved, 120), (start, spread(edge), {n: s[-3:] for n, s in seen.items()})
                end = spread(edge)
                snap = edge.snapshot()
                socs = {n: float(snap.value(f"{n}/Soc")) for n in STRINGS}  # type: ignore[arg-type]
                assert snap.value("core/OverrideList") == "[]"
            finally:
                core.stop()
            setpoints(edge, listeners, seen)
    finally:
        for bus in listeners.values():
            bus.shutdown()
    # the strings started at 20, 50, 80 %: the emptiest stays the lowest and the fullest the highest (no string
    # was pushed past the others), and the distances to full of the two uncapped ones shrink by the same factor,
    # so the spread follows the fullest one's distance to full: end ≈ start · (100 - top_end) / (100 - top_start)
    assert socs["s0"] < socs["s1"] < socs["s2"], socs
    predicted = start * (100.0 - socs["s2"]) / (100.0 - top_start)
    assert end == pytest.approx(predicted, abs=3.0), (start, end, predicted, socs)
    assert start >= 55.0  # about 60 points apart when the balancer began: halving it is real convergence
    for name, (_soc, limit) in STRINGS.items():
        assert seen[name] and max(seen[name]) <= limit, (name, seen[name])
    assert max(seen["s0"]) > max(seen["s2"])  # the emptiest string charged faster
