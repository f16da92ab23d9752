"""Profiles: every shipped one loads; a bad one is rejected as a whole with the JSON path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from emsbms import ProfileError, load_profile
from emsbms.profile import list_shipped
from emsbms.profile.schema import schema_text
from emsbms.resources import data_dir

DOCS = Path(__file__).resolve().parent.parent / "docs"


def pylon() -> dict[str, Any]:
    data: dict[str, Any] = json.loads((data_dir("profiles") / "pylon-lv.json").read_text())
    return data


def save(tmp_path: Path, data: dict[str, Any]) -> Path:
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    return p


def test_every_shipped_profile_loads() -> None:
    names = list_shipped()
    assert "pylon-lv" in names
    for name in names:
        assert load_profile(name).name == name


def test_published_schema_is_generated_from_the_models() -> None:
    assert (DOCS / "profile.schema.json").read_text() == schema_text(), "run `make schema`"


def test_pylon_profile_resolves_its_dbc_and_copies_it_from_a_path(tmp_path: Path) -> None:
    p = load_profile("pylon-lv")
    assert p.source_path is not None and p.source_path.name == "pylon_lv.dbc"
    assert "BO_ 849 PYLON_Limits" in p.source_text
    (tmp_path / "pylon_lv.dbc").write_text(p.source_text)
    data = pylon()
    data["name"] = "my-pylon"
    copy = load_profile(save(tmp_path, data))
    assert copy.name == "my-pylon" and copy.source_path == tmp_path / "pylon_lv.dbc"


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["channels"]["Soc"].update(signal="SOC"),
         "profile pylon-lv: channels.Soc.signal 'SOC' not in message PYLON_SocSoh of pylon_lv.dbc; "
         "known: SoC, SoCHighRes, SoH"),
        (lambda d: d["channels"]["Soc"].update(message="PYLON_Soc"),
         "channels.Soc.message 'PYLON_Soc' not in pylon_lv.dbc; known: EMS_Keepalive"),
        (lambda d: d["channels"]["Soc"].update(unit=5), "channels.Soc.unit: Input should be a valid string; found 5"),
        (lambda d: d["channels"]["Soc"].update(colour="red"), "channels.Soc.colour: Extra inputs are not permitted"),
        (lambda d: d.update(protocol="modbus"), "protocol: Input should be 'dbc', 'canopen' or 'j1939'"),
        (lambda d: d["messages"]["PYLON_Limits"].update(period_ms=-1),
         "messages.PYLON_Limits.period_ms: expected a number of milliseconds from 1 to 86400000 (1 day); found -1"),
        (lambda d: d["alarms"]["OverVoltage"]["sources"][1].update(signal="Nope"),
         "alarms.OverVoltage.sources.1.signal 'Nope' not in message PYLON_Alarms"),
        (lambda d: d.update(commands={"SetX": {"message": "EMS_Keepalive", "signal": "KeepaliveData",
                                               "min": 5, "max": 1}}),
         "commands.SetX: Value error, min 5.0 is above max 1.0"),
        (lambda d: d.update(source={"dbc": "missing.dbc"}), "source.dbc 'missing.dbc' not found"),
    ],
)
def test_bad_profile_is_rejected_with_the_json_path(tmp_path: Path, mutate: Any, expected: str) -> None:
    data = pylon()
    mutate(data)
    with pytest.raises(ProfileError) as e:
        load_profile(save(tmp_path, data))
    assert expected in str(e.value)


def test_not_json_and_not_an_object(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{nope")
    with pytest.raises(ProfileError, match="not valid JSON"):
        load_profile(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ProfileError, match="expected a JSON object, found list"):
        load_profile(bad)


def test_unknown_shipped_name_lists_known_ones() -> None:
    with pytest.raises(ProfileError, match=r"unknown profile .nope.*shipped: .*pylon-lv"):
        load_profile("nope")


def test_inline_profile_compiles_to_the_same_model(tmp_path: Path) -> None:
    data = {
        "name": "inline-test", "version": "1.0", "protocol": "dbc",
        "source": {"messages": [{"name": "St", "id": "0x610", "dlc": 4, "signals": [
            {"name": "V", "start_byte": 0, "length": 16, "scale": 0.1, "unit": "V"},
            {"name": "I", "start_byte": 2, "length": 16, "signed": True, "byte_order": "big", "scale": 0.1},
        ]}]},
        "channels": {"Voltage": {"message": "St", "signal": "V", "unit": "V"},
                     "Current": {"message": "St", "signal": "I", "unit": "A"}},
    }
    p = load_profile(save(tmp_path, data))
    msg = p.message("St")
    assert msg.frame_id == 0x610 and msg.length == 4
    # V = 0x01F4 little-endian = 500 -> 50.0 V; I = 0xFF38 big-endian = -200 -> -20.0 A
    assert msg.decode(bytes([0xF4, 0x01, 0xFF, 0x38])) == pytest.approx({"V": 50.0, "I": -20.0})


def test_j1939_profile_needs_29_bit_ids_and_its_own_ack_types(tmp_path: Path) -> None:
    def profile(can_id: str, extended: bool, ack: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "j-test", "version": "1.0", "protocol": "j1939",
            "source": {"messages": [{"name": "M", "id": can_id, "extended": extended, "dlc": 8, "signals": [
                {"name": "V", "start_byte": 0, "length": 16}]}]},
            "channels": {"Voltage": {"message": "M", "signal": "V", "unit": "V"}},
            "commands": {"Set": {"message": "M", "signal": "V", "min": 0, "max": 10, "ack": ack}},
        }

    with pytest.raises(ProfileError, match=r"channels\.Voltage: message M must have a 29-bit j1939 ID"):
        load_profile(save(tmp_path, profile("0x351", False, {"type": "none"})))
    with pytest.raises(ProfileError, match=r"commands\.Set\.ack\.type 'sdo' is not for protocol j1939; "
                                           r"expected echo, j1939_ack, none"):
        load_profile(save(tmp_path, profile("0x18FF50E5", True, {"type": "sdo"})))
    assert load_profile(save(tmp_path, profile("0x18FF50E5", True, {"type": "j1939_ack"}))).name == "j-test"
