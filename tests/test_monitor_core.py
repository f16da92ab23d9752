"""The monitor's core pane: the cycle's figures and the active overrides (from `core/OverrideList`), and the
site's virtual device `ess0` listed like a device while `core/*` is not one."""

from __future__ import annotations

import json

from emsbms.edge.registry import Snapshot
from emsbms.monitor._core import OverrideRow, core_pane, core_summary, override_rows
from emsbms.types import Reading
from tests.test_monitor import DEVICES, NOW, at, check_snapshot, lines_of, site, text_of

OVERRIDES = [
    {"address": "bms_0/SetChargeCurrent", "value": 40.0, "expires_us": NOW + 754_000_000, "source": "cloud"},
    {"address": "hv_0/SetDischargeCurrent", "value": 12.5, "expires_us": NOW + 42_000_000, "source": "local"},
]


def core(overrides: list[dict[str, object]]) -> dict[str, Reading]:
    return {
        "core/CycleTime": at(0.412, "ms"), "core/Overruns": at(2), "core/Writes/auto": at(118),
        "core/Writes/manual": at(3), "core/Rejected/auto": at(1), "core/Overrides": at(len(overrides)),
        "core/OverrideList": at(json.dumps(overrides)), "core/Event": at("controller balance: s2 left out"),
        "ess0/Soc": at(64.0, "%"), "ess0/ChargeMaxCurrent": at(150.0, "A"), "ess0/Strings": at(3),
    }


def pane_text(snapshot: dict[str, Reading], width: int = 80, limit: int = 4) -> list[str]:
    lines = core_pane(snapshot, NOW, width, limit)
    return [line.rstrip() for line in text_of(lines[0].__class__("\n").join(lines), width).splitlines()]


def test_core_pane_80_snapshot() -> None:
    lines = pane_text(core(OVERRIDES))
    check_snapshot("monitor-core-80.txt", lines)
    assert lines[0].startswith("Overrides (2)")
    assert lines[0].endswith("cycle 0.412 ms · overruns 2 · writes 121 · rejected 1")
    assert lines[1].split() == ["hv_0/SetDischargeCurrent", "12.5", "42s", "local"]  # soonest to expire first
    assert lines[2].split() == ["bms_0/SetChargeCurrent", "40", "13m", "cloud"]


def test_rows_summary_and_the_pane_without_overrides_or_core() -> None:
    assert override_rows(core(OVERRIDES))[0] == OverrideRow("hv_0/SetDischargeCurrent", 12.5, NOW + 42_000_000, "local")
    assert override_rows({"core/OverrideList": at("not json")}) == []
    assert core_summary({}) == "cycle — · overruns — · writes 0 · rejected 0"
    assert pane_text(core([]))[1].strip() == "no manual override"
    many = [{**OVERRIDES[0], "address": f"bms_{i}/SetChargeCurrent"} for i in range(6)]
    assert pane_text(core(many), limit=4)[-1].strip() == "… 3 more"
    assert core_pane(dict(site()), NOW, 80) == []


def test_ess0_is_a_device_and_core_is_not_in_the_frame() -> None:
    snap = Snapshot({**dict(site()), **core(OVERRIDES)}, NOW)
    lines = lines_of(120, 40, snap=snap)
    assert any(line.startswith("Overrides (2)") for line in lines)
    assert any(line.split() == ["ess0", "—", "—", "none"] for line in lines), lines  # in the device pane
    assert any("─ ess0 ─" in line for line in lines)  # its channels' header in the table
    assert not any("─ core" in line or " core " in line for line in lines), lines
    assert any("ChargeMaxCurr" in line and "150 A" in line for line in lines)
    assert "ess0" not in DEVICES  # listed without metadata: the snapshot alone makes it a device
