"""The monitor's alarm pane: the rule alarms not ok, FAULT first then newest first, with severity,
state and acknowledgement; from the runner's instances or from the State channels of a snapshot."""

from __future__ import annotations

from emsbms.alarms import AlarmState, Severity, Transition
from emsbms.edge.registry import Snapshot
from emsbms.monitor._alarms import AlarmRow, alarm_pane, alarm_rows, rows_of
from emsbms.types import Quality, Reading
from tests.test_monitor import NOW, at, check_snapshot, lines_of, site, text_of


def transition(rule: str, device: str, state: AlarmState, severity: Severity, acked: bool, age_s: float,
               text: str) -> Transition:
    return Transition(f"{rule}/{device}", rule, device, state, state, severity, acked, None,
                      NOW - round(age_s * 1e6), text)


ACTIVE = [
    transition("soc-spread", "site", AlarmState.ACTIVE, Severity.WARNING, False, 3.0,
               "soc-spread: max(*/Soc) - min(*/Soc) 17 > 15: active"),
    transition("hot", "bms_0", AlarmState.LATCHED, Severity.FAULT, False, 75.0,
               "hot: bms_0/Temperature 30 > 40: latched"),
    transition("hot", "bms_1", AlarmState.ACTIVE, Severity.FAULT, True, 12.0,
               "hot: bms_1/Temperature 45 > 40: active"),
    transition("cells", "bms_2", AlarmState.NO_DATA, Severity.INFO, False, 0.5, "cells: no data"),
]


def pane_text(rows: list[AlarmRow], width: int = 80, limit: int = 8) -> list[str]:
    lines = alarm_pane(rows, NOW, width, limit)
    return [line.rstrip() for line in text_of(lines[0].__class__("\n").join(lines), width).splitlines()]


def test_alarm_pane_80_snapshot() -> None:
    lines = pane_text(rows_of(ACTIVE))
    check_snapshot("monitor-alarms-80.txt", lines)
    assert [line.split()[0] for line in lines[1:]] == ["hot/bms_1", "hot/bms_0", "soc-spread/site", "cells/bms_2"]
    assert lines[2].split()[1:4] == ["FAULT", "latched", "no"]


def test_a_long_list_says_how_many_more_and_nothing_when_all_are_ok() -> None:
    lines = pane_text(rows_of(ACTIVE), limit=3)
    assert lines[-1].strip() == "… 2 more"
    assert alarm_pane([], NOW, 80) == []


def test_rows_from_the_state_channels_of_a_snapshot_and_in_the_frame() -> None:
    snap = site()
    snap = Snapshot({**{a: snap[a] for a in snap},
                     "alarms/hot/bms_0/State": Reading("active", "", NOW - 2_000_000, Quality.OK),
                     "alarms/hot/bms_1/State": at("ok")}, NOW)
    assert alarm_rows(snap) == [AlarmRow("hot/bms_0", "—", "active", None, NOW - 2_000_000)]
    lines = lines_of(120, 40, snap=snap)
    assert any(line.startswith("hot/bms_0") and "active" in line for line in lines)
