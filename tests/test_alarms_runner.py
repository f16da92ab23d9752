"""The alarm runner on a real edge (python-can `virtual` bus, hand-sent Pylon frames), its site-file
rules, its persistence across a restart, and the ack route through the uplink's CommandHandler."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import can
import pytest

from emsbms import Edge
from emsbms.alarms import AlarmRuleError, AlarmState, Transition, parse_rules
from emsbms.alarms.index import RuleIndex
from emsbms.alarms.runner import AlarmRunner
from emsbms.alarms.sources import site_rules
from emsbms.edge.events import Event, EventKind, Severity
from emsbms.errors import ConfigError
from emsbms.site import parse_site
from emsbms.uplink.commands import CommandHandler
from tests.conftest import virtual_site, wait

HOT = {"name": "hot", "expression": "*/Temperature > 40", "clear_expression": "*/Temperature < 35",
       "for": "300ms", "severity": "FAULT", "latch": True}


def send_temperature(peer: can.BusABC, celsius: float) -> None:
    """A Pylon 0x356 frame: 52.12 V, -12.5 A and this temperature (0.1 °C)."""
    data = bytes.fromhex("5c1483ff") + round(celsius * 10).to_bytes(2, "little", signed=True)
    peer.send(can.Message(arbitration_id=0x356, data=data, is_extended_id=False))


@pytest.fixture
def edge_and_peer() -> Iterator[tuple[Edge, can.BusABC]]:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    edge = Edge(site).start()
    yield edge, peer
    edge.stop()
    peer.shutdown()


def state(edge: Edge) -> object:
    r = edge.registry.get("alarms/hot/bms_0/State")
    return None if r is None else r.value


def test_an_over_temperature_frame_raises_after_the_on_delay_with_the_state_channel_and_the_event(
        edge_and_peer: tuple[Edge, can.BusABC], tmp_path: Path) -> None:
    edge, peer = edge_and_peer
    events: list[Event] = []
    transitions: list[Transition] = []
    runner = AlarmRunner(edge, parse_rules([HOT]), tmp_path / "edge.db", on_transition=transitions.append,
                         on_event=events.append).start()
    try:
        send_temperature(peer, 23.4)
        assert wait(lambda: state(edge) == "ok")
        assert edge.registry.info("alarms/hot/bms_0/State").kind.value == "state"
        send_temperature(peer, 45.0)
        assert wait(lambda: state(edge) == "active")
        assert [(t.previous.value, t.state.value) for t in transitions] == [("ok", "pending"), ("pending", "active")]
        active = transitions[1]
        assert active.timestamp_us - transitions[0].timestamp_us >= 300_000  # the on-delay ran
        assert (active.value, active.acked, active.severity.name) == (45.0, False, "FAULT")
        assert events[-1] == Event(active.timestamp_us, "bms_0", EventKind.ALARM, Severity.ALARM,
                                   "hot: bms_0/Temperature 45 > 40 for 0.3 s: active")
        send_temperature(peer, 38.0)  # below the raise threshold, above the clear one: hysteresis
        assert wait(lambda: edge.registry.get("bms_0/Temperature").value == pytest.approx(38.0))  # type: ignore[union-attr]
        runner.cycle(time.time_ns() // 1000)
        assert state(edge) == "active"
        send_temperature(peer, 30.0)
        assert wait(lambda: state(edge) == "latched")
    finally:
        runner.close()


def test_a_restarted_runner_keeps_a_latched_fault_from_the_database(
        edge_and_peer: tuple[Edge, can.BusABC], tmp_path: Path) -> None:
    edge, peer = edge_and_peer
    rules = parse_rules([{**HOT, "for": "0s"}])
    first = AlarmRunner(edge, rules, tmp_path / "edge.db").start()
    send_temperature(peer, 45.0)
    assert wait(lambda: state(edge) == "active")
    send_temperature(peer, 30.0)
    assert wait(lambda: state(edge) == "latched")
    first.close()
    second = AlarmRunner(edge, rules, tmp_path / "edge.db").start()
    try:
        send_temperature(peer, 29.0)  # still cool: a fresh engine would say ok
        assert wait(lambda: edge.registry.get("bms_0/Temperature").value == pytest.approx(29.0))  # type: ignore[union-attr]
        second.cycle(time.time_ns() // 1000)
        assert [(s.id, s.state) for s in second.engine.states()] == [("hot/bms_0", AlarmState.LATCHED)]
        t = second.ack("hot", "bms_0", time.time_ns() // 1000)
        assert (t.previous, t.state, t.acked) == (AlarmState.LATCHED, AlarmState.OK, True)
        assert state(edge) == "ok"
    finally:
        second.close()


def ack_cmd(id: str, address: str, value: float = 1) -> bytes:
    deadline = time.time_ns() // 1000 + 60_000_000
    return json.dumps({"id": id, "address": address, "value": value, "deadline_us": deadline}).encode()


def test_the_ack_route_through_the_command_handler_at_most_once(
        edge_and_peer: tuple[Edge, can.BusABC], tmp_path: Path) -> None:
    edge, peer = edge_and_peer
    runner = AlarmRunner(edge, parse_rules([{**HOT, "for": "0s"}]), tmp_path / "edge.db").start()
    handler = CommandHandler(edge, tmp_path / "edge.db")
    handler.alarms = runner
    try:
        send_temperature(peer, 45.0)
        assert wait(lambda: state(edge) == "active")
        now = time.time_ns() // 1000
        first = json.loads(handler.handle(ack_cmd("a1", "alarms/hot/bms_0/Ack"), now) or b"{}")
        assert (first["status"], first["detail"]) == ("acked", "alarm 'hot/bms_0' acknowledged: active")
        again = json.loads(handler.handle(ack_cmd("a1", "alarms/hot/bms_0/Ack"), now) or b"{}")
        assert again == first  # the ledger answers a repeat with the first result
        assert runner.engine.states()[0].acked is True
        unknown = json.loads(handler.handle(ack_cmd("a2", "alarms/cold/bms_0/Ack"), now) or b"{}")
        assert unknown["status"] == "rejected"
        assert unknown["detail"].startswith("no alarm 'cold/bms_0' (known: hot/bms_0")
        bad = json.loads(handler.handle(ack_cmd("a3", "alarms/hot/Ack"), now) or b"{}")
        assert (bad["status"], bad["detail"]) == (
            "rejected", "expected an address alarms/<rule>/<device>/Ack, found 'alarms/hot/Ack'; nothing sent")
    finally:
        handler.close()
        runner.close()


def test_site_file_rules_name_the_file_the_table_and_the_key() -> None:
    base = {"site": {"org": "o", "name": "s"}}
    with pytest.raises(ConfigError, match=r"^site.toml: \[\[rule\]\] #1 'hot': unknown key 'fro'; did you mean 'for'"):
        parse_site({**base, "rule": [{**HOT, "fro": "2s"}]}, "site.toml")
    with pytest.raises(ConfigError, match=r"^site.toml: \[\[rule\]\] #2 'b': key 'latch' expected bool, found str"):
        parse_site({**base, "rule": [{**HOT, "name": "a"}, {**HOT, "name": "b", "latch": "yes"}]}, "site.toml")
    site = parse_site({**base, "rule": [HOT, {**HOT, "expression": "*/Temperature > )"}]}, "site.toml")
    with pytest.raises(AlarmRuleError, match=r"^site.toml: \[\[rule\]\] #2: rule 'hot': expression column 17: "
                                             r"expected a number or an address, found '\)'$"):
        site_rules(site)
    assert [r.name for r in site_rules(parse_site({**base, "rule": [HOT]}, "site.toml"))] == ["hot"]


def test_the_index_maps_a_channel_to_the_instances_it_can_move() -> None:
    rules = parse_rules([HOT, {"name": "spread", "expression": "max(*/Soc) - min(*/Soc) > 15", "severity": "INFO"},
                         {"name": "lit", "expression": "*/Voltage > bms_9/Voltage", "severity": "INFO"}])
    index = RuleIndex(rules)
    assert index.targets(["bms_3/Temperature"]) == {"hot": {"bms_3"}}
    assert index.targets(["bms_3/Soc", "bms_4/Temperature"]) == {"spread": None, "hot": {"bms_4"}}
    assert index.targets(["bms_9/Voltage"]) == {"lit": None}
    assert index.targets(["bms_3/Current"]) == {}
    # a device's comm: its instance of the per-device rules, every instance of the others
    assert index.targets(["bms_3/CommState"]) == {"hot": {"bms_3"}, "spread": None, "lit": None}


def test_the_cloud_configs_rules_are_checked_whole_stored_and_handed_to_the_runner(tmp_path: Path) -> None:
    from emsbms.alarms.sources import configured_rules
    from emsbms.uplink.config import ConfigHandler
    from tests.test_uplink_config import rig

    with rig(tmp_path) as r:
        handler = ConfigHandler(r.edge, r.db)
        swapped: list[list[str]] = []
        handler.on_rules = lambda rules: swapped.append([x.name for x in rules])

        def payload(version: str, rules: object) -> bytes:
            body = json.loads(r.payload(version, profiles=[]))
            return json.dumps({**body, "rules": rules}).encode()

        bad = json.loads(handler.handle(payload("7", [HOT, {**HOT, "name": "x", "severity": "LOUD"}]), 1))
        assert (bad["status"], bad["detail"]) == (
            "failed", "config 7: key 'rules': rule 'x': key 'severity' expected INFO, WARNING or FAULT,"
                      " found 'LOUD'; the running configuration stays")
        assert swapped == [] and handler.applied() is None
        assert configured_rules(r.edge.site, r.db) == []  # nothing stored: the site's (none) stand
        good = json.loads(handler.handle(payload("8", [HOT]), 2))
        assert good["status"] == "applied" and good["detail"].endswith("1 alarm rule")
        assert swapped == [["hot"]]
        assert [x.name for x in configured_rules(r.edge.site, r.db)] == ["hot"]


def test_the_alarms_bench_quick_steps_every_instance_and_times_every_crossing() -> None:
    from emsbms.bench.alarms import cost, latency

    c = cost(devices=8, rules=50, rounds=3)
    assert (c.instances, c.samples) == (40 * 8 + 10, 3 * 8)
    lat = latency(rules=20, crossings=2)
    assert (lat.crossings, lat.raised) == (4, 4)


def test_the_alarm_feed_queues_transitions_on_the_alarms_topic_with_its_own_seq(tmp_path: Path) -> None:
    from emsbms.alarms import Severity as RuleSeverity
    from emsbms.uplink.link import AlarmFeed
    from emsbms.uplink.messages import Topics
    from emsbms.uplink.outbox import Outbox

    def t(state: AlarmState, previous: AlarmState, ts: int) -> Transition:
        return Transition("hot/bms_0", "hot", "bms_0", state, previous, RuleSeverity.FAULT, False, 45.0, ts,
                          f"hot: {state.value}")

    with Outbox(tmp_path / "outbox.db") as outbox:
        feed = AlarmFeed(Topics("acme", "plant-1"), 77, outbox, every=3600)
        feed.post(t(AlarmState.PENDING, AlarmState.OK, 1))
        feed.post(t(AlarmState.ACTIVE, AlarmState.PENDING, 2))
        assert feed.flush(10) == 1
        feed.post(t(AlarmState.OK, AlarmState.ACTIVE, 3))
        feed.close()
        rows = outbox.pending(10, 20)
    assert [(r.topic, r.kind) for r in rows] == [("ems/acme/plant-1/alarms", "alarms")] * 2
    docs = [json.loads(r.payload) for r in rows]
    assert [(d["session"], d["seq"], d["historical"]) for d in docs] == [(77, 0, False), (77, 1, False)]
    assert docs[0]["alarms"][1] == {"id": "hot/bms_0", "rule": "hot", "device": "bms_0", "state": "active",
                                    "previous": "pending", "severity": "FAULT", "acked": False, "value": 45.0,
                                    "timestamp_us": 2, "text": "hot: active"}
    assert [a["state"] for a in docs[1]["alarms"]] == ["ok"]


def test_a_profile_default_rule_is_applied_per_device() -> None:
    from emsbms.alarms.sources import profile_rules

    raw = [{"name": "over-temperature", "expression": "*/Temperature > 55", "clear_expression": "*/Temperature < 50",
            "severity": "FAULT"}]
    assert profile_rules(raw, "bms_3", "acme-hv") == [
        {"name": "over-temperature-bms_3", "expression": "bms_3/Temperature > 55",
         "clear_expression": "bms_3/Temperature < 50", "severity": "FAULT"}]
    with pytest.raises(AlarmRuleError, match=r"^profile 'acme-hv' \(device bms_3\): rule 'x-bms_3': missing key "):
        profile_rules([{"name": "x", "expression": "*/T > 1"}], "bms_3", "acme-hv")


def test_replaced_rules_keep_the_state_of_the_rules_kept_by_name(
        edge_and_peer: tuple[Edge, can.BusABC], tmp_path: Path) -> None:
    edge, peer = edge_and_peer
    cold = {"name": "cold", "expression": "*/Temperature < 0", "severity": "WARNING"}
    runner = AlarmRunner(edge, parse_rules([{**HOT, "for": "0s"}]), tmp_path / "edge.db").start()
    try:
        send_temperature(peer, 45.0)
        assert wait(lambda: state(edge) == "active")
        runner.replace_rules(parse_rules([{**HOT, "for": "0s", "severity": "WARNING"}, cold]))
        assert wait(lambda: edge.registry.get("alarms/cold/bms_0/State") is not None)
        assert [(s.id, s.state.value, s.severity.name) for s in runner.engine.states()] == [
            ("cold/bms_0", "ok", "WARNING"), ("hot/bms_0", "active", "WARNING")]
        runner.replace_rules(parse_rules([cold]))
        runner.cycle(time.time_ns() // 1000)
        assert [s.id for s in runner.engine.states()] == ["cold/bms_0"]
        assert [s.id for s in runner.store.load()] == []  # the dropped alarm is gone from the database too
    finally:
        runner.close()


def test_a_profile_with_default_rules_gives_each_of_its_devices_an_alarm_that_a_cloud_change_keeps(
        tmp_path: Path) -> None:
    from dataclasses import replace

    from emsbms import load_profile
    from emsbms.alarms.sources import start_alarms

    base = load_profile("pylon-lv")
    hot = [{"name": "hot", "expression": "*/Temperature > 40", "severity": "FAULT"}]
    profile = replace(base, model=base.model.model_copy(update={"rules": hot, "version": "9.0.0"}))
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    edge = Edge(site).start()
    assert edge.activate_profile(profile) == ["bms_0"]
    runner = start_alarms(edge, tmp_path / "edge.db")
    try:
        rules = [(r.name, r.expression.source) for r in runner.engine.rules.values()]
        assert rules == [("hot-bms_0", "bms_0/Temperature > 40")]
        send_temperature(peer, 45.0)
        assert wait(lambda: edge.registry.get("alarms/hot-bms_0/site/State") is not None
                    and edge.registry.get("alarms/hot-bms_0/site/State").value == "active")  # type: ignore[union-attr]
        runner.replace_rules(parse_rules([{"name": "cold", "expression": "*/Temperature < 0", "severity": "INFO"}]))
        assert sorted(runner.engine.rules) == ["cold", "hot-bms_0"]  # the cloud's rules replace the site's, not these
    finally:
        runner.close()
        edge.stop()
        peer.shutdown()
