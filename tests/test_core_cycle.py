"""The core cycle on hand-made process images and a fake clock; the controller registry."""

from __future__ import annotations

import re
import textwrap
import threading
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from emsbms.core.controller import Clamp, ControllerOutput, ProcessImage, Setpoint, Source
from emsbms.core.cycle import Cycle, CycleRunner
from emsbms.core.registry import build_controllers, controller_class, keyword_options, register
from emsbms.edge.registry import Registry
from emsbms.errors import ConfigError, UnknownAddressError
from emsbms.types import ChannelInfo, ChannelKind, CommState, Quality, Reading, Sample
from tests.conftest import wait


def reading(value: object, quality: Quality = Quality.OK) -> Reading:
    return Reading(value, "", 1_000, quality)  # type: ignore[arg-type]


@dataclass
class Toy:
    """A controller that records what it saw and returns what it is told to."""

    name: str
    source: Source
    priority: int
    sets: dict[str, float] = field(default_factory=dict)
    seen: list[dict[str, float]] = field(default_factory=list)
    log: list[str] | None = None
    fail: bool = False
    extra: Callable[[], None] | None = None

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        self.seen.append(dict(image.setpoints_so_far))
        if self.log is not None:
            self.log.append(self.name)
        if self.extra is not None:
            self.extra()
        if self.fail:
            raise ZeroDivisionError("division by zero")
        return ControllerOutput([Setpoint(a, v) for a, v in self.sets.items()], events=[f"ran at {now_us}"])


IMAGE = ProcessImage({"bms_0/Soc": reading(50), "bms_0/CommState": reading(CommState.OK),
                      "bms_1/CommState": reading("LOST")}, 1_000,
                     limits={"bms_0/SetChargeCurrent": (0.0, 100.0)})


def test_controllers_run_safety_then_auto_by_priority_and_see_the_setpoints_so_far() -> None:
    order: list[str] = []
    a2 = Toy("a2", Source.AUTO, 2, {"bms_0/SetChargeCurrent": 30.0}, log=order)
    a1 = Toy("a1", Source.AUTO, 1, {"bms_0/SetDischargeCurrent": 40.0}, log=order)
    s5 = Toy("s5", Source.SAFETY, 5, {"bms_0/SetChargeCurrent": 10.0}, log=order)
    result = Cycle([a2, a1, s5]).step(IMAGE, 7_000_000)
    assert order == ["s5", "a1", "a2"]
    assert (s5.seen, a1.seen) == ([{}], [{"bms_0/SetChargeCurrent": 10.0}])
    assert a2.seen == [{"bms_0/SetChargeCurrent": 10.0, "bms_0/SetDischargeCurrent": 40.0}]
    assert result.setpoints == {Source.SAFETY: {"bms_0/SetChargeCurrent": 10.0},
                                Source.AUTO: {"bms_0/SetDischargeCurrent": 40.0, "bms_0/SetChargeCurrent": 30.0}}
    assert result.events == [f"controller {n}: ran at 7000000" for n in ("s5", "a1", "a2")]
    assert result.now_us == 7_000_000


def test_a_raising_controller_loses_its_setpoints_and_the_cycle_goes_on() -> None:
    bad = Toy("bad", Source.SAFETY, 0, {"bms_0/SetChargeCurrent": 99.0}, fail=True)
    good = Toy("good", Source.AUTO, 0, {"bms_0/SetChargeCurrent": 20.0})
    result = Cycle([bad, good]).step(IMAGE, 5)
    assert result.setpoints == {Source.SAFETY: {}, Source.AUTO: {"bms_0/SetChargeCurrent": 20.0}}
    assert good.seen == [{}]  # nothing of the failed controller leaks
    assert result.events == ["controller bad raised ZeroDivisionError: division by zero:"
                             " its setpoints dropped this cycle", "controller good: ran at 5"]


def test_only_safety_controllers_set_clamps_and_two_clamps_make_the_tighter_one() -> None:
    @dataclass
    class Clamper:
        name: str
        source: Source
        priority: int
        clamp: Clamp

        def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
            return ControllerOutput(clamps={"bms_0/SetChargeCurrent": self.clamp}, channels={"ess0/Soc": 51.5},
                                    units={"ess0/Soc": "%"})

    result = Cycle([Clamper("c1", Source.SAFETY, 0, Clamp(None, 80.0, False, "CCL 80 A")),
                    Clamper("c2", Source.SAFETY, 1, Clamp(5.0, 90.0, True)),
                    Clamper("c3", Source.AUTO, 0, Clamp(None, 1.0))]).step(IMAGE, 0)
    assert result.clamps == {"bms_0/SetChargeCurrent": Clamp(5.0, 80.0, True, "CCL 80 A")}
    assert result.events == ["controller c3: clamps ignored (only safety controllers set clamps)"]
    assert (result.channels, result.units) == ({"ess0/Soc": 51.5}, {"ess0/Soc": "%"})


