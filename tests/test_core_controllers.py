"""The shipped controllers on hand-made process images, with hand-computed expected values."""

from __future__ import annotations

import pytest

from emsbms.core.arbiter import Arbiter, Write
from emsbms.core.controller import Clamp, ProcessImage, Setpoint, Source
from emsbms.core.controllers import LimitEnforcement, SiteLimits, SocBalance
from emsbms.core.controllers.soc_balance import split_current
from emsbms.core.cycle import Cycle, CycleRunner
from emsbms.core.dispatcher import CommandDispatcher
from emsbms.core.registry import build_controllers, controller_class
from emsbms.edge import Edge
from emsbms.errors import ConfigError
from emsbms.sim.runner import Simulation
from emsbms.types import CommState, Quality, Reading, Value
from tests.conftest import virtual_site, wait

CURRENT_COMMANDS = {"SetChargeCurrent": (0.0, 200.0), "SetDischargeCurrent": (0.0, 250.0)}


def make_image(strings: dict[str, dict[str, Value]], states: dict[str, CommState] | None = None,
               stale: tuple[str, ...] = (), extra: dict[str, Value] | None = None,
               commands: dict[str, tuple[float, float]] | None = None,
               no_commands: tuple[str, ...] = ()) -> ProcessImage:
    """One device per string: its channels, CommState (default OK), every command of `commands`."""
    readings: dict[str, Reading] = {}
    limits: dict[str, tuple[float | None, float | None]] = {}
    for name, channels in strings.items():
        for channel, value in channels.items():
            address = f"{name}/{channel}"
            readings[address] = Reading(value, "", 1_000, Quality.STALE if address in stale else Quality.OK)
        for command, bounds in (commands or CURRENT_COMMANDS).items():
            if f"{name}/{command}" not in no_commands:
                limits[f"{name}/{command}"] = bounds
    for address, value in (extra or {}).items():
        readings[address] = Reading(value, "", 1_000, Quality.STALE if address in stale else Quality.OK)
    devices = {name: (states or {}).get(name, CommState.OK) for name in strings}
    return ProcessImage(readings, 2_000, limits, devices)


def string(soc: float, capacity: float, ccl: float, dcl: float, cmv: float = 58.0, dmv: float = 44.0
           ) -> dict[str, Value]:
    return {"Soc": soc, "Capacity": capacity, "ChargeMaxCurrent": ccl, "DischargeMaxCurrent": dcl,
            "ChargeMaxVoltage": cmv, "DischargeMinVoltage": dmv}


THREE = {
    "bms_0": string(80, 100, 100, 150, 58.0, 44.0),
    "bms_1": string(60, 100, 60, 150, 57.6, 45.0),
    "bms_2": string(40, 50, 50, 40, 58.4, 43.2),
}


def site_limits(**options: object) -> SiteLimits:
    controller = controller_class("site-limits").from_options("site", {"strings": list(THREE), **options})
    assert isinstance(controller, SiteLimits)
    return controller


# ---- site-limits ----

def test_site_limits_by_capacity_share() -> None:
    out = site_limits().run(make_image(THREE), 2_000)
    assert out.channels == {
        "ess0/Soc": 64.0,  # (80*100 + 60*100 + 40*50) / 250
        "ess0/ChargeMaxCurrent": 150.0,  # 250 * min(100/100, 60/100, 50/50)
        "ess0/DischargeMaxCurrent": 200.0,  # 250 * min(150/100, 150/100, 40/50)
        "ess0/ChargeMaxVoltage": 57.6,  # min of 58.0, 57.6, 58.4
        "ess0/DischargeMinVoltage": 45.0,  # max of 44.0, 45.0, 43.2
        "ess0/Strings": 3,
    }
    assert out.units["ess0/Soc"] == "%" and out.units["ess0/ChargeMaxCurrent"] == "A"
    assert out.events == [] and out.setpoints == [] and out.clamps == {}


def test_site_limits_by_limit_share_is_the_sum() -> None:
    out = site_limits(share="limit", site="site").run(make_image(THREE), 2_000)
    assert out.channels["site/ChargeMaxCurrent"] == 210.0  # 100 + 60 + 50
    assert out.channels["site/DischargeMaxCurrent"] == 340.0  # 150 + 150 + 40


