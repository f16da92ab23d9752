"""The monitor's core pane: the cycle's figures and the active overrides (from `core/OverrideList`), and the
site's virtual device `ess0` listed like a device while `core/*` is not one."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from emsbms import demo
from emsbms.cli.demo import demo_core
from emsbms.cli.monitor import uplink_of, watch
from emsbms.edge import Edge
from emsbms.edge.events import EventLog
from emsbms.edge.lock import EdgeLock
from emsbms.edge.registry import Snapshot
from emsbms.monitor import render
from emsbms.monitor._core import OverrideRow, core_pane, core_summary, override_rows
from emsbms.site import load_site
from emsbms.types import CommandStatus, Reading
from tests.conftest import wait
from tests.test_monitor import DEVICES, NOW, at, check_snapshot, lines_of, site, text_of

LIST = "core/OverrideList"
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


# -- the demo's core and the monitor's ---------------------------------------------------------------


def test_the_demo_runs_the_core_over_its_strings_and_the_frame_shows_ess0_and_an_override(tmp_path: Path) -> None:
    import emsbms.core.registry as registry

    full = demo.demo_site()
    assert [t["type"] for t in full.controllers] == ["site-limits", "limit-enforcement", "soc-balance"]
    assert full.controllers[0]["strings"] == list(demo.DEMO_STRINGS)
    assert full.controllers[0]["capacity_ah"] == {"acme_lv_bytemap": 100.0}
    assert [c.name for c in registry.build_controllers(full.controllers)] == ["site", "limits", "balance"]
    written = demo.write_demo_site(tmp_path / "demo.toml")
    assert load_site(written).controllers == full.controllers  # the site file holds them too
    strings = [d for d in full.devices if d.name in demo.DEMO_STRINGS]
    site = replace(full, devices=strings, buses=[full.bus(d.bus) for d in strings])
    simulations, site = demo.start_simulations(site)
    try:
        edge = Edge(site)
        events = watch(edge)
        core = demo_core(edge, events)
        assert core is not None and core.expires_s == demo.DEMO_OVERRIDE_S
        with edge:
            core.start()
            try:
                assert wait(lambda: edge.snapshot().value("ess0/Strings") == 2, 30)
                result = core.local_write("cia418_bms/SetChargeCurrent", 20.0, timeout=10)
                assert result.status is CommandStatus.ACKED, result
                assert wait(lambda: "cia418_bms/SetChargeCurrent" in str(edge.snapshot().value(LIST)), 10)
                snap = edge.snapshot()
                frame = text_of(render(snap, snap.taken_us, 120, 40), 120, 40)
                lines = [line.rstrip() for line in frame.splitlines()]
            finally:
                core.stop()
    finally:
        demo.stop_simulations(simulations)
    assert any(line.startswith("Overrides (1)") for line in lines), lines
    assert any(line.split()[:2] == ["cia418_bms/SetChargeCurrent", "20"] and line.split()[3] == "local"
               for line in lines), lines
    assert any(line.split()[:3] == ["ess0", "—", "—"] for line in lines), lines
    events.drain()
    assert any("override of cia418_bms/SetChargeCurrent = 20" in e.text for e in events.events())


def test_the_monitor_starts_the_core_unless_another_edge_holds_the_database(tmp_path: Path) -> None:
    site = demo.demo_site()
    db = tmp_path / "edge.db"
    edge = Edge(site)
    with uplink_of(edge, db, EventLog()) as core:
        assert core is not None and [c.name for c in core.runner.cycle.controllers] == ["site", "limits", "balance"]
        assert core.table is not None  # `emsbms overrides` sees the monitor's overrides
        core.stop()
    other = EdgeLock.acquire(db)
    try:
        with uplink_of(Edge(site), db, EventLog()) as core:
            assert core is None
    finally:
        other.release()
    with uplink_of(Edge(replace(site, controllers=[])), db) as core:
        assert core is None