def test_the_cycle_refuses_manual_controllers_duplicates_and_a_bad_period() -> None:
    with pytest.raises(ConfigError, match="controller 'm': source must be safety or auto, found"):
        Cycle([Toy("m", Source.MANUAL, 0)])
    with pytest.raises(ConfigError, match="used twice: x"):
        Cycle([Toy("x", Source.AUTO, 0), Toy("x", Source.SAFETY, 0)])
    with pytest.raises(ConfigError, match="expected a positive number of seconds, found 0"):
        Cycle([], period_s=0)


def test_the_process_image_knows_devices_and_limits() -> None:
    assert dict(IMAGE.devices) == {"bms_0": CommState.OK, "bms_1": CommState.LOST}
    assert IMAGE.limits("bms_0/SetChargeCurrent") == (0.0, 100.0)
    assert IMAGE.value("bms_0/Soc") == 50 and IMAGE.value("bms_9/Soc") is None
    with pytest.raises(UnknownAddressError, match="bms_0/Soc is not a command channel with limits;"
                                                  " known: bms_0/SetChargeCurrent"):
        IMAGE.limits("bms_0/Soc")


class FakeClock:
    def __init__(self) -> None:
        self.us = 0

    def __call__(self) -> int:
        return self.us


class Sink:
    """A dispatcher stand-in that keeps what it was handed (the runner's contract is two methods)."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[Source, dict[str, float]], int]] = []

    def submit(self, setpoints: Mapping[Source, Mapping[str, float]], clamps: Mapping[str, Clamp],
               now_us: int) -> None:
        self.got.append(({s: dict(v) for s, v in setpoints.items()}, now_us))

    def channels(self) -> list[ChannelInfo]:
        return []


class EdgeOf:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry


def test_the_runner_counts_overruns_and_publishes_cycle_time_and_virtual_channels() -> None:
    registry = Registry()
    registry.declare([ChannelInfo("bms_0/SetChargeCurrent", "A", ChannelKind.COMMAND, minimum=0, maximum=100)])
    registry.apply([Sample("bms_0/Soc", 40, 1)])
    clock, sink, events = FakeClock(), Sink(), list[str]()
    durations = iter([300_000, 1_500_000, 1_000_000, 1_000_001])  # µs each cycle takes (period 1 s)
    seen_limits: list[tuple[float | None, float | None]] = []

    def slow() -> None:
        clock.us += next(durations)

    class Publisher(Toy):
        def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
            seen_limits.append(image.limits("bms_0/SetChargeCurrent"))
            out = super().run(image, now_us)
            out.channels, out.units = {"ess0/Soc": image.value("bms_0/Soc")}, {"ess0/Soc": "%"}
            return out

    toy = Publisher("p", Source.AUTO, 0, {"bms_0/SetChargeCurrent": 12.0}, extra=slow)
    runner = CycleRunner(EdgeOf(registry), Cycle([toy]), sink, on_event=events.append, clock=clock,
                         wall=lambda: 42)
    took = [runner.run_once() for _ in range(4)]
    assert took == [300.0, 1500.0, 1000.0, 1000.001]
    assert (runner.cycles, runner.overruns) == (4, 2)
    assert registry.get("core/Overruns") == Reading(2, "", 42, Quality.OK)
    assert registry.get("core/CycleTime") == Reading(1000.001, "ms", 42, Quality.OK)
    assert registry.get("ess0/Soc") == Reading(40, "%", 42, Quality.OK)
    assert sink.got[0] == ({Source.SAFETY: {}, Source.AUTO: {"bms_0/SetChargeCurrent": 12.0}}, 42)
    assert seen_limits == [(0, 100)] * 4
    assert events == ["controller p: ran at 42"] * 4


# -- the registry of controller types --------------------------------------------------------


class Threshold:
    """A controller type built by keyword_options."""

    source = Source.AUTO
    priority = 10

    def __init__(self, *, name: str, address: str, limit: float = 5.0) -> None:
        if limit < 0:
            raise ValueError(f"limit: expected >= 0, found {limit}")
        self.name, self.address, self.limit = name, address, limit

    @classmethod
    def from_options(cls, name: str, options: Mapping[str, Any]) -> Threshold:
        return keyword_options(cls, name, options)

    def run(self, image: ProcessImage, now_us: int) -> ControllerOutput:
        return ControllerOutput([Setpoint(self.address, self.limit)])


register("test-threshold")(Threshold)


def test_build_controllers_from_tables_and_its_refusals() -> None:
    [c] = build_controllers([{"name": "t1", "type": "test-threshold", "address": "bms_0/X", "limit": 7}])
    assert isinstance(c, Threshold) and (c.name, c.address, c.limit) == ("t1", "bms_0/X", 7)
    with pytest.raises(ConfigError, match=r"\[\[controller\]\] #1 \(t1\): controller 't1': unknown option\(s\)"
                                          r" colour, size; accepted: address, limit"):
        build_controllers([{"name": "t1", "type": "test-threshold", "address": "a", "size": 1, "colour": 2}])
    with pytest.raises(ConfigError, match=r"controller 't1': missing option\(s\) address"):
        build_controllers([{"name": "t1", "type": "test-threshold"}])
    with pytest.raises(ConfigError, match="controller 't1': limit: expected >= 0, found -1"):
        build_controllers([{"name": "t1", "type": "test-threshold", "address": "a", "limit": -1}])
    with pytest.raises(ConfigError, match=r"#2: name 't1' is used by an earlier controller"):
        build_controllers([{"name": "t1", "type": "test-threshold", "address": "a"}] * 2)
    with pytest.raises(ConfigError, match=r"#1: key 'type': expected a non-empty string, found None"):
        build_controllers([{"name": "t1"}])
    with pytest.raises(ConfigError, match=r"unknown controller type 'pid'; known types: .*test-threshold"):
        build_controllers([{"name": "t1", "type": "pid"}])


def test_a_third_party_controller_comes_through_its_entry_point(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy_ems_ctrl.py").write_text(textwrap.dedent('''
        from emsbms.core.controller import ControllerOutput, Setpoint, Source
        from emsbms.core.registry import keyword_options

        class Fixed:
            source = Source.AUTO
            priority = 50

            def __init__(self, *, name, address, value):
                self.name, self.address, self.value = name, address, float(value)

            @classmethod
            def from_options(cls, name, options):
                return keyword_options(cls, name, options)

            def run(self, image, now_us):
                return ControllerOutput([Setpoint(self.address, self.value)])
        '''))
    info = tmp_path / "toy_ems_ctrl-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: toy-ems-ctrl\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[emsbms.controllers]\nfixed-current = toy_ems_ctrl:Fixed\n"
                                           "broken = toy_ems_ctrl:Missing\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    [c] = build_controllers([{"name": "f", "type": "fixed-current", "address": "bms_0/SetChargeCurrent",
                              "value": 25}])
    result = Cycle([c]).step(IMAGE, 0)
    assert result.setpoints[Source.AUTO] == {"bms_0/SetChargeCurrent": 25.0}
    with pytest.raises(ConfigError, match="controller type 'broken': entry point 'toy_ems_ctrl:Missing' does"
                                          " not load: AttributeError"):
        controller_class("broken")
    with pytest.raises(ConfigError, match=r"known types: .*test-threshold, broken, fixed-current"):
        controller_class("nope")


def test_the_third_party_controller_of_docs_core_md_runs_as_documented(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    docs = (Path(__file__).parent.parent / "docs" / "core.md").read_text(encoding="utf-8")
    source = re.search(r"```python\n# ems_peak.py\n(.*?)```", docs, re.S)
    entry = re.search(r'```toml\n(\[project.entry-points."emsbms.controllers"\]\n.*?)```', docs, re.S)
    assert source is not None and entry is not None
    (tmp_path / "ems_peak.py").write_text(source.group(1))
    info = tmp_path / "ems_peak-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: ems-peak\nVersion: 1.0\n")
    points = tomllib.loads(entry.group(1))["project"]["entry-points"]["emsbms.controllers"]
    lines = "".join(f"{k} = {v}\n" for k, v in points.items())
    (info / "entry_points.txt").write_text("[emsbms.controllers]\n" + lines)
    monkeypatch.syspath_prepend(str(tmp_path))
    table = {"name": "peak", "type": "peak-shaving", "meter": "meter0/Power", "string": "bms_0", "threshold_w": 5000}
    [peak] = build_controllers([table])
    image = ProcessImage({"meter0/Power": reading(6200.0)}, 0, limits={"bms_0/SetDischargeCurrent": (0.0, 120.0)})
    quiet = ProcessImage({"meter0/Power": reading(4000.0)}, 0, limits={"bms_0/SetDischargeCurrent": (0.0, 120.0)})
    cycle = Cycle([peak])
    assert cycle.step(image, 0).setpoints[Source.AUTO] == {"bms_0/SetDischargeCurrent": 120.0}
    assert cycle.step(quiet, 0).setpoints[Source.AUTO] == {"bms_0/SetDischargeCurrent": 0.0}
    with pytest.raises(ConfigError, match=r"unknown option\(s\) step_a; accepted: meter, string, threshold_w, idle_a"):
        build_controllers([{**table, "step_a": 1}])


def test_the_runner_thread_runs_a_cycle_each_period_and_stops() -> None:
    registry = Registry()
    sink = Sink()
    toy = Toy("t", Source.AUTO, 0, {"bms_0/SetChargeCurrent": 3.0})
    runner = CycleRunner(EdgeOf(registry), Cycle([toy], period_s=0.01), sink).start()
    try:
        assert wait(lambda: runner.cycles >= 3)
    finally:
        runner.stop()
    assert all(got == {Source.SAFETY: {}, Source.AUTO: {"bms_0/SetChargeCurrent": 3.0}} for got, _ in sink.got)
    assert len(sink.got) == runner.cycles == len(toy.seen)
    assert not any(t.name == "emsbms-core-cycle" for t in threading.enumerate())