def test_site_limits_drop_a_lost_string_with_one_event_per_change() -> None:
    controller = site_limits()
    assert controller.run(make_image(THREE), 1).events == []
    lost = make_image(THREE, states={"bms_2": CommState.LOST})
    first = controller.run(lost, 2)
    assert first.events == ["bms_2 left out of ess0: CommState LOST"]
    assert first.channels["ess0/Soc"] == 70.0  # (80*100 + 60*100) / 200
    assert first.channels["ess0/ChargeMaxCurrent"] == 120.0  # 200 * min(1.0, 0.6)
    assert first.channels["ess0/DischargeMaxCurrent"] == 300.0  # 200 * 1.5
    assert first.channels["ess0/DischargeMinVoltage"] == 45.0
    assert first.channels["ess0/Strings"] == 2
    assert controller.run(lost, 3).events == []
    assert controller.run(make_image(THREE), 4).events == ["bms_2 back in ess0"]


def test_site_limits_drop_a_string_with_a_stale_reading() -> None:
    out = site_limits().run(make_image(THREE, stale=("bms_0/ChargeMaxCurrent",)), 1)
    assert out.events == ["bms_0 left out of ess0: bms_0/ChargeMaxCurrent is stale"]
    assert out.channels["ess0/Soc"] == pytest.approx(160 / 3)  # (60*100 + 40*50) / 150
    assert out.channels["ess0/ChargeMaxCurrent"] == 90.0  # 150 * min(0.6, 1.0)


def test_site_limits_capacity_from_the_options() -> None:
    strings = {name: {k: v for k, v in values.items() if k != "Capacity"} for name, values in THREE.items()}
    controller = controller_class("site-limits").from_options(
        "site", {"strings": list(THREE), "capacity_ah": {"bms_0": 100, "bms_1": 100}})
    out = controller.run(make_image(strings), 1)
    assert out.events == ["bms_2 left out of ess0: bms_2/Capacity has no value"]
    assert out.channels["ess0/Soc"] == 70.0


def test_site_limits_with_no_string_allow_no_current() -> None:
    out = site_limits().run(make_image(THREE, states=dict.fromkeys(THREE, CommState.STALE)), 1)
    assert out.channels["ess0/ChargeMaxCurrent"] == 0.0
    assert out.channels["ess0/DischargeMaxCurrent"] == 0.0
    assert out.channels["ess0/Soc"] is None and out.channels["ess0/Strings"] == 0
    assert len(out.events) == 3


@pytest.mark.parametrize(("options", "key"), [
    ({}, "'strings'"),
    ({"strings": []}, "'strings'"),
    ({"strings": ["a", "a"]}, "'strings'"),
    ({"strings": ["a"], "share": "equal"}, "'share'"),
    ({"strings": ["a"], "capacity_ah": {"b": 10}}, "'capacity_ah'"),
    ({"strings": ["a"], "capacity_ah": {"a": -1}}, "'capacity_ah.a'"),
    ({"strings": ["a"], "soc_channel": ""}, "'soc_channel'"),
    ({"strings": ["a"], "limits": 1}, "'limits'"),
])
def test_site_limits_refuse_bad_options_by_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key) as e:
        SiteLimits.from_options("site", options)
    assert "controller 'site' (type 'site-limits')" in str(e.value)


# ---- soc-balance ----

def balance(**options: object) -> SocBalance:
    controller = controller_class("soc-balance").from_options("bal", {"strings": list(THREE), **options})
    assert isinstance(controller, SocBalance)
    return controller


EQUAL = {
    "bms_0": string(80, 100, 100, 100),
    "bms_1": string(60, 100, 100, 100),
    "bms_2": string(40, 100, 40, 100),
}


def values(out_setpoints: list[Setpoint]) -> dict[str, float]:
    return {s.address: s.value for s in out_setpoints}


def test_balance_charging_gives_more_to_the_lower_soc_and_respects_the_ccl() -> None:
    out = balance(current_a=100).run(make_image(EQUAL), 1)
    # weights 100*(100-80)=2000, 4000, 6000: 16.7, 33.3, 50 -> bms_2 capped at its CCL 40;
    # the other 60 A by 2000:4000 -> 20, 40
    assert values(out.setpoints) == {
        "bms_0/SetChargeCurrent": 20.0, "bms_0/SetDischargeCurrent": 0.0,
        "bms_1/SetChargeCurrent": 40.0, "bms_1/SetDischargeCurrent": 0.0,
        "bms_2/SetChargeCurrent": 40.0, "bms_2/SetDischargeCurrent": 0.0,
    }
    assert out.events == []


