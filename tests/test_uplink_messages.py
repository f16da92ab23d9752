"""Uplink topics and payloads: exact JSON for hand-made readings, by exception with deadbands,
quality changes always sent, the full refresh, health routing, sequence numbers that wrap."""

from __future__ import annotations

import json

import pytest

from emsbms.can.bus import BusState
from emsbms.edge.events import Event, EventKind, Severity
from emsbms.errors import ConfigError
from emsbms.types import ChannelInfo, ChannelKind, CommState, Quality, Reading
from emsbms.uplink.messages import (
    SEQ_MODULO,
    Counter,
    DeviceInfo,
    Message,
    MessageKind,
    TelemetryBatcher,
    Topics,
    as_historical,
    birth_payload,
    events_payload,
    json_bytes,
    next_bd_seq,
    state_payload,
)

S = 1_000_000
TOPICS = Topics("acme", "plant-1")


def ok(value: object, t: int, unit: str = "V") -> Reading:
    return Reading(value, unit, t, Quality.OK)  # type: ignore[arg-type]


def samples(m: Message) -> list[tuple[str, object, int, str]]:
    doc = json.loads(m.payload)
    return [(s["address"], s["value"], s["timestamp_us"], s["quality"]) for s in doc["samples"]]


def test_topics() -> None:
    assert (TOPICS.state, TOPICS.birth, TOPICS.telemetry, TOPICS.health, TOPICS.events) == (
        "ems/acme/plant-1/state", "ems/acme/plant-1/birth", "ems/acme/plant-1/telemetry",
        "ems/acme/plant-1/health", "ems/acme/plant-1/events")
    assert (TOPICS.cmd, TOPICS.cmd_result, TOPICS.config, TOPICS.config_status, TOPICS.rebirth, TOPICS.all) == (
        "ems/acme/plant-1/cmd", "ems/acme/plant-1/cmd/result", "ems/acme/plant-1/config",
        "ems/acme/plant-1/config/status", "ems/acme/plant-1/rebirth", "ems/acme/plant-1/#")
    with pytest.raises(ConfigError, match=r"\[site\] key 'org' expected a non-empty MQTT topic level .* found 'a/b'"):
        Topics("a/b", "x")
    with pytest.raises(ConfigError, match=r"key 'name' .* found ''"):
        Topics("acme", "")
    with pytest.raises(ConfigError, match=r"found 'plant#1'"):
        Topics("acme", "plant#1")


def test_state_and_birth_payloads() -> None:
    assert state_payload(True, 3, 1_700_000_000_000_000) == (
        b'{"state":"online","bdSeq":3,"timestamp_us":1700000000000000}')
    assert state_payload(False, 3, 5) == b'{"state":"offline","bdSeq":3,"timestamp_us":5}'
    assert [next_bd_seq(None), next_bd_seq(0), next_bd_seq(254), next_bd_seq(255)] == [0, 1, 255, 0]
    channels = [
        ChannelInfo("bms_0/Voltage", "V", ChannelKind.MEASUREMENT, "pack voltage", 0.0, 1000.0),
        ChannelInfo("bms_0/SetChargeCurrent", "A", ChannelKind.COMMAND, "", 0, 200),
        ChannelInfo("can0/State", "", ChannelKind.STATE),
    ]
    device = DeviceInfo("bms_0", "can0", "dbc", "pylon-lv", "1.1.0", "ab12")
    doc = json.loads(birth_payload(channels, [device], "0.1.0", 7, 1000, 2000))
    assert doc == {
        "timestamp_us": 2000, "bdSeq": 7, "session": 1000, "edge_version": "0.1.0",
        "devices": [{"name": "bms_0", "bus": "can0", "protocol": "dbc", "profile": "pylon-lv", "version": "1.1.0",
                     "hash": "ab12"}],
        "channels": [
            {"address": "bms_0/SetChargeCurrent", "unit": "A", "kind": "command", "description": "", "min": 0,
             "max": 200},
            {"address": "bms_0/Voltage", "unit": "V", "kind": "measurement", "description": "pack voltage",
             "min": 0.0, "max": 1000.0},
            {"address": "can0/State", "unit": "", "kind": "state", "description": "", "min": None, "max": None},
        ],
    }


