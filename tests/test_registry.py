"""The registry: units from metadata, stale marking, snapshots, subscriptions and waits."""

from __future__ import annotations

import threading

import pytest

from emsbms import ReadTimeout, UnknownAddressError
from emsbms.edge.registry import Registry
from emsbms.types import ChannelInfo, Quality, Reading, Sample


@pytest.fixture
def reg() -> Registry:
    r = Registry()
    r.declare([ChannelInfo("bms_0/Soc", "%"), ChannelInfo("bms_0/Voltage", "V"), ChannelInfo("bms_1/Soc", "%")])
    return r


def test_apply_attaches_units_and_keeps_timestamps(reg: Registry) -> None:
    reg.apply([Sample("bms_0/Soc", 77.0, 1_000_001)])
    assert reg.get("bms_0/Soc") == Reading(77.0, "%", 1_000_001, Quality.OK)
    assert reg.get("bms_0/Soc").as_dict() == {  # type: ignore[union-attr]
        "value": 77.0, "unit": "%", "timestamp_us": 1_000_001, "quality": "ok"}


def test_stale_keeps_the_value_but_flags_it(reg: Registry) -> None:
    reg.apply([Sample("bms_0/Voltage", 51.2, 5)])
    reg.apply([], stale=["bms_0/Voltage", "bms_0/Soc"])  # Soc has no value: nothing to mark
    assert reg.get("bms_0/Voltage") == Reading(51.2, "V", 5, Quality.STALE)
    assert reg.get("bms_0/Soc") is None


def test_snapshot_is_a_copy(reg: Registry) -> None:
    reg.apply([Sample("bms_0/Soc", 50.0, 1)])
    snap = reg.snapshot()
    reg.apply([Sample("bms_0/Soc", 51.0, 2)])
    assert snap["bms_0/Soc"].value == 50.0 and reg.get("bms_0/Soc").value == 51.0  # type: ignore[union-attr]
    assert len(snap) == 1 and snap.value("bms_1/Soc") is None


def test_subscriptions_match_globs_and_can_be_cancelled(reg: Registry) -> None:
    seen: list[tuple[str, object]] = []
    sub = reg.subscribe("*/Soc", lambda a, r: seen.append((a, r.value)))
    reg.apply([Sample("bms_0/Soc", 1, 1), Sample("bms_0/Voltage", 2, 1), Sample("bms_1/Soc", 3, 1)])
    sub.cancel()
    reg.apply([Sample("bms_0/Soc", 4, 2)])
    assert seen == [("bms_0/Soc", 1), ("bms_1/Soc", 3)]


def test_an_address_nobody_subscribed_to_is_told_once_someone_does(reg: Registry) -> None:
    seen: list[tuple[str, object]] = []
    reg.subscribe("*/Soc", lambda a, r: seen.append((a, r.value)))
    reg.apply([Sample("bms_0/Voltage", 1, 1), Sample("bms_0/Soc", 2, 1)])  # Voltage routed to nobody
    reg.apply([Sample("bms_0/Voltage", 3, 2)])  # skipped by the routed-to-nobody shortcut
    reg.subscribe("*/Voltage", lambda a, r: seen.append((a, r.value)))
    reg.apply([Sample("bms_0/Voltage", 4, 3)])
    assert seen == [("bms_0/Soc", 2), ("bms_0/Voltage", 4)]
    assert reg.get("bms_0/Voltage") == Reading(4, "V", 3, Quality.OK)


def test_a_raising_subscriber_does_not_break_updates(reg: Registry) -> None:
    def boom(address: str, reading: Reading) -> None:
        raise RuntimeError("subscriber bug")

    reg.subscribe("*", boom)
    reg.apply([Sample("bms_0/Soc", 9, 1)])
    assert reg.get("bms_0/Soc").value == 9  # type: ignore[union-attr]


def test_wait_for_fresh_value(reg: Registry) -> None:
    reg.apply([Sample("bms_0/Soc", 10, 100)])
    threading.Timer(0.05, lambda: reg.apply([Sample("bms_0/Soc", 11, 200)])).start()
    assert reg.wait_for("bms_0/Soc", after_us=150, timeout=5.0).value == 11
    with pytest.raises(ReadTimeout, match=r"no fresh value of bms_0/Voltage within 0\.05 s"):
        reg.wait_for("bms_0/Voltage", after_us=0, timeout=0.05)


def test_unknown_addresses_name_what_exists(reg: Registry) -> None:
    with pytest.raises(UnknownAddressError, match="unknown device 'bms_7' in 'bms_7/Soc'; known devices: bms_0, bms_1"):
        reg.wait_for("bms_7/Soc", 0, 0.01)
    with pytest.raises(UnknownAddressError, match="unknown channel 'bms_0/Sok'; bms_0 has: Soc, Voltage"):
        reg.info("bms_0/Sok")