def test_balance_discharging_gives_more_to_the_higher_soc() -> None:
    out = balance(current_a=-90).run(make_image(EQUAL), 1)
    # weights 100*80, 100*60, 100*40 over 90 A -> 40, 30, 20
    assert values(out.setpoints) == {
        "bms_0/SetDischargeCurrent": 40.0, "bms_0/SetChargeCurrent": 0.0,
        "bms_1/SetDischargeCurrent": 30.0, "bms_1/SetChargeCurrent": 0.0,
        "bms_2/SetDischargeCurrent": 20.0, "bms_2/SetChargeCurrent": 0.0,
    }


def test_balance_rounds_down_and_weighs_capacity() -> None:
    strings = {"bms_0": string(50, 200, 100, 100), "bms_1": string(50, 100, 100, 100),
               "bms_2": string(70, 100, 100, 100)}
    out = balance(current_a=50).run(make_image(strings), 1)
    # weights 200*50=10000, 100*50=5000, 100*30=3000: 27.78, 13.89, 8.33 -> down to 0.1 A
    charge = {a: v for a, v in values(out.setpoints).items() if a.endswith("SetChargeCurrent")}
    assert charge == {"bms_0/SetChargeCurrent": 27.7, "bms_1/SetChargeCurrent": 13.8,
                      "bms_2/SetChargeCurrent": 8.3}


def test_balance_sees_the_own_limit_through_the_echo_of_its_command() -> None:
    controller = balance(current_a=100)
    controller.run(make_image(EQUAL), 1)  # 20, 40, 40 with the own CCLs 100, 100, 40
    # the BMSs now report the commands held as their limits (20, 40, 40): an echo, not their own limits
    echoed = {name: {**channels, "ChargeMaxCurrent": ccl}
              for (name, channels), ccl in zip(EQUAL.items(), (20, 40, 40), strict=True)}
    held = {"bms_0/SetChargeCurrent": 20.0, "bms_1/SetChargeCurrent": 40.0, "bms_2/SetChargeCurrent": 40.0}
    controller.current_a = 150
    out = controller.run(make_image(echoed, extra=held), 2)
    # caps stay 100, 100, 40: 25, 50, 75 -> bms_2 at 40; 110 A by 2000:4000 -> 36.67, 73.33 -> down to 0.1 A
    charge = {a: v for a, v in values(out.setpoints).items() if a.endswith("SetChargeCurrent")}
    assert charge == {"bms_0/SetChargeCurrent": 36.6, "bms_1/SetChargeCurrent": 73.3,
                      "bms_2/SetChargeCurrent": 40.0}
    # a limit below the command held is the BMS's own: bms_1 reports 30 while holding 40 -> capped at 30
    lower = {**echoed, "bms_1": {**echoed["bms_1"], "ChargeMaxCurrent": 30}}
    out = controller.run(make_image(lower, extra=held), 3)
    assert values(out.setpoints)["bms_1/SetChargeCurrent"] == 30.0


def test_balance_never_above_the_command_range() -> None:
    commands = {"SetChargeCurrent": (0.0, 30.0), "SetDischargeCurrent": (0.0, 250.0)}
    strings = {**EQUAL, "bms_2": string(40, 100, 100, 100)}
    out = balance(current_a=90).run(make_image(strings, commands=commands), 1)
    # caps min(CCL 100, profile max 30) = 30 each; parts 15, 30, 45: bms_1 and bms_2 reach 30 and keep it,
    # the remaining 30 A goes to bms_0 (its cap, 30)
    charge = {a: v for a, v in values(out.setpoints).items() if a.endswith("SetChargeCurrent")}
    assert charge == {"bms_0/SetChargeCurrent": 30.0, "bms_1/SetChargeCurrent": 30.0,
                      "bms_2/SetChargeCurrent": 30.0}


def test_split_current_water_fills() -> None:
    assert split_current(90, [2000, 4000, 6000], [100, 100, 40]) == pytest.approx([50 / 3, 100 / 3, 40])
    assert split_current(90, [0, 0], [30, 60]) == pytest.approx([30, 60])  # no weight: by the caps
    assert split_current(500, [1, 1], [30, 60]) == [30, 60]  # more than the caps: the caps


