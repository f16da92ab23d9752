"""The monitor's pure rendering: snapshot tests of its text at 80x24, filters and formatting."""

from __future__ import annotations

import re

from rich.console import Console

from emsbms.bus import BusState
from emsbms.monitor import Filters, format_age, format_number, format_value, render
from emsbms.registry import Snapshot
from emsbms.types import AlarmLevel, CommState, Quality, Reading

NOW = 1_700_000_000_000_000  # 2023-11-14 22:13:20 UTC


def at(value: object, unit: str = "", age_s: float = 0.5, quality: Quality = Quality.OK) -> Reading:
    return Reading(value, unit, NOW - int(age_s * 1e6), quality)  # type: ignore[arg-type]


def small_site() -> Snapshot:
    snap: dict[str, Reading] = {}
    for bus, unknown in (("can0", 3), ("can1", 0)):
        snap |= {
            f"{bus}/State": at(BusState.ERROR_ACTIVE if bus == "can0" else BusState.BUS_OFF),
            f"{bus}/RxFrames": at(120), f"{bus}/RxRate": at(9.5, "frames/s"), f"{bus}/ErrorFrames": at(0),
            f"{bus}/Dropped": at(0), f"{bus}/UnknownIds": at(unknown),
        }
    snap |= {
        "bms_0/CommState": at(CommState.OK), "bms_0/LastSeen": at(NOW - 300_000, "µs"),
        "bms_0/Soc": at(77.0, "%"), "bms_0/Voltage": at(52.345, "V"),
        "bms_0/Current": at(-12.3, "A", 7.0, Quality.STALE), "bms_0/Temperature": at(25.375, "°C"),
        "bms_0/AllowCharge": at(True), "bms_0/Alarm/OverTemperature": at(AlarmLevel.OK),
        "bms_0/Alarm/CommLoss": at(AlarmLevel.OK),
        "bms_1/CommState": at(CommState.LOST), "bms_1/LastSeen": at(NOW - 42_000_000, "µs"),
        "bms_1/Soc": at(12.0, "%", 42.0, Quality.STALE), "bms_1/Alarm/OverTemperature": at(AlarmLevel.ALARM),
        "bms_1/Alarm/CommLoss": at(AlarmLevel.ALARM),
    }
    return Snapshot(snap, NOW)


def text_of(renderable: object, width: int = 80, height: int = 24) -> str:
    console = Console(record=True, width=width, height=height, file=open("/dev/null", "w"))  # noqa: SIM115
    console.print(renderable)
    return console.export_text()


EXPECTED_80X24 = """\
emsbms monitor  2 devices  2 buses  22:13:20 UTC
Bus       State     Rx/s  Err Drop  Unk Device          Comm    Seen Alarm
can0      active     9.5    0    0    3 bms_0           OK      0.3s ok
can1      bus-off    9.5    0    0    0 bms_1           LOST     42s CommLoss
─ bms_0 ──────────────────────────── OK  2 alarms ok
 Soc                     77 % 0.5s ok   ─ bms_1 ────────────────────────── LOST
 Voltage             52.345 V 0.5s ok    Soc                     12 %  42s stale
 Current              -12.3 A 7.0s stale !CommLoss              ALARM 0.5s ok
 Temperature        25.375 °C 0.5s ok    !OverTemperature       ALARM 0.5s ok
 AllowCharge              yes 0.5s ok
"""


def test_render_80x24_snapshot() -> None:
    text = text_of(render(small_site(), NOW, 80, 24))
    assert [line.rstrip() for line in text.splitlines()] == EXPECTED_80X24.splitlines()
    assert all(len(line) == 80 for line in text.splitlines()[:9])


def test_render_fits_80x24_with_many_channels() -> None:
    snap = dict(small_site())
    for d in range(6):
        for c in range(30):
            snap[f"dev_{d}/Channel{c:02d}"] = at(float(c) * 1.5, "V")
    text = text_of(render(Snapshot(snap, NOW), NOW, 80, 24))
    lines = text.splitlines()
    assert len(lines) == 24
    assert max(len(line) for line in lines) <= 80
    # cells: 8 device headers, bms_0 5 channels + "2 alarms ok", bms_1 3, dev_* 6 x 30 = 197.
    # 24 lines - 1 header - 9 pane lines (header + 8 devices) = 14 rows x 2 columns = 28 places;
    # 27 cells a page (the 28th says how many are left: 197 - 27 = 170), ceil(197 / 27) = 8 pages
    assert lines[-1].rstrip().endswith("+170 more · page 1/8")


def test_pages_turn_through_every_channel() -> None:
    snap = dict(small_site())
    for c in range(60):
        snap[f"dev_0/Channel{c:02d}"] = at(float(c), "V")
    seen: set[str] = set()
    # bms_0 6 + bms_1 3 + dev_0 60 + 3 headers = 72 cells; 24 lines - 1 header - 4 pane lines
    # (header + 3 devices) = 19 rows x 2 columns = 38 places, 37 cells a page: 2 pages
    for page in range(3):
        text = text_of(render(Snapshot(snap, NOW), NOW, 80, 24, Filters(page=page)))
        seen |= set(re.findall(r"Channel\d\d", text))
        assert f"page {page % 2 + 1}/2" in text
    assert seen == {f"Channel{c:02d}" for c in range(60)}


def test_render_narrow_terminal_stacks_panes() -> None:
    text = text_of(render(small_site(), NOW, 60, 14), width=60, height=14)
    lines = text.splitlines()
    assert len(lines) <= 14
    assert max(len(line) for line in lines) <= 60
    assert lines[1].startswith("Bus ")
    assert lines[4].startswith("Device ")


def test_device_filter_hides_other_devices() -> None:
    text = text_of(render(small_site(), NOW, 80, 24, Filters(devices=("bms_1",))))
    assert "bms_0" not in text
    assert "─ bms_1" in text
    assert "filter: bms_1" in text.splitlines()[0]


def test_bus_filter_keeps_only_that_bus() -> None:
    lines = text_of(render(small_site(), NOW, 80, 24, Filters(buses=("can1",)))).splitlines()
    assert lines[2].startswith("can1      bus-off")
    assert not any(line.startswith("can0") for line in lines)


def test_empty_snapshot_says_waiting() -> None:
    assert text_of(render(Snapshot({}, NOW), NOW)).splitlines()[1].startswith("waiting for data")


def test_colours_follow_quality() -> None:
    console = Console(record=True, width=80, height=24, file=open("/dev/null", "w"), color_system="truecolor")  # noqa: SIM115
    console.print(render(small_site(), NOW, 80, 24))
    html = console.export_html(inline_styles=True)
    # the stale current is drawn yellow, the LOST state bold red
    assert "-12.3 A" in html
    stale_span = html[html.index("-12.3 A") - 120 : html.index("-12.3 A")]
    assert "#808000" in stale_span  # rich's standard "yellow"
    lost_span = html[html.index("LOST") - 120 : html.index("LOST")]
    assert "#800000" in lost_span and "bold" in lost_span


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
