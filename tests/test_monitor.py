"""The monitor's pure rendering: snapshot tests of its text at 80x24 and 200x50, colours, filters,
pages, sparklines, history, keys; and the live loop against a simulated device."""

from __future__ import annotations

import io
import logging
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from emsbms.can.bus import BusState
from emsbms.cli import monitor as monitor_cli
from emsbms.demo import Action, Scenario, Step
from emsbms.edge import Edge
from emsbms.edge.events import Event, EventKind, EventLog, Severity
from emsbms.edge.registry import Snapshot
from emsbms.monitor import DeviceMeta, Filters, History, abbreviate, format_age, format_number, format_value, render
from emsbms.monitor import sparkline as spark
from emsbms.monitor._keys import Key, Pager, parse_keys
from emsbms.monitor._panes import Column, plan
from emsbms.sim.runner import Simulation
from emsbms.types import AlarmLevel, CommandStatus, CommState, Quality, Reading
from tests.conftest import virtual_site

NOW = 1_700_000_000_000_000  # 2023-11-14 22:13:20 UTC
SNAPSHOTS = Path(__file__).parent / "snapshots"
UPDATE = os.environ.get("EMSBMS_UPDATE_SNAPSHOTS") == "1"


def at(value: object, unit: str = "", age_s: float = 0.5, quality: Quality = Quality.OK) -> Reading:
    return Reading(value, unit, NOW - int(age_s * 1e6), quality)  # type: ignore[arg-type]


def bus(name: str, state: BusState, load: float, rate: float, errors: int = 0, dropped: int = 0,
        unknown: int = 0, bad: int = 0, last_error: str = "") -> dict[str, Reading]:
    return {
        f"{name}/State": at(state), f"{name}/BusLoad": at(load, "%"), f"{name}/RxFrames": at(1200),
        f"{name}/RxRate": at(rate, "frames/s"), f"{name}/ErrorFrames": at(errors), f"{name}/Dropped": at(dropped),
        f"{name}/UnknownIds": at(unknown), f"{name}/BadFrames": at(bad), f"{name}/LastError": at(last_error),
    }


def site() -> Snapshot:
    """Three buses, three devices: one healthy (a stale current), one lost with an EMCY, one J1939
    with values not available or invalid and a DM1 warning."""
    snap: dict[str, Reading] = {}
    snap |= bus("can0", BusState.ERROR_ACTIVE, 12.5, 250.0, unknown=3)
    snap |= bus("can1", BusState.BUS_OFF, 0.0, 0.0, errors=17, dropped=2, bad=1, last_error="bus-off")
    snap |= bus("can2", BusState.ERROR_WARNING, 55.0, 1234.5, errors=120_000)
    snap |= {
        "bms_0/CommState": at(CommState.OK), "bms_0/LastSeen": at(NOW - 300_000, "µs"),
        "bms_0/Soc": at(77.0, "%"), "bms_0/Voltage": at(52.345, "V"),
        "bms_0/Current": at(-12.3, "A", 7.0, Quality.STALE), "bms_0/Temperature": at(25.375, "°C"),
        "bms_0/DischargeMaxCurrent": at(80.0, "A"), "bms_0/AllowCharge": at(True),
        "bms_0/Alarm/OverTemperature": at(AlarmLevel.OK), "bms_0/Alarm/CommLoss": at(AlarmLevel.OK),
    }
    snap |= {
        "node_5/CommState": at(CommState.LOST), "node_5/LastSeen": at(NOW - 42_000_000, "µs"),
        "node_5/Soc": at(12.0, "%", 42.0, Quality.STALE), "node_5/NmtState": at("PRE-OPERATIONAL", age_s=42.0),
        "node_5/EmcyCode": at(0x4210, age_s=50.0), "node_5/EmcyText": at("temperature", age_s=50.0),
        "node_5/Alarm/OverTemperature": at(AlarmLevel.ALARM), "node_5/Alarm/CommLoss": at(AlarmLevel.ALARM),
    }
    snap |= {
        "hv_0/CommState": at(CommState.OK), "hv_0/LastSeen": at(NOW - 20_000, "µs"),
        "hv_0/Soc": at(55.5, "%"), "hv_0/Voltage": at(None, "V", quality=Quality.NOT_AVAILABLE),
        "hv_0/Current": at(None, "A", quality=Quality.INVALID), "hv_0/AvailableDischargePower": at(151750.0, "W"),
        "hv_0/Dm1/ActiveDtcs": at('[{"spn":520201,"fmi":16,"oc":1}]'),
        "hv_0/Alarm/CellOverVoltage": at(AlarmLevel.WARNING), "hv_0/Alarm/DiagnosticLamps": at(AlarmLevel.WARNING),
    }
    return Snapshot(snap, NOW)