def test_balance_reads_the_request_channel_and_leaves_out_a_lost_string() -> None:
    controller = balance(request="ess0/Request")
    lost = make_image(EQUAL, states={"bms_0": CommState.LOST}, extra={"ess0/Request": -50.0})
    out = controller.run(lost, 1)
    # bms_1 and bms_2: weights 6000, 4000 over 50 A -> 30, 20
    assert values(out.setpoints) == {
        "bms_1/SetDischargeCurrent": 30.0, "bms_1/SetChargeCurrent": 0.0,
        "bms_2/SetDischargeCurrent": 20.0, "bms_2/SetChargeCurrent": 0.0,
    }
    assert out.events == ["bms_0 left out of the balance: CommState LOST"]
    stale = make_image(EQUAL, extra={"ess0/Request": -50.0}, stale=("ess0/Request",))
    out = controller.run(stale, 2)
    assert out.setpoints == [] and out.events == ["no setpoints: ess0/Request is stale"]
    assert controller.run(stale, 3).events == []
    # a setpoint a higher-priority controller set this cycle wins over the snapshot
    fresh = make_image(EQUAL, extra={"ess0/Request": -50.0}).with_setpoints({"ess0/Request": 30.0})
    out = controller.run(fresh, 4)
    assert out.events == ["ess0/Request usable again", "bms_0 back in the balance"]
    assert values(out.setpoints)["bms_2/SetChargeCurrent"] == 15.0  # 30 * 6000 / 12000


def test_balance_leaves_out_a_string_without_the_command() -> None:
    out = balance(current_a=-60).run(make_image(EQUAL, no_commands=("bms_2/SetDischargeCurrent",)), 1)
    assert out.events == ["bms_2 left out of the balance: bms_2/SetDischargeCurrent is not a command channel"]
    # bms_0 and bms_1: weights 8000, 6000 over 60 A -> 34.29, 25.71 -> down to 0.1 A
    assert values(out.setpoints)["bms_0/SetDischargeCurrent"] == 34.2
    assert values(out.setpoints)["bms_1/SetDischargeCurrent"] == 25.7


@pytest.mark.parametrize(("options", "key"), [
    ({"strings": ["a"]}, "'current_a' and 'request'.*neither"),
    ({"strings": ["a"], "current_a": 5, "request": "ess0/Request"}, "'current_a' and 'request'.*both"),
    ({"strings": ["a"], "request": "Request"}, "'request'"),
    ({"strings": ["a"], "current_a": "5"}, "'current_a'"),
    ({"strings": ["a"], "current_a": 5, "resolution_a": 0}, "'resolution_a'"),
    ({"strings": ["a"], "current_a": 5, "charge_command": 3}, "'charge_command'"),
])
def test_balance_refuses_bad_options_by_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        SocBalance.from_options("bal", options)


# ---- limit-enforcement ----

def enforcement(**options: object) -> LimitEnforcement:
    controller = controller_class("limit-enforcement").from_options("limits", options)
    assert isinstance(controller, LimitEnforcement)
    return controller


def test_enforcement_clamps_at_the_live_ccl() -> None:
    out = enforcement().run(make_image({"bms_0": string(50, 100, 50, 300)}), 1)
    assert out.clamps == {
        "bms_0/SetChargeCurrent": Clamp(maximum=50.0, reason="bms_0/ChargeMaxCurrent = 50"),
        # the live DCL 300 is above the profile's 250: the static range stays the outer bound
        "bms_0/SetDischargeCurrent": Clamp(maximum=250.0, reason="bms_0/DischargeMaxCurrent = 300"),
    }
    assert out.setpoints == [] and out.events == []


def test_enforcement_rejects_in_reject_mode() -> None:
    out = enforcement(mode="reject", strings=["bms_0"]).run(make_image({"bms_0": string(50, 100, 50, 300)}), 1)
    assert out.clamps["bms_0/SetChargeCurrent"] == Clamp(maximum=50.0, reject=True,
                                                         reason="bms_0/ChargeMaxCurrent = 50")


def test_enforcement_holds_an_untrusted_limit_at_the_floor_with_one_event() -> None:
    controller = enforcement(pairs={"SetChargeCurrent": "ChargeMaxCurrent"})
    stale = make_image({"bms_0": string(50, 100, 50, 300)}, stale=("bms_0/ChargeMaxCurrent",))
    out = controller.run(stale, 1)
    assert out.clamps == {"bms_0/SetChargeCurrent": Clamp(
        maximum=0.0, reason="bms_0/ChargeMaxCurrent unknown (bms_0/ChargeMaxCurrent is stale)")}
    assert out.events == ["bms_0/SetChargeCurrent held at its minimum: bms_0/ChargeMaxCurrent is stale"]
    assert controller.run(stale, 2).events == []
    back = controller.run(make_image({"bms_0": string(50, 100, 50, 300)}), 3)
    assert back.events == ["bms_0/SetChargeCurrent bounded by the live limit again"]
    assert back.clamps["bms_0/SetChargeCurrent"].maximum == 50.0