def test_exact_telemetry_and_health_payloads() -> None:
    b = TelemetryBatcher(TOPICS, session=42, health_prefixes={"can0", "uplink"}, start_us=0)
    b.update("bms_0/Voltage", ok(51.2, 1_000_001))
    b.update("bms_0/Temperature", Reading(float("nan"), "°C", 1_000_002, Quality.INVALID))
    b.update("can0/State", Reading(BusState.ERROR_ACTIVE, "", 1_000_003, Quality.OK))
    b.update("bms_0/CommState", Reading(CommState.OK, "", 1_000_004, Quality.OK))
    b.update("bms_0/Flag", Reading(True, "", 1_000_005, Quality.STALE))
    out = b.flush(2 * S)
    assert out == [
        Message("ems/acme/plant-1/telemetry",
                b'{"historical":false,"session":42,"seq":0,"timestamp_us":2000000,"refresh":false,"samples":['
                b'{"address":"bms_0/Voltage","value":51.2,"timestamp_us":1000001,"quality":"ok"},'
                b'{"address":"bms_0/Temperature","value":null,"timestamp_us":1000002,"quality":"invalid"},'
                b'{"address":"bms_0/Flag","value":true,"timestamp_us":1000005,"quality":"stale"}]}',
                MessageKind.TELEMETRY),
        Message("ems/acme/plant-1/health",
                b'{"historical":false,"session":42,"seq":0,"timestamp_us":2000000,"refresh":false,"samples":['
                b'{"address":"can0/State","value":"ERROR_ACTIVE","timestamp_us":1000003,"quality":"ok"},'
                b'{"address":"bms_0/CommState","value":"OK","timestamp_us":1000004,"quality":"ok"}]}',
                MessageKind.HEALTH),
    ]
    assert b.flush(3 * S) == []  # nothing new
    assert as_historical(out[0].payload).startswith(b'{"historical":true,"session":42,')
    assert json.loads(as_historical(out[0].payload))["samples"] == json.loads(out[0].payload)["samples"]


def test_every_change_by_default_and_no_repeats() -> None:
    b = TelemetryBatcher(TOPICS, session=1)
    for t, v in enumerate([1.0, 1.0, 2.0, 1.0, 1.0, 1.0000001]):
        b.update("bms_0/Voltage", ok(v, t))
    [m] = b.flush(10)
    assert samples(m) == [("bms_0/Voltage", 1.0, 0, "ok"), ("bms_0/Voltage", 2.0, 2, "ok"),
                          ("bms_0/Voltage", 1.0, 3, "ok"), ("bms_0/Voltage", 1.0000001, 5, "ok")]


def test_deadband_compares_with_the_last_value_sent() -> None:
    b = TelemetryBatcher(TOPICS, session=1, deadband=0.5, deadbands={"bms_0/Soc": 2.0})
    for t, v in enumerate([10.0, 10.3, 10.5, 10.6, 10.9, 11.2, 9.0]):
        b.update("bms_0/Voltage", ok(v, t))
    for t, v in enumerate([50, 51, 52, 53, 55]):
        b.update("bms_0/Soc", ok(v, 100 + t, "%"))
    b.update("bms_0/Mode", ok("idle", 200, ""))
    b.update("bms_0/Mode", ok("idle", 201, ""))
    b.update("bms_0/Mode", ok("charge", 202, ""))
    [m] = b.flush(1000)
    assert samples(m) == [
        ("bms_0/Voltage", 10.0, 0, "ok"), ("bms_0/Voltage", 10.6, 3, "ok"), ("bms_0/Voltage", 11.2, 5, "ok"),
        ("bms_0/Voltage", 9.0, 6, "ok"),
        ("bms_0/Soc", 50, 100, "ok"), ("bms_0/Soc", 53, 103, "ok"),
        ("bms_0/Mode", "idle", 200, "ok"), ("bms_0/Mode", "charge", 202, "ok"),
    ]