PACK = ("Soc", "Soh", "Voltage", "Current", "Temperature", "ChargeMaxVoltage", "DischargeMinVoltage",
        "ChargeMaxCurrent", "DischargeMaxCurrent", "MinCellVoltage", "MaxCellVoltage", "MinCellTemperature",
        "MaxCellTemperature", "Capacity", "AvailableChargePower", "PrechargeRelay", "BusConnection", "CellCount")


def big_site() -> Snapshot:
    """`site()` and a second pack on can0 with 18 channels and 5 alarms."""
    snap = dict(site())
    snap["pack_1/CommState"] = at(CommState.OK)
    snap["pack_1/LastSeen"] = at(NOW - 100_000, "µs")
    units = {"Voltage": "V", "Current": "A", "Temperature": "°C", "So": "%", "Capacity": "Ah", "Power": "W"}
    for i, name in enumerate(PACK):
        unit = next((u for key, u in units.items() if key in name), "")
        snap[f"pack_1/{name}"] = at(10.0 + i * 7.25, unit)
    for name in ("OverVoltage", "UnderVoltage", "OverTemperature", "UnderTemperature", "Insulation"):
        snap[f"pack_1/Alarm/{name}"] = at(AlarmLevel.OK)
    return Snapshot(snap, NOW)


DEVICES = {
    "bms_0": DeviceMeta("can0", "pylon-lv", "1.0.0"),
    "node_5": DeviceMeta("can1", "cia418-bms", "1.0.0"),
    "hv_0": DeviceMeta("can2", "j1939-hvess", "1.2.0"),
    "pack_1": DeviceMeta("can0", "acme-hv", "1.0.0"),
}


def history() -> History:
    """60 s of samples every second: the SoC climbs 60 -> 77 %, the voltage is flat, can0's load steps up."""
    h = History()
    for i in range(61):
        t = NOW - (60 - i) * 1_000_000
        h.sample({"bms_0/Soc": Reading(60.0 + 17 * i / 60, "%", t, Quality.OK),
                  "bms_0/Voltage": Reading(52.345, "V", t, Quality.OK),
                  "can0/BusLoad": Reading(5.0 if i < 30 else 12.5, "%", t, Quality.OK)}, t)
    return h


def event(t_s: float, source: str, kind: EventKind, severity: Severity, text: str, repeat: int = 1) -> Event:
    return Event(NOW - int(t_s * 1e6), source, kind, severity, text, repeat)


EVENTS = (
    event(58, "bms_0", EventKind.COMM, Severity.INFO, "online: first frames received"),
    event(50, "node_5", EventKind.EMCY, Severity.ALARM, "EMCY 0x4210 temperature · error register 0x09"),
    event(44, "node_5", EventKind.COMM, Severity.ALARM, "comm lost: no frame within its timeout"),
    event(30, "hv_0", EventKind.DM1, Severity.WARNING, "DM1 1 DTC: SPN 520201 FMI 16 · amber lamp"),
    event(12, "bms_0", EventKind.COMMAND, Severity.OK, "SetChargeCurrent = 50 A acked: echo 50", 2),
    event(3, "can1", EventKind.BUS, Severity.ALARM, "bus BUS_OFF (was ERROR_ACTIVE)"),
)


def frame(width: int, height: int, filters: Filters | None = None, snap: Snapshot | None = None,
          status: str = "") -> object:
    return render(snap if snap is not None else site(), NOW, width, height, filters, "emsbms monitor · test",
                  history=history(), events=EVENTS, devices=DEVICES, events_total=9, status=status)