def test_enforcement_is_not_held_down_by_the_echo_of_the_command() -> None:
    controller = enforcement()
    assert controller.run(make_image({"bms_0": string(50, 100, 100, 300)}), 1).clamps[
        "bms_0/SetChargeCurrent"].maximum == 100.0
    # 50 A is held and the BMS reports it as its CCL: the own limit seen before (100) still bounds
    echo = make_image({"bms_0": string(50, 100, 50, 300)}, extra={"bms_0/SetChargeCurrent": 50.0})
    clamps = controller.run(echo, 2).clamps
    assert clamps["bms_0/SetChargeCurrent"].maximum == 100.0
    arbiter = Arbiter()
    arbiter.set_override("bms_0/SetChargeCurrent", 70.0, now_us=0)
    assert arbiter.plan({}, clamps, now_us=3).writes == [Write("bms_0/SetChargeCurrent", 70.0, Source.MANUAL)]
    # a CCL below the command held is the BMS's own
    lower = make_image({"bms_0": string(50, 100, 30, 300)}, extra={"bms_0/SetChargeCurrent": 50.0})
    assert controller.run(lower, 4).clamps["bms_0/SetChargeCurrent"].maximum == 30.0


def test_enforcement_by_default_covers_every_device_with_the_command() -> None:
    image = make_image({"bms_0": string(50, 100, 50, 80), "bms_1": string(50, 100, 20, 30)},
                       no_commands=("bms_1/SetDischargeCurrent",))
    out = enforcement().run(image, 1)
    assert {a: c.maximum for a, c in out.clamps.items()} == {
        "bms_0/SetChargeCurrent": 50.0, "bms_0/SetDischargeCurrent": 80.0, "bms_1/SetChargeCurrent": 20.0}


def test_enforcement_clamps_a_70_a_manual_override_to_the_ccl_50_a() -> None:
    out = enforcement(mode="clamp").run(make_image({"bms_0": string(50, 100, 50, 300)}), 1)
    arbiter = Arbiter()
    arbiter.set_override("bms_0/SetChargeCurrent", 70.0, now_us=0)
    plan = arbiter.plan({Source.AUTO: {"bms_0/SetDischargeCurrent": 260.0}}, out.clamps, now_us=1)
    assert plan.writes == [Write("bms_0/SetChargeCurrent", 50.0, Source.MANUAL),
                           Write("bms_0/SetDischargeCurrent", 250.0, Source.AUTO)]
    assert plan.events == []


def test_enforcement_rejects_a_70_a_setpoint_above_the_ccl_50_a() -> None:
    out = enforcement(mode="reject").run(make_image({"bms_0": string(50, 100, 50, 300)}), 1)
    arbiter = Arbiter()
    arbiter.set_override("bms_0/SetChargeCurrent", 70.0, now_us=0)
    plan = arbiter.plan({Source.AUTO: {"bms_0/SetChargeCurrent": 45.0, "bms_0/SetDischargeCurrent": 260.0}},
                        out.clamps, now_us=1)
    # the manual 70 A is refused (its override cancelled), the AUTO 45 A takes over; AUTO 260 A refused
    assert plan.writes == [Write("bms_0/SetChargeCurrent", 45.0, Source.AUTO)]
    assert plan.events == [
        "override of bms_0/SetChargeCurrent cancelled: 70 is outside the live limits [None, 50.0]"
        " (bms_0/ChargeMaxCurrent = 50); control returns to auto",
        "auto setpoint bms_0/SetDischargeCurrent = 260 refused: 260 is outside the live limits [None, 250.0]"
        " (bms_0/DischargeMaxCurrent = 300)",
    ]


