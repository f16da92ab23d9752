"""Site files: the contract keys, and errors that name the file, the table and the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from emsbms import ConfigError, Edge
from emsbms.site import load_site

GOOD = """
[site]
org = "acme"
name = "plant-1"

[[bus]]
name = "can0"
interface = "virtual"
channel = "site-test-0"
bitrate = 500000
receive_own_messages = false

[[device]]
name = "bms_0"
bus = "can0"
profile = "pylon-lv"
id_offset = 0
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "site.toml"
    p.write_text(text)
    return p


def test_good_site_parses_with_passthrough_options(tmp_path: Path) -> None:
    site = load_site(write(tmp_path, GOOD))
    assert (site.org, site.name) == ("acme", "plant-1")
    assert site.buses[0].can_kwargs() == {
        "interface": "virtual", "channel": "site-test-0", "bitrate": 500000, "receive_own_messages": False,
    }
    assert site.devices[0].name == "bms_0" and site.devices[0].id_offset == 0


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('id_offset = 0', 'id_ofset = 0'), "[[device]] #1 'bms_0': unknown key 'id_ofset'"),
        (('bus = "can0"', 'bus = "can9"'), "key 'bus': 'can9' is not a defined bus; known: can0"),
        (('bitrate = 500000', 'bitrate = "fast"'), "[[bus]] #1 'can0': key 'bitrate' expected a positive int"),
        (('id_offset = 0', 'id_offset = "0x100"'), "key 'id_offset' expected int, found str"),
        (('[site]', '[sight]'), "unknown table 'sight'"),
    ],
)
def test_bad_site_errors_name_table_and_key(tmp_path: Path, change: tuple[str, str], expected: str) -> None:
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError) as e:
        load_site(path)
    assert str(path) in str(e.value)
    assert expected in str(e.value)


def test_duplicate_device_name(tmp_path: Path) -> None:
    text = GOOD + '\n[[device]]\nname = "bms_0"\nbus = "can0"\nprofile = "pylon-lv"\nid_offset = 0x100\n'
    with pytest.raises(ConfigError, match=r"\[\[device\]\] #2 'bms_0': key 'name': duplicate name 'bms_0'"):
        load_site(write(tmp_path, text))


def test_unknown_profile_names_the_device_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('profile = "pylon-lv"', 'profile = "pylon-hv"'))
    with pytest.raises(ConfigError) as e:
        Edge.from_site(path)
    text = str(e.value)
    assert "[[device]] #1 'bms_0': key 'profile': unknown profile 'pylon-hv'" in text
    assert "pylon-lv" in text  # lists the shipped names


def test_colliding_ids_on_one_bus_are_refused(tmp_path: Path) -> None:
    text = GOOD + '\n[[device]]\nname = "bms_1"\nbus = "can0"\nprofile = "pylon-lv"\n'
    with pytest.raises(ConfigError, match=r"#2 'bms_1': key 'bus' expected IDs no other device on bus 'can0' uses,"
                       r" found frame 0x351 \(received\), already used by device 'bms_0' \(received\)"):
        Edge.from_site(write(tmp_path, text))


def test_id_offset_separates_identical_profiles(tmp_path: Path) -> None:
    text = GOOD + '\n[[device]]\nname = "bms_1"\nbus = "can0"\nprofile = "pylon-lv"\nid_offset = 0x100\n'
    edge = Edge.from_site(write(tmp_path, text))
    assert 0x351 in set(edge.adapters["bms_0"].frame_keys())
    assert 0x451 in set(edge.adapters["bms_1"].frame_keys())


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path, "[site\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_site(path)