def text_of(renderable: object, width: int = 80, height: int = 24) -> str:
    console = Console(record=True, width=width, height=height, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


def lines_of(width: int, height: int, **kwargs: object) -> list[str]:
    return [line.rstrip() for line in text_of(frame(width, height, **kwargs), width, height).splitlines()]  # type: ignore[arg-type]


def check_snapshot(name: str, lines: list[str]) -> None:
    path = SNAPSHOTS / name
    text = "\n".join(lines) + "\n"
    if UPDATE or not path.exists():
        path.parent.mkdir(exist_ok=True)
        path.write_text(text, encoding="utf-8")
        if not UPDATE:
            pytest.fail(f"{path} did not exist: written; check it and run again")
    assert text == path.read_text(encoding="utf-8"), f"{name} differs (EMSBMS_UPDATE_SNAPSHOTS=1 rewrites it)"


# -- snapshots ------------------------------------------------------------------------------------


def test_render_80x24_snapshot() -> None:
    lines = lines_of(80, 24)
    check_snapshot("monitor-80x24.txt", lines)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80


def test_render_200x50_snapshot() -> None:
    lines = lines_of(200, 50, snap=big_site())
    check_snapshot("monitor-200x50.txt", lines)
    assert len(lines) <= 50 and max(len(line) for line in lines) <= 200


# -- layout -------------------------------------------------------------------------------------------


def test_pages_turn_through_every_channel_at_80x24() -> None:
    snap = dict(site())
    for c in range(60):
        snap[f"dev_0/Channel{c:02d}"] = at(float(c), "V")
    seen: set[str] = set()
    pages = set()
    for page in range(6):
        lines = lines_of(80, 24, filters=Filters(page=page), snap=Snapshot(snap, NOW))
        assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
        seen |= set(re.findall(r"Channel\d\d", "\n".join(lines)))
        note = re.fullmatch(r" page (\d)/(\d) · \d+ more lines on the other pages", lines[-1])
        assert note is not None, lines[-1]
        pages.add((int(note.group(1)), int(note.group(2))))
    assert seen == {f"Channel{c:02d}" for c in range(60)}
    # 4 device headers + bms_0 7 + node_5 6 + hv_0 6 + dev_0 60 = 83 cells. 24 lines - 1 header -
    # 5 bus/device lines - 4 event lines (title + 24 // 7) - 1 page line = 13 rows x 2 columns =
    # 26 cells a page; pages 2.. start inside dev_0 and repeat its header: 26 + 25 + 25 + 10 = 86 = 83 + 3
    assert pages == {(1, 4), (2, 4), (3, 4), (4, 4)}


def test_a_page_that_starts_inside_a_device_repeats_its_header() -> None:
    snap = dict(site())
    for c in range(60):
        snap[f"dev_0/Channel{c:02d}"] = at(float(c), "V")
    lines = lines_of(80, 24, filters=Filters(page=2), snap=Snapshot(snap, NOW))
    assert lines[10].startswith("─ dev_0 (cont.) ─")  # the first line after the panes
    assert lines[11].startswith(" Channel27 ")


def test_narrow_terminal_stacks_the_panes() -> None:
    lines = lines_of(60, 20)
    assert len(lines) <= 20 and max(len(line) for line in lines) <= 60
    assert lines[1].startswith("Bus  State ")
    assert any(line.startswith("Device ") for line in lines[2:6])
    assert any(line.startswith("Time UTC Source") for line in lines)


def test_wide_terminal_puts_the_event_log_beside_the_panes() -> None:
    lines = lines_of(200, 50, snap=big_site())
    assert "Profile" in lines[1] and "Events (9, newest last)" in lines[1]
    assert lines[1].index("Device") < lines[1].index("Time UTC")
    assert "page" not in "\n".join(lines)  # every channel on one page
    assert lines[9].startswith(" Soc                         77 % 0.5s ▁▂▃▃▄▅▆▆▇█ ")  # 10 characters of SoC


def test_device_filter_shows_that_device_and_its_events() -> None:
    lines = lines_of(80, 24, filters=Filters(devices=("node_5",), buses=("can1",)))
    text = "\n".join(lines)
    assert "bms_0" not in text and "hv_0" not in text
    assert "filter: node_5,can1" in lines[0]
    assert "─ node_5 " in text
    assert "comm lost: no frame within its timeout" in text and "online: first frames received" not in text
    assert "bus BUS_OFF" in text  # can1's event


def test_bus_filter_keeps_only_that_bus() -> None:
    lines = lines_of(80, 24, filters=Filters(buses=("can1",), devices=("node_5",)))
    assert lines[2].startswith("can1 BUS_OFF")
    assert not any(line.startswith(("can0", "can2")) for line in lines)


def test_empty_snapshot_says_waiting() -> None:
    assert text_of(render(Snapshot({}, NOW), NOW)).splitlines()[1].startswith("waiting for data")


def test_header_status_and_counts() -> None:
    assert lines_of(70, 24, status="PAUSED · space resumes")[0] == (
        "emsbms monitor · test  22:13:20 UTC" + " " * 12 + "PAUSED · space resumes")  # the counts give way
    wide = lines_of(120, 30, status="q quit")[0]
    assert wide.startswith("emsbms monitor · test  3 devices  3 buses  22:13:20 UTC ") and wide.endswith("q quit")


# -- colours ------------------------------------------------------------------------------------------


def styles_of(renderable: object, width: int = 80, height: int = 24) -> str:
    console = Console(record=True, width=width, height=height, file=open(os.devnull, "w"),  # noqa: SIM115
                      color_system="truecolor")
    console.print(renderable)
    return console.export_html(inline_styles=True)


def style_before(html: str, text: str) -> str:
    i = html.index(text)
    return html[html.rindex("<span", 0, i) : i]


def test_colours_follow_quality_state_and_severity() -> None:
    html = styles_of(frame(200, 50, snap=big_site()), 200, 50)
    assert "#808000" in style_before(html, "-12.3 A")  # stale: yellow
    assert "#800000" in style_before(html, "invalid")  # invalid: red
    lost = style_before(html, "LOST ")
    assert "#800000" in lost and "bold" in lost  # a lost device: bold red
    assert "#008000" in style_before(html, "ACTIVE ")  # ERROR_ACTIVE: green
    assert "#800000" in style_before(html, "BUS_OFF")  # BUS_OFF: red
    assert "#808000" in style_before(html, "WARNING")  # ERROR_WARNING: yellow
    assert "#808000" in style_before(html, "55.0%")  # a load over 50 %: yellow
    assert "#800000" in style_before(html, "120k")  # error frames: red
    assert "#800000" in style_before(html, "EMCY 0x4210")  # an ALARM event
    assert "#008000" in style_before(html, "SetChargeCurrent = 50 A acked")  # an acked command
    assert "#808000" in style_before(html, "CellOverVoltage DiagnosticLamps")  # a warning alarm


def test_unknown_bus_state_is_dim() -> None:
    snap = Snapshot(bus("can9", BusState.UNKNOWN, 1.0, 10.0), NOW)
    html = styles_of(render(snap, NOW))
    assert "#7f7f7f" in style_before(html, "unknown")  # rich draws "dim" as grey


# -- text helpers, history, columns, keys ----------------------------------------------------------------


def test_format_helpers() -> None:
    assert format_number(77.0) == "77"
    assert format_number(3.31249) == "3.312"
    assert format_number(-0.0001) == "0"
    assert format_number(123456.7) == "123457"
    assert format_value(True) == "yes"
    assert format_value(CommState.STALE) == "STALE"
    assert format_value(None, "V") == "— V"
    assert format_value(51.2, "V") == "51.2 V"
    assert format_age(NOW, NOW - 400_000) == "0.4s"
    assert format_age(NOW, NOW - 42_000_000) == "42s"
    assert format_age(NOW, NOW - 300_000_000) == "5m"
    assert format_age(NOW, 0) == "—"
    assert abbreviate("DischargeMaxCurrent", 12) == "DisMaxCurr"
    assert abbreviate("MaxCellTemperature", 13) == "MaxCellTemp"
    assert abbreviate("Soc", 4) == "Soc"
    assert abbreviate("SomethingVeryLongIndeed", 10) == "Something…"


def test_sparkline_buckets_by_time_and_scales() -> None:
    window = 8_000_000  # 8 s in 8 characters: one per second
    points = [(NOW - 7_500_000 + i * 1_000_000, float(i)) for i in range(8)]  # 0..7, one per bucket
    assert spark(points, NOW, window, 8) == "▁▂▃▄▅▆▇█"
    assert spark(points[:4], NOW, window, 8) == "▁▃▆█    "  # 0..3 scaled over 8 levels; nothing after
    assert spark([(NOW - 1, 5.0), (NOW - 2_000_000, 5.0)], NOW, window, 4) == "   ─"[:3] + "─"  # flat
    assert spark([(NOW - 100, 25.0)], NOW, window, 2, scale=(0.0, 100.0)) == " ▃"  # 25 % of 7 levels -> 2
    assert spark([], NOW, window, 3) == "   "
    assert spark([(NOW - 9_000_000, 1.0)], NOW, window, 2) == "  "  # older than the window


def test_history_keeps_one_second_means_with_gaps_when_stale() -> None:
    h = History(window_s=10.0)
    start = NOW - NOW % 1_000_000  # a bin boundary
    for i in range(5):
        t = start + i * 400_000  # 2.5 redraws a second: bins 0 (t = 0, 0.4, 0.8 s), 1 (1.2, 1.6 s)
        h.sample({"d/V": Reading(float(i), "V", t, Quality.OK), "d/On": Reading(i % 2 == 1, "", t, Quality.OK),
                  "d/State": Reading(CommState.OK, "", t, Quality.OK), "d/Text": Reading("x", "", t, Quality.OK),
                  "d/I": Reading(1.0, "A", t, Quality.STALE)}, t)
    assert h.series("d/V") == [(start, 1.0), (start + 1_000_000, 3.5)]  # (0+1+2)/3, (3+4)/2
    assert h.series("d/On") == [(start, 1 / 3), (start + 1_000_000, 0.5)]  # booleans as 0/1
    assert h.series("d/State") == [] and h.series("d/Text") == [] and h.series("d/I") == []
    for s in range(2, 20):  # 18 more seconds: at most 11 bins (10 s + the current one) are kept
        h.sample({"d/V": Reading(9.0, "V", NOW, Quality.OK)}, start + s * 1_000_000)
    assert [t - start for t, _ in h.series("d/V")] == [s * 1_000_000 for s in range(9, 20)]


def test_columns_are_dropped_by_priority_and_grow_into_spare_room() -> None:
    columns = [Column("A", 4), Column("B", 3, drop=2), Column("C", 3, drop=1), Column("D", 2, grow=5)]
    assert plan(columns, 40) == [(0, 4), (1, 3), (2, 3), (3, 7)]  # 4+3+3+2 + 3 gaps = 15: D grows by 5
    assert plan(columns, 12) == [(0, 4), (2, 3), (3, 3)]  # B (drop 2) goes first; D takes the spare cell
    assert plan(columns, 7) == [(0, 4), (3, 2)]
    assert plan(columns, 3) == [(0, 4), (3, 2)]  # too narrow: nothing shrinks (the line is cut instead)


@pytest.mark.parametrize(("width", "height"), [(20, 5), (30, 10), (40, 12), (79, 24), (150, 40), (300, 80)])
def test_any_terminal_size_is_filled_and_never_overflowed(width: int, height: int) -> None:
    lines = lines_of(width, height, snap=big_site())
    assert 0 < len(lines) <= height and max(len(line) for line in lines) <= width
    assert lines[1].startswith("Bus")


def test_keys_and_pages() -> None:
    assert parse_keys(b"q") == [Key.QUIT]
    assert parse_keys(b" \x1b[C\x1b[D\x1b[6~x") == [Key.PAUSE, Key.NEXT, Key.PREVIOUS, Key.NEXT]
    pager = Pager(100.0, period_s=5.0, hold_s=30.0)
    assert pager.at(104.9) == 0 and pager.at(105.0) == 1 and pager.at(109.0) == 1 and pager.at(110.0) == 2
    assert pager.turn(-1, 111.0) == 1
    assert pager.at(140.0) == 1 and pager.at(141.0) == 2  # a key holds the turning for 30 s


# -- the live loop -------------------------------------------------------------------------------------


def test_live_monitor_draws_commands_and_events_from_a_running_edge(
        monkeypatch: pytest.MonkeyPatch, channel: Callable[[str], str]) -> None:
    site = virtual_site(["can0"], [{"name": "hv_0", "bus": "can0", "profile": "acme-hv"}], tag=channel("t"))
    renders: list[int] = []
    real_render = monitor_cli.render  # type: ignore[attr-defined]

    def counting(*args: Any, **kwargs: Any) -> Any:
        renders.append(1)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(monitor_cli, "render", counting)
    with Simulation(site):
        edge = Edge(site)
        events = monitor_cli.watch(edge)  # before the edge starts: the first transitions count
        with edge:
            edge.read("hv_0/Soc", timeout=15)
            assert edge.write("hv_0/SetChargeCurrent", 50, timeout=10).status is CommandStatus.ACKED
            assert edge.write("hv_0/SetChargeCurrent", 5000).status is CommandStatus.REJECTED
            out = io.StringIO()
            console = Console(file=out, width=120, height=30)
            monitor_cli.show(edge, 0.7, Filters(), "live", console=console, events=events)
    text = out.getvalue()
    assert "hv_0   online: first frames received" in text
    assert "hv_0   SetChargeCurrent = 50 A acked: echo" in text
    assert "hv_0   SetChargeCurrent = 5000 A rejected: " in text
    assert re.search(r"\n Voltage +[0-9.]+ V [0-9.]+s ", text)
    assert len(renders) >= 2  # one redraw every REFRESH_S (the last when the duration is over)
    assert monitor_cli.REFRESH_S <= 0.25  # at least 4 Hz


def test_log_warnings_go_to_the_event_log_while_the_monitor_draws(capsys: pytest.CaptureFixture[str]) -> None:
    root = logging.getLogger()
    printer = logging.StreamHandler(sys.stderr)
    root.addHandler(printer)
    log = EventLog()
    try:
        with monitor_cli.logs_into(log, enabled=True):
            assert printer not in root.handlers
            logging.getLogger("emsbms.test").warning("bus can7 failed: gone")
        assert printer in root.handlers
    finally:
        root.removeHandler(printer)
    assert capsys.readouterr().err == ""
    assert [(e.source, e.text) for e in log.drain()] == [("test", "bus can7 failed: gone")]


def test_demo_scenario_plays_its_steps_in_order_and_skips_absent_devices() -> None:
    class FakeSimulation:
        def __init__(self) -> None:
            self.simulators = {"bms": object()}
            self.calls: list[tuple[str, str, str]] = []

        def inject(self, device: str, fault: str) -> None:
            self.calls.append(("inject", device, fault))

        def clear(self, device: str, fault: str) -> None:
            self.calls.append(("clear", device, fault))

    sim = FakeSimulation()
    writes: list[tuple[str, float]] = []
    steps = (Step(0.0, "bms", Action.INJECT, "emcy"), Step(0.02, "ghost", Action.INJECT, "silent"),
             Step(0.04, "bms", Action.WRITE, "SetChargeCurrent", 40), Step(0.06, "bms", Action.CLEAR, "emcy"))
    scenario = Scenario(lambda a, v: writes.append((a, v)), [sim], steps, period_s=60.0)  # type: ignore[list-item]
    assert [s.device for s in scenario.steps] == ["bms", "bms", "bms"]
    scenario.start()
    deadline = time.monotonic() + 10
    while len(scenario.done) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    scenario.stop()
    assert sim.calls == [("inject", "bms", "emcy"), ("clear", "bms", "emcy")]
    assert writes == [("bms/SetChargeCurrent", 40)]
    assert [s.describe() for s in scenario.done] == ["inject bms:emcy", "write bms/SetChargeCurrent = 40",
                                                     "clear bms:emcy"]


def test_active_alarms_are_shortened_and_counted_to_fit() -> None:
    from emsbms.monitor._panes import _alarms

    rows = [("Alarm/CellOverVoltage", at(AlarmLevel.WARNING)), ("Alarm/CellUnderVoltage", at(AlarmLevel.WARNING)),
            ("Alarm/OverTemperature", at(AlarmLevel.ALARM)), ("Alarm/CommLoss", at(AlarmLevel.OK)), ("Soc", at(5.0))]
    assert _alarms(rows, 60).plain == "OverTemperature CellOverVoltage CellUnderVoltage"  # worst first
    assert _alarms(rows, 30).plain == "OverTemp CellOverVolt +1"
    assert _alarms(rows, 14).plain == "OverTemp +2"
    assert _alarms(rows, 8).plain == "Over… +2"
    assert _alarms(rows[3:], 8).plain == "none"


@pytest.mark.parametrize("width", [60, 80, 120, 200])
@pytest.mark.parametrize("devices", [0, 1, 3, 12])
@pytest.mark.parametrize("events", [0, 2, 30])
def test_pane_height_is_known_before_drawing(width: int, devices: int, events: int) -> None:
    from emsbms.monitor._layout import _pane_lines, _panes
    from emsbms.monitor._model import Scene, classify

    snap = {f"can{i % 4}/RxFrames": at(1) for i in range(4)}
    snap |= {f"d{i}/CommState": at(CommState.OK) for i in range(devices)}
    made = tuple(event(i, f"d{i}", EventKind.COMM, Severity.OK, "x") for i in range(events))
    scene = Scene(snap, NOW, History(), made)
    view = classify(scene, Filters())
    for height, rows, event_rows in ((24, 3, 3), (50, 8, 7), (14, 2, 2)):
        drawn = _panes(scene, view, width, height, rows, event_rows)
        assert len(drawn) == _pane_lines(view, width, height, rows, event_rows)