@pytest.mark.parametrize(("options", "key"), [
    ({"mode": "block"}, "'mode'"),
    ({"pairs": {}}, "'pairs'"),
    ({"strings": "bms_0"}, "'strings'"),
    ({"clamp": True}, "'clamp'"),
    ({"priority": 1.5}, "'priority'"),
])
def test_enforcement_refuses_bad_options_by_key(options: dict[str, object], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        LimitEnforcement.from_options("limits", options)


def test_the_shipped_types_build_from_controller_tables() -> None:
    built = build_controllers([
        {"name": "site", "type": "site-limits", "strings": ["bms_0"]},
        {"name": "bal", "type": "soc-balance", "strings": ["bms_0"], "current_a": 10, "priority": 2},
        {"name": "limits", "type": "limit-enforcement", "mode": "reject"},
    ])
    assert [(c.name, type(c).__name__, c.source.value, c.priority) for c in built] == [
        ("site", "SiteLimits", "safety", 0), ("bal", "SocBalance", "auto", 2),
        ("limits", "LimitEnforcement", "safety", 0)]


def test_the_three_in_one_cycle() -> None:
    cycle = Cycle(build_controllers([
        {"name": "bal", "type": "soc-balance", "strings": list(EQUAL), "current_a": 100},
        {"name": "limits", "type": "limit-enforcement", "strings": list(EQUAL)},
        {"name": "site", "type": "site-limits", "strings": list(EQUAL)},
    ]))
    result = cycle.step(make_image(EQUAL, states={"bms_2": CommState.LOST}), 1)
    assert result.setpoints[Source.AUTO] == {  # 100 A by 2000:4000 over bms_0, bms_1
        "bms_0/SetChargeCurrent": 33.3, "bms_0/SetDischargeCurrent": 0.0,
        "bms_1/SetChargeCurrent": 66.6, "bms_1/SetDischargeCurrent": 0.0}
    assert result.clamps["bms_1/SetChargeCurrent"].maximum == 100.0
    assert result.clamps["bms_2/SetChargeCurrent"].maximum == 0.0
    assert result.channels["ess0/Soc"] == 70.0 and result.channels["ess0/ChargeMaxCurrent"] == 200.0
    assert result.events == [
        "controller limits: bms_2/SetChargeCurrent held at its minimum: CommState LOST",
        "controller limits: bms_2/SetDischargeCurrent held at its minimum: CommState LOST",
        "controller site: bms_2 left out of ess0: CommState LOST",
        "controller bal: bms_2 left out of the balance: CommState LOST",
    ]


def test_on_three_simulated_acme_hv_strings_with_the_default_names() -> None:
    names = ["bms_0", "bms_1", "bms_2"]
    site = virtual_site(["can0", "can1", "can2"],
                        [{"name": n, "bus": f"can{i}", "profile": "acme-hv"} for i, n in enumerate(names)])
    with Simulation(site) as sim, Edge(site) as edge:
        for n in names:
            edge.read(f"{n}/Capacity", timeout=10)
            assert edge.wait_until(lambda s, n=n: s.value(f"{n}/CommState") == CommState.OK, 10.0)
        events: list[str] = []
        with CommandDispatcher.for_edge(edge, on_event=events.append) as dispatcher:
            cycle = Cycle(build_controllers([
                {"name": "limits", "type": "limit-enforcement", "strings": names},
                {"name": "site", "type": "site-limits", "strings": names},
                {"name": "balance", "type": "soc-balance", "strings": names, "current_a": 60},
            ]))
            runner = CycleRunner(edge, cycle, dispatcher, on_event=events.append)
            runner.run_once()
            snap = edge.snapshot()
            # the acme-hv simulator: 120 Ah, CCL 100 A, DCL 150 A, 340.8 V and 268.8 V per string
            assert snap.value("ess0/Strings") == 3
            assert snap.value("ess0/ChargeMaxCurrent") == pytest.approx(300.0)  # 360 * min(100/120)
            assert snap.value("ess0/DischargeMaxCurrent") == pytest.approx(450.0)
            assert snap.value("ess0/ChargeMaxVoltage") == pytest.approx(340.8)
            assert snap.value("ess0/DischargeMinVoltage") == pytest.approx(268.8)
            assert snap["ess0/Soc"].unit == "%"
            models = [sim.simulators[n].model for n in names]
            # the split reached every BMS over its bus: 60 A in all (down to 0.1 A each), none above 100 A,
            # more to the lower SoC; the discharge setpoints at 0
            assert wait(lambda: all(m.discharge_max_current == 0.0 for m in models)), events
            charge = [m.charge_max_current for m in models]
            assert 59.7 <= sum(charge) <= 60.0 and max(charge) <= 100.0, charge
            by_soc = sorted(range(3), key=lambda i: models[i].soc)
            assert [charge[i] for i in by_soc] == sorted(charge, reverse=True), (charge, [m.soc for m in models])
            assert dispatcher.rejected[Source.AUTO] == 0, events