def test_quality_changes_are_always_sent() -> None:
    b = TelemetryBatcher(TOPICS, session=1, deadband=100.0, min_interval_s=60.0)
    b.update("bms_0/Voltage", ok(50.0, 0))
    b.update("bms_0/Voltage", Reading(50.0, "V", 1, Quality.STALE))  # same value, within the interval
    b.update("bms_0/Voltage", Reading(50.0, "V", 2, Quality.STALE))
    b.update("bms_0/Voltage", ok(50.1, 3))
    [m] = b.flush(10)
    assert samples(m) == [("bms_0/Voltage", 50.0, 0, "ok"), ("bms_0/Voltage", 50.0, 1, "stale"),
                          ("bms_0/Voltage", 50.1, 3, "ok")]


def test_a_rate_limit_holds_the_latest_value() -> None:
    b = TelemetryBatcher(TOPICS, session=1, min_interval_s=1.0)
    b.update("bms_0/Voltage", ok(1.0, 0))
    b.update("bms_0/Voltage", ok(2.0, S // 4))
    b.update("bms_0/Voltage", ok(3.0, S // 2))  # held: the latest value counts
    b.update("bms_0/Current", ok(5.0, 0, "A"))
    b.update("bms_0/Current", ok(6.0, S // 2, "A"))
    b.update("bms_0/Current", ok(5.0, 3 * S // 4, "A"))  # back to what was sent: nothing held
    [m] = b.flush(S // 2)
    assert samples(m) == [("bms_0/Voltage", 1.0, 0, "ok"), ("bms_0/Current", 5.0, 0, "ok")]
    [m] = b.flush(S)
    assert samples(m) == [("bms_0/Voltage", 3.0, S // 2, "ok")]
    assert b.flush(2 * S) == []


def test_full_refresh_at_its_period_and_on_request() -> None:
    b = TelemetryBatcher(TOPICS, session=1, health_prefixes={"can0"}, refresh_s=60.0, start_us=0)
    b.update("bms_0/Voltage", ok(50.0, 1))
    b.update("can0/RxFrames", ok(10, 2, ""))
    assert [json.loads(m.payload)["refresh"] for m in b.flush(S)] == [False, False]
    b.update("bms_0/Voltage", ok(50.0, 3))  # no change: not sent, but the refresh carries it
    assert b.flush(60 * S - 1) == []
    out = b.flush(60 * S)
    assert [(m.kind, json.loads(m.payload)["refresh"], json.loads(m.payload)["seq"], samples(m)) for m in out] == [
        (MessageKind.TELEMETRY, True, 1, [("bms_0/Voltage", 50.0, 3, "ok")]),
        (MessageKind.HEALTH, True, 1, [("can0/RxFrames", 10, 2, "ok")]),
    ]
    assert b.flush(120 * S - 1) == []
    assert len(b.flush(120 * S)) == 2  # the next period counts from the last refresh
    b.refresh()  # a rebirth
    assert [samples(m) for m in b.flush(121 * S)] == [[("bms_0/Voltage", 50.0, 3, "ok")],
                                                      [("can0/RxFrames", 10, 2, "ok")]]


def test_batches_are_split_and_numbered() -> None:
    b = TelemetryBatcher(TOPICS, session=9, max_samples=2)
    for i in range(5):
        b.update(f"bms_{i}/Soc", ok(i, i, "%"))
    out = b.flush(S)
    assert [(json.loads(m.payload)["seq"], len(samples(m))) for m in out] == [(0, 2), (1, 2), (2, 1)]


def test_sequence_numbers_wrap() -> None:
    c = Counter(SEQ_MODULO - 2)
    assert [c.next(), c.next(), c.next()] == [SEQ_MODULO - 2, SEQ_MODULO - 1, 0]
    c = Counter(254, modulo=256)
    assert [c.next(), c.next(), c.next()] == [254, 255, 0]
    b = TelemetryBatcher(TOPICS, session=1, telemetry_seq=SEQ_MODULO - 1)
    b.update("bms_0/Soc", ok(1, 0, "%"))
    first = b.flush(1)
    b.update("bms_0/Soc", ok(2, 1, "%"))
    second = b.flush(2)
    assert [json.loads(m.payload)["seq"] for m in first + second] == [18446744073709551615, 0]


def test_events_payload() -> None:
    events = [Event(5, "bms_0", EventKind.COMM, Severity.WARNING, "bms_0 LOST", 2)]
    assert events_payload(events, 1, 4, 10) == (
        b'{"historical":false,"session":1,"seq":4,"timestamp_us":10,"events":[{"timestamp_us":5,"source":"bms_0",'
        b'"kind":"comm","severity":"warning","text":"bms_0 LOST","repeat":2}]}')


def test_json_never_holds_nan() -> None:
    assert json_bytes({"a": [float("inf"), float("-inf"), float("nan"), 1.5], "b": (Quality.OK,)}) == (
        b'{"a":[null,null,null,1.5],"b":["ok"]}')


def test_the_refresh_period_counts_from_the_first_flush_without_a_start() -> None:
    b = TelemetryBatcher(TOPICS, session=1, refresh_s=10.0)
    b.update("bms_0/Soc", ok(80, 1, "%"))
    assert [json.loads(m.payload)["refresh"] for m in b.flush(1000 * S)] == [False]  # no refresh at once
    assert b.flush(1010 * S - 1) == []
    assert [samples(m) for m in b.flush(1010 * S)] == [[("bms_0/Soc", 80, 1, "ok")]]


def doc_schemas() -> dict[str, dict[str, object]]:
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parent.parent / "docs" / "uplink.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    schemas = [json.loads(b) for b in blocks if '"$schema"' in b]
    return {s["title"]: s for s in schemas}


def test_docs_schemas_name_every_key_of_the_payloads() -> None:
    schemas = doc_schemas()
    b = TelemetryBatcher(TOPICS, session=1)
    b.update("bms_0/Soc", ok(1, 0, "%"))
    [telemetry] = b.flush(1)
    birth = json.loads(birth_payload([ChannelInfo("bms_0/Soc", "%")],
                                     [DeviceInfo("bms_0", "can0", "dbc", "p", "1.0.0", "h")], "0.1.0", 0, 1, 2))
    events = json.loads(events_payload([Event(5, "bms_0", EventKind.COMM, Severity.OK, "ok")], 1, 0, 10))
    for title, doc in [("state", json.loads(state_payload(True, 0, 1))), ("birth", birth),
                       ("telemetry / health", json.loads(telemetry.payload)), ("events", events)]:
        schema = schemas[title]
        assert list(doc) == schema["required"], title
        assert set(doc) == set(schema["properties"]), title  # type: ignore[call-overload]
    items = schemas["telemetry / health"]["properties"]["samples"]["items"]  # type: ignore[index]
    assert list(json.loads(telemetry.payload)["samples"][0]) == items["required"]
    assert list(birth["channels"][0]) == schemas["birth"]["properties"]["channels"]["items"]["required"]  # type: ignore[index]
    assert list(events["events"][0]) == schemas["events"]["properties"]["events"]["items"]["required"]  # type: ignore[index]


def test_a_bus_added_later_sends_its_channels_as_health() -> None:
    b = TelemetryBatcher(TOPICS, session=1, health_prefixes={"can0", "uplink"}, start_us=0)
    b.update("can1/RxRate", ok(10.0, 1_000_001))
    assert [m.kind for m in b.flush(2 * S)] == [MessageKind.TELEMETRY]  # can1 unknown: a device's channel
    b.set_health_prefixes({"can0", "can1", "uplink"})  # a config added the bus can1
    b.update("can1/RxRate", ok(11.0, 3_000_001))
    out = b.flush(4 * S)
    assert [(m.kind, json.loads(m.payload)["samples"][0]["value"]) for m in out] == [(MessageKind.HEALTH, 11.0)]
