"""The alarm engine (emsbms/alarms/): expressions, rules, states, persistence. A fake clock: plain integers (µs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from emsbms.alarms import (
    AlarmEngine,
    AlarmError,
    AlarmRuleError,
    AlarmState,
    AlarmStore,
    Severity,
    ack_target,
    parse_expression,
    parse_rules,
    state_address,
)
from emsbms.errors import ConfigError
from emsbms.types import CommState, Quality, Reading

S = 1_000_000  # µs per second
OK, PENDING, ACTIVE, CLEARING, LATCHED, NO_DATA, INHIBITED = (
    AlarmState.OK, AlarmState.PENDING, AlarmState.ACTIVE, AlarmState.CLEARING, AlarmState.LATCHED,
    AlarmState.NO_DATA, AlarmState.INHIBITED)


def r(value: float, t: int = 0, quality: Quality = Quality.OK) -> Reading:
    return Reading(value, "", t, quality)


def engine(**rule: Any) -> AlarmEngine:
    base = {"name": "hot", "expression": "*/MaxCellVoltage > 3.6", "severity": "FAULT"}
    return AlarmEngine(parse_rules([{**base, **rule}]))


def step(e: AlarmEngine, value: float | None, now_s: float, comm: CommState = CommState.OK) -> list[tuple[str, str]]:
    """One sample of bms_0/MaxCellVoltage at now_s; the (previous, state) pairs of the transitions."""
    now = round(now_s * S)
    values = {} if value is None else {"bms_0/MaxCellVoltage": r(value, now)}
    return [(t.previous.value, t.state.value) for t in e.evaluate(values, {"bms_0": comm}, now)]


def state(e: AlarmEngine, device: str = "bms_0") -> AlarmState:
    return {(s.rule, s.device): s.state for s in e.states()}[("hot", device)]


# --- the expression language -----------------------------------------------------------------------

@pytest.mark.parametrize(("source", "message"), [
    ("*/Soc > (3 + )", "column 14: expected a number or an address, found ')'"),
    ("*/Soc >", "column 8: expected a number or an address, found the end"),
    ("temp > 3", "column 1: unknown name 'temp'"),
    ("1 < bms_0/Soc < 3", "column 15: comparisons do not chain: use between(x, lo, hi)"),
    ("*/Soc + 1", "column 1: expected a condition (a comparison, between(), and/or/not), found a number"),
    ("bms_0/Temp* > 40", "column 1: wildcard in 'bms_0/Temp*'"),
    ("*/Soc > 3 and 4", "column 15: expected a condition after or before 'and', found a number"),
    ("max(3) > 1", "column 5: expected an address, found '3'"),
    ("(*/Soc > 3", "column 11: expected ')', found the end"),
    ("*/Soc > 3 $", "column 11: unexpected character '$'"),
    ("*/Soc > 3 3", "column 11: expected an operator or the end, found '3'"),
    ("", "column 1: empty expression"),
])
def test_expression_errors_point_at_the_column(source: str, message: str) -> None:
    with pytest.raises(AlarmRuleError) as err:
        parse_expression(source, "rule 'hot': expression")
    assert str(err.value).startswith(f"rule 'hot': expression {message}")
    assert isinstance(err.value, ConfigError)


class Ctx:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values

    def reading(self, address: str) -> Any:
        from emsbms.alarms.expr import NO_DATA
        return self.values.get(address, NO_DATA)

    def aggregate(self, name: str, pattern: str) -> float:
        raise AssertionError

    def rate(self, address: str) -> float:
        raise AssertionError


@pytest.mark.parametrize(("source", "expected"), [
    ("a/x + 2 * 3 > 7.9", False),  # 1 + 6 = 7
    ("(a/x + 2) * 3 >= 9", True),  # 9
    ("a/x - 3 - 1 == -3", True),  # left-associative: (1 - 3) - 1
    ("-a/x / 4 == -0.25", True),
    ("abs(a/x - 5) == 4", True),
    ("between(a/x, 1, 2) and not a/x != 1", True),
    ("between(a/x, 1.5, 2) or a/x > 2", False),
    ("a/x / 0 > 1", "no_data"),  # division by zero: no data, never an exception
    ("a/missing > 1 or a/x > 0", "no_data"),  # a missing operand anywhere
    ("1e3 > 999", True),
])
def test_expression_values(source: str, expected: object) -> None:
    result = parse_expression(source).evaluate(Ctx({"a/x": 1.0}))
    assert (repr(result) == "NO_DATA" if expected == "no_data" else result is expected)


def test_wildcards_match_inside_one_segment_and_make_one_instance_per_device() -> None:
    e = AlarmEngine(parse_rules([{"name": "warm", "expression": "max(*/Temperature*) > 40 and */Soc > 10",
                                  "severity": "INFO"}]))
    values = {"bms_0/Temperature1": r(41), "bms_0/Temperature2": r(30), "bms_1/Soc": r(50), "bms_0/Soc": r(50),
              "bms_0/Sub/Temperature9": r(99)}  # another segment: not matched by */Temperature*
    out = e.evaluate(values, {}, 0)
    assert [(t.id, t.state.value, t.value) for t in out] == [("warm/bms_0", "active", 41.0),
                                                             ("warm/bms_1", "active", 41.0)]
    values["bms_0/Temperature1"] = r(39)
    assert [(t.id, t.state.value) for t in e.evaluate(values, {}, 1)] == [("warm/bms_0", "ok"), ("warm/bms_1", "ok")]


# --- rules -----------------------------------------------------------------------------------------

def test_rules_parse_durations_and_defaults() -> None:
    rules = parse_rules([{"name": "a", "expression": "x/y > 1", "severity": "INFO", "for": "500ms",
                          "off_delay": "1m"},
                         {"name": "b-2", "expression": "x/y > 1", "severity": "FAULT", "for": "1h", "latch": True,
                          "clear_expression": "x/y < 0.5"}])
    assert [(r.name, r.for_s, r.off_delay_s, r.severity, r.latch) for r in rules] == [
        ("a", 0.5, 60.0, Severity.INFO, False), ("b-2", 3600.0, 0.0, Severity.FAULT, True)]
    assert Severity.INFO < Severity.WARNING < Severity.FAULT
    assert rules[1].clear_expression is not None and rules[1].clear_expression.source == "x/y < 0.5"


@pytest.mark.parametrize(("rule", "message"), [
    ({"colour": "red", "for2": 1}, "rule 'hot': unknown keys 'colour', 'for2' (expected: name, expression,"),
    ({"for": "2 days"},
     "rule 'hot': key 'for': expected a duration like \"2s\", \"500ms\", \"1m\", \"1h\", found '2 days'"),
    ({"off_delay": -1}, "rule 'hot': key 'off_delay': expected a finite duration >= 0, found -1"),
    ({"for": float("inf")}, "rule 'hot': key 'for': expected a finite duration >= 0, found inf"),
    ({"severity": "CRITICAL"}, "rule 'hot': key 'severity' expected INFO, WARNING or FAULT, found 'CRITICAL'"),
    ({"latch": "yes"}, "rule 'hot': key 'latch' expected true or false, found 'yes'"),
    ({"name": "hot spot"}, "rule #1: key 'name' expected letters, digits, '_' or '-', found 'hot spot'"),
    ({"clear_expression": "*/Soc <"}, "rule 'hot': clear_expression column 8: expected a number or an address"),
    ({"expression": 3.6}, "rule 'hot': key 'expression' expected a string, found float 3.6"),
])
def test_rule_errors_name_the_rule_and_the_key(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(AlarmRuleError) as err:
        parse_rules([{"name": "hot", "expression": "*/MaxCellVoltage > 3.6", "severity": "FAULT", **rule}])
    assert str(err.value).startswith(message)


def test_rule_names_are_unique_and_addresses_known() -> None:
    hot = {"name": "hot", "expression": "*/MaxCellVoltage > 3.6", "severity": "FAULT"}
    with pytest.raises(AlarmRuleError, match=r"rule 'hot': key 'name' is used twice \(rules #1 and #2\)"):
        parse_rules([hot, hot])
    known = ["bms_0/MaxCellVoltage", "bms_0/Soc"]
    assert [r.name for r in parse_rules([hot], known)] == ["hot"]
    with pytest.raises(AlarmRuleError, match=r"rule 'x': expression column 11: no channel matches 'bms_0/Sco'"):
        parse_rules([{"name": "x", "expression": "1 > 0 and bms_0/Sco > 1", "severity": "INFO"}], known)


# --- states ----------------------------------------------------------------------------------------

def test_hysteresis_clears_only_on_the_clear_expression() -> None:
    e = engine(clear_expression="*/MaxCellVoltage < 3.5")
    assert step(e, 3.61, 0) == [("ok", "active")]
    assert step(e, 3.55, 1) == []  # below the raise threshold, above the clear one: still active
    assert state(e) is ACTIVE
    assert step(e, 3.49, 2) == [("active", "ok")]
    assert step(e, 3.55, 3) == []  # between the thresholds from below: stays ok


def test_without_clear_expression_it_clears_when_the_expression_is_false() -> None:
    e = engine()
    assert step(e, 3.61, 0) == [("ok", "active")]
    assert step(e, 3.6, 1) == [("active", "ok")]  # 3.6 > 3.6 is false


def test_on_delay_a_flap_shorter_than_for_never_raises() -> None:
    e = engine(**{"for": "2s"})
    assert step(e, 3.7, 0) == [("ok", "pending")]
    assert step(e, 3.7, 1.999999) == []
    assert step(e, 3.5, 1.9999995) == [("pending", "ok")]  # 1.9999995 s above: no raise
    assert step(e, 3.7, 10) == [("ok", "pending")]
    assert step(e, 3.7, 11) == []
    out = e.evaluate({"bms_0/MaxCellVoltage": r(3.71)}, {"bms_0": CommState.OK}, 12 * S)
    assert [(t.previous.value, t.state.value, t.value, t.timestamp_us) for t in out] == [
        ("pending", "active", 3.71, 12 * S)]
    assert out[0].id == "hot/bms_0" and out[0].severity is Severity.FAULT and out[0].acked is False
    assert out[0].text == "hot: bms_0/MaxCellVoltage 3.71 > 3.6 for 2.0 s: active"
    assert out[0].as_dict()["severity"] == "FAULT" and out[0].as_dict()["previous"] == "pending"


def test_off_delay_holds_the_alarm_through_a_short_dip() -> None:
    e = engine(off_delay="5s")
    assert step(e, 3.7, 0) == [("ok", "active")]
    assert step(e, 3.5, 1) == [("active", "clearing")]
    assert step(e, 3.7, 5) == [("clearing", "active")]  # 4 s below: back to active, never ok
    assert step(e, 3.5, 6) == [("active", "clearing")]
    assert step(e, 3.5, 10.999) == []
    assert step(e, 3.5, 11) == [("clearing", "ok")]


def test_dedupe_one_transition_per_change_never_per_sample() -> None:
    e = engine()
    raised = [t for i in range(100) for t in step(e, 3.61 + i / 1000, i)]
    assert raised == [("ok", "active")]


def test_latch_keeps_a_cleared_fault_until_acknowledged() -> None:
    e = engine(latch=True)
    assert step(e, 3.7, 0) == [("ok", "active")]
    assert step(e, 3.5, 1) == [("active", "latched")]
    assert step(e, 3.5, 2) == []
    t = e.ack("hot", "bms_0", 3 * S)
    assert (t.previous, t.state, t.acked, t.timestamp_us) == (LATCHED, OK, True, 3 * S)
    assert t.text == "hot: bms_0/MaxCellVoltage 3.5 > 3.6: acknowledged, ok"  # the last value seen
    assert step(e, 3.5, 4) == []
    assert step(e, 3.7, 5) == [("ok", "active")]  # a new raise is unacknowledged again
    assert [s.acked for s in e.states()] == [False]


def test_ack_while_active_keeps_it_active_and_then_it_clears_to_ok() -> None:
    e = engine(latch=True)
    step(e, 3.7, 0)
    t = e.ack("hot", "bms_0", 1 * S)
    assert (t.previous, t.state, t.acked) == (ACTIVE, ACTIVE, True)
    assert step(e, 3.5, 2) == [("active", "ok")]  # acknowledged already: no latch


def test_the_channel_and_the_ack_command_addresses() -> None:
    assert state_address("hot", "bms_0") == "alarms/hot/bms_0/State"
    assert ack_target("alarms/cell-hot/site/Ack") == ("cell-hot", "site")
    with pytest.raises(AlarmError, match=r"expected an address alarms/<rule>/<device>/Ack, found 'alarms/hot/Ack'"):
        ack_target("alarms/hot/Ack")


def test_ack_of_an_unknown_or_quiet_alarm_is_refused() -> None:
    e = engine()
    step(e, 3.5, 0)
    with pytest.raises(AlarmError, match=r"no alarm 'hot/bms_9' \(known: hot/bms_0\)"):
        e.ack("hot", "bms_9", 0)
    with pytest.raises(AlarmError, match="alarm 'hot/bms_0' is ok: nothing to acknowledge"):
        e.ack("hot", "bms_0", 0)


def test_comm_lost_inhibits_and_the_alarm_returns_when_comm_does() -> None:
    e = engine()
    assert step(e, 3.7, 0) == [("ok", "active")]
    out = e.evaluate({"bms_0/MaxCellVoltage": r(3.7)}, {"bms_0": CommState.LOST}, 1 * S)
    assert [(t.state, t.value, t.text) for t in out] == [(INHIBITED, None, "hot: bms_0 comm LOST: inhibited")]
    assert step(e, 3.9, 2, CommState.LOST) == []  # no threshold alarm while LOST
    assert step(e, 3.7, 3) == [("inhibited", "active")]  # it was raised before: active again, not pending
    assert step(e, 3.5, 4, CommState.LOST) == [("active", "inhibited")]
    assert step(e, 3.5, 5) == [("inhibited", "ok")]


def test_no_data_for_missing_and_stale_operands() -> None:
    e = engine(**{"for": "1s"})
    assert step(e, None, 0) == []  # no channel at all: no instance yet
    assert step(e, 3.7, 1) == [("ok", "pending")]
    assert step(e, None, 2) == [("pending", "no_data")]  # the channel vanished
    stale = {"bms_0/MaxCellVoltage": r(3.7, 3 * S, Quality.STALE)}
    assert e.evaluate(stale, {"bms_0": CommState.STALE}, 3 * S) == []  # a stale value is never used
    assert state(e) is NO_DATA
    assert step(e, 3.7, 4) == [("no_data", "pending")]  # the on-delay starts again
    assert step(e, 3.7, 5) == [("pending", "active")]


def test_aggregates_ignore_lost_devices() -> None:
    e = AlarmEngine(parse_rules([{"name": "spread", "expression": "max(*/Soc) - min(*/Soc) > 15",
                                  "severity": "WARNING"}]))
    values = {"bms_0/Soc": r(80), "bms_1/Soc": r(70), "bms_2/Soc": r(20)}
    comm = {"bms_0": CommState.OK, "bms_1": CommState.OK, "bms_2": CommState.LOST}
    assert e.evaluate(values, comm, 0) == []  # 80 - 70 = 10: bms_2's 20 ignored
    out = e.evaluate(values, {**comm, "bms_2": CommState.OK}, 1)  # 80 - 20 = 60
    assert [(t.id, t.state, t.value) for t in out] == [("spread/site", ACTIVE, 60.0)]
    values["bms_2/Soc"] = values["bms_2/Soc"]._replace(quality=Quality.STALE)  # comm OK, the value stale
    out = e.evaluate(values, {**comm, "bms_2": CommState.OK}, 2)
    assert [(t.state, t.value) for t in out] == [(OK, 10.0)]


@pytest.mark.parametrize(("expression", "value"), [
    ("avg(*/Soc) == 50", 50.0), ("sum(*/Soc) == 150", 150.0), ("count(*/Soc) == 3", 3.0),
    ("count(*/Nothing) == 0", 0.0)])
def test_aggregate_values(expression: str, value: float) -> None:
    e = AlarmEngine(parse_rules([{"name": "agg", "expression": expression, "severity": "INFO"}]))
    out = e.evaluate({"bms_0/Soc": r(80), "bms_1/Soc": r(50), "bms_2/Soc": r(20)}, {}, 0)
    assert [(t.state, t.value) for t in out] == [(ACTIVE, value)]


def test_rate_is_change_per_second_between_samples() -> None:
    e = AlarmEngine(parse_rules([{"name": "fall", "expression": "rate(*/Soc) < -0.5", "severity": "WARNING"}]))
    assert [t.state for t in e.evaluate({"bms_0/Soc": r(80, 0)}, {}, 0)] == [NO_DATA]  # one sample: no rate
    assert [t.state for t in e.evaluate({"bms_0/Soc": r(79, 4 * S)}, {}, 4 * S)] == [OK]  # -0.25 /s
    out = e.evaluate({"bms_0/Soc": r(77, 6 * S)}, {}, 6 * S)  # -2 in 2 s: -1 /s
    assert [(t.state, t.value) for t in out] == [(ACTIVE, -1.0)]
    assert e.evaluate({"bms_0/Soc": r(77, 6 * S)}, {}, 7 * S) == []  # no new sample: the rate stands


# --- persistence -----------------------------------------------------------------------------------

def test_a_restart_keeps_a_latched_fault_and_a_running_on_delay(tmp_path: Path) -> None:
    rules = parse_rules([
        {"name": "hot", "expression": "*/MaxCellVoltage > 3.6", "severity": "FAULT", "latch": True},
        {"name": "low", "expression": "*/Soc < 10", "severity": "WARNING", "for": "10s"}])
    db = tmp_path / "edge.db"
    store = AlarmStore(db)
    first = AlarmEngine(rules)
    for values, now in (({"bms_0/MaxCellVoltage": r(3.7), "bms_0/Soc": r(50)}, 0),
                        ({"bms_0/MaxCellVoltage": r(3.5), "bms_0/Soc": r(5)}, 4 * S)):
        out = first.evaluate(values, {}, now)
        store.save(first.snapshot(t.id for t in out))
    assert {s.id: s.state for s in first.states()} == {"hot/bms_0": LATCHED, "low/bms_0": PENDING}
    store.close()

    store = AlarmStore(db)
    second = AlarmEngine(rules)
    assert second.restore(store.load()) == []
    assert [(s.id, s.state, s.since_us) for s in second.states()] == [("hot/bms_0", LATCHED, 4 * S),
                                                                       ("low/bms_0", PENDING, 4 * S)]
    values = {"bms_0/MaxCellVoltage": r(3.5), "bms_0/Soc": r(5)}
    assert second.evaluate(values, {}, 13 * S) == []  # 9 s into the 10 s on-delay
    out = second.evaluate(values, {}, 14 * S)  # 10 s after it began, before the restart
    assert [(t.id, t.previous, t.state) for t in out] == [("low/bms_0", PENDING, ACTIVE)]
    store.save(second.snapshot(t.id for t in out))
    t = second.ack("hot", "bms_0", 15 * S)
    store.save(second.snapshot([t.id]))
    assert [(s.id, s.state, s.acked) for s in store.load()] == [("low/bms_0", ACTIVE, False)]  # ok rows deleted
    assert AlarmEngine(rules[1:]).restore(AlarmStore(db).load()) == []
    assert AlarmEngine(rules[:1]).restore(store.load()) == ["low/bms_0"]  # its rule is gone
