"""Site safety: site files (`run --site`), `site import` and `commission` refuse the same things with
the same messages: unknown keys (with a "did you mean"), wrong types, unknown python-can interfaces
and options, two buses on one physical channel, J1939 twins, IDs that overflow their frame, and IDs
(received or sent) that another device on the bus uses. A refused site reaches neither the bus nor
the database: the stored site stays as it was."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from typer.testing import Result

from tests.test_db import invoke

NAME = 0x9000A0005CA01F3A


def good_site(tag: str) -> str:
    return f"""[site]
org = "acme"
name = "safe"

[[bus]]
name = "can0"
interface = "virtual"
channel = "safe-{tag}-0"

[[bus]]
name = "can1"
interface = "udp_multicast"
channel = "239.74.163.2"
port = 43170

[[device]]
name = "hv_0"
bus = "can0"
profile = "acme-hv"

[[device]]
name = "j_0"
bus = "can0"
profile = "j1939-hvess"
j1939_name = 0x{NAME:X}
"""


def run_site(tmp_path: Path, text: str) -> tuple[Path, Result]:
    """`emsbms --site FILE run` on `text`, against a fresh database."""
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    return path, invoke(tmp_path / "run.db", "--site", str(path), "run", "--duration", "0")


def import_over_good(tmp_path: Path, text: str) -> tuple[Path, Result, str, str]:
    """Import a good site, then `text`; returns the bad file, the result and the export before and after."""
    db = tmp_path / "e.db"
    good = tmp_path / "good.toml"
    good.write_text(good_site(uuid.uuid4().hex[:8]), encoding="utf-8")
    assert invoke(db, "site", "import", str(good)).exit_code == 0
    before = invoke(db, "site", "export").stdout
    bad = tmp_path / "bad-import.toml"
    bad.write_text(text, encoding="utf-8")
    r = invoke(db, "site", "import", str(bad))
    return bad, r, before, invoke(db, "site", "export").stdout


def refused_everywhere(tmp_path: Path, text: str, message: str) -> None:
    """`run --site` and `site import` both exit 2 with `error: FILE: message`; the stored site is unchanged."""
    path, r = run_site(tmp_path, text)
    assert (r.exit_code, r.stderr) == (2, f"error: {path}: {message}\n")
    bad, r, before, after = import_over_good(tmp_path, text)
    assert (r.exit_code, r.stderr) == (2, f"error: {bad}: {message}\n")
    assert r.stdout == ""
    assert after == before and "safe-" in after


def edit(old: str, new: str, tag: str = "t") -> str:
    text = good_site(tag)
    assert old in text
    return text.replace(old, new, 1)


# -- every key is known ------------------------------------------------------------------------

VIRTUAL_KEYS = "name, interface, channel, bitrate, receive_own_messages, rx_queue_size, preserve_timestamps," \
               " protocol, can_filters"
UDP_KEYS = "name, interface, channel, bitrate, port, hop_limit, receive_own_messages, fd, can_filters"


@pytest.mark.parametrize(("old", "new", "message"), [
    ('channel = "safe-t-0"', 'channel = "safe-t-0"\nbitrte = 250000',
     f"[[bus]] #1 'can0': unknown key 'bitrte'; did you mean 'bitrate'? (expected one of: {VIRTUAL_KEYS})"),
    ('port = 43170', 'prot = 43170',
     f"[[bus]] #2 'can1': unknown key 'prot'; did you mean 'port'? (expected one of: {UDP_KEYS})"),
    ('org = "acme"', 'orgg = "acme"',
     "[site]: unknown key 'orgg'; did you mean 'org'? (expected one of: org, name, workers, cycle_period)"),
    ('profile = "acme-hv"', 'profle = "acme-hv"',
     "[[device]] #1 'hv_0': unknown key 'profle'; did you mean 'profile'? (expected one of: name, bus, profile,"
     " id_offset, node_id, source_address, j1939_name, nmt_master, options)"),
    ('[site]', '[j1939]\nedge_adress = 0x27\n\n[site]',
     "[j1939]: unknown key 'edge_adress'; did you mean 'edge_address'? (expected one of: edge_name, edge_address,"
     " request_interval_s)"),
    ('[site]', '[sites]', "unknown table 'sites'; did you mean 'site'? (expected one of: site, bus, device, j1939,"
     " canopen, uplink, controller, rule)"),
])
def test_an_unknown_key_is_refused_with_the_closest_known_one(tmp_path: Path, old: str, new: str,
                                                               message: str) -> None:
    refused_everywhere(tmp_path, edit(old, new), message)


def test_an_unknown_device_option_is_refused_after_its_profile_is_known(tmp_path: Path) -> None:
    text = edit(f"j1939_name = 0x{NAME:X}", f"j1939_name = 0x{NAME:X}\noptions = {{edge_adres = 0x30}}")
    refused_everywhere(tmp_path, text, "[[device]] #2 'j_0': unknown key 'options.edge_adres'; did you mean"
                       " 'options.edge_address'? (expected one of: options.edge_name, options.edge_address,"
                       " options.request_interval_s)")


# -- types -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("old", "new", "message"), [
    ('channel = "safe-t-0"', 'channel = 1.5', "[[bus]] #1 'can0': key 'channel' expected str or int, found float 1.5"),
    ('org = "acme"', 'org = 7', "[site]: key 'org' expected str, found int 7"),
])
def test_a_value_of_the_wrong_type_is_refused(tmp_path: Path, old: str, new: str, message: str) -> None:
    refused_everywhere(tmp_path, edit(old, new), message)


def test_a_top_level_value_where_tables_belong_is_refused(tmp_path: Path) -> None:
    """`bus = 5` at the top: a TypeError (exit 1) before."""
    refused_everywhere(tmp_path, 'bus = 5\n\n[site]\norg = "acme"\n',
                       "[[bus]] expected an array of tables, found int 5")


# -- python-can interfaces and their options ---------------------------------------------------

def test_an_unknown_interface_is_refused(tmp_path: Path) -> None:
    refused_everywhere(tmp_path, edit('interface = "virtual"', 'interface = "virtaul"'),
                       "[[bus]] #1 'can0': key 'interface' expected a python-can interface (canalystii, cantact,"
                       " emsbms_faulty, etas, gs_usb, iscan, ixxat, kvaser, neousys, neovi, nican, nixnet, pcan,"
                       " robotell, seeedstudio, serial, slcan, socketcan, socketcand, systec, udp_multicast,"
                       " usb2can, vector, virtual), found 'virtaul'; did you mean 'virtual'?")


def test_an_option_of_the_wrong_type_for_python_can_is_refused(tmp_path: Path) -> None:
    refused_everywhere(tmp_path, edit("port = 43170", 'port = "notaport"'),
                       "[[bus]] #2 'can1': key 'port' expected int, found str 'notaport'")


def test_the_inner_interface_of_a_faulty_bus_is_checked_too(tmp_path: Path) -> None:
    text = edit('interface = "virtual"', 'interface = "emsbms_faulty"\ninner_interface = "virtual"\ndrop = "lots"')
    refused_everywhere(tmp_path, text, "[[bus]] #1 'can0': key 'drop' expected float, found str 'lots'")


# -- physical channels ---------------------------------------------------------------------------

def test_two_buses_on_one_virtual_channel_are_refused(tmp_path: Path) -> None:
    text = edit('interface = "udp_multicast"\nchannel = "239.74.163.2"\nport = 43170',
                'interface = "virtual"\nchannel = "safe-t-0"')
    refused_everywhere(tmp_path, text, "[[bus]] #2 'can1': key 'channel' expected a physical channel no other bus"
                       " opens, found virtual channel 'safe-t-0', already opened by [[bus]] #1 'can0'")


def test_two_udp_multicast_buses_on_one_port_are_refused_whatever_the_group(tmp_path: Path) -> None:
    text = good_site("t") + ('\n[[bus]]\nname = "can2"\ninterface = "udp_multicast"\nchannel = "239.74.163.9"\n'
                             'port = 43170\n')
    refused_everywhere(tmp_path, text, "[[bus]] #3 'can2': key 'port' expected a physical channel no other bus"
                       " opens, found udp_multicast port 43170, already opened by [[bus]] #2 'can1'")


# -- J1939 twins ------------------------------------------------------------------------------------

def test_two_j1939_devices_with_one_name_are_refused(tmp_path: Path) -> None:
    text = good_site("t") + f'\n[[device]]\nname = "j_1"\nbus = "can0"\nprofile = "j1939-hvess"\nj1939_name = {NAME}\n'
    refused_everywhere(tmp_path, text, "[[device]] #3 'j_1': key 'j1939_name' expected one no other device on bus"
                       " 'can0' has, found 0x9000A0005CA01F3A, already device 'j_0'")


def test_two_j1939_devices_with_one_source_address_are_refused(tmp_path: Path) -> None:
    device = '\n[[device]]\nname = "{}"\nbus = "can1"\nprofile = "j1939-hvess"\nsource_address = {}\n'
    text = good_site("t") + device.format("j_1", "0xF3") + device.format("j_2", "243")
    refused_everywhere(tmp_path, text, "[[device]] #4 'j_2': key 'source_address' expected one no other device on"
                       " bus 'can1' has, found 0xF3, already device 'j_1'")


# -- ID widths ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("offset", "found"), [
    ("0x800", "0x4A0 + 0x800 = 0xCA0 (11-bit) (received)"),
    ("0x1FFFFFFF", "0x4A0 + 0x1FFFFFFF = 0x2000049F (received)"),
    ("-1185", "0x4A0 - 0x4A1 = -0x1 (received)"),
])
def test_an_id_offset_that_overflows_the_frame_is_refused(tmp_path: Path, offset: str, found: str) -> None:
    refused_everywhere(tmp_path, edit('profile = "acme-hv"', f'profile = "acme-hv"\nid_offset = {offset}'),
                       "[[device]] #1 'hv_0': key 'id_offset' expected IDs that fit their frames (11-bit 0..0x7FF,"
                       f" 29-bit 0..0x1FFFFFFF), found {found}")


def test_an_id_offset_beyond_29_bits_is_refused(tmp_path: Path) -> None:
    refused_everywhere(tmp_path, edit('profile = "acme-hv"', 'profile = "acme-hv"\nid_offset = 0x20000000'),
                       "[[device]] #1 'hv_0': key 'id_offset' expected -0x1FFFFFFF..0x1FFFFFFF, found 0x20000000")


# -- sent IDs ----------------------------------------------------------------------------------------

SENT_COLLISION = ("[[device]] #3 'lv_0': key 'id_offset' expected IDs no other device on bus 'can0' uses, found"
                  " frame 0x4B0 (sent: command LV_ChargeRequest), already used by device 'hv_0' (sent: command"
                  " EMS_Setpoints); put it on another bus or give it an id_offset")


def test_a_command_sent_on_another_devices_setpoint_id_is_refused(tmp_path: Path) -> None:
    """acme-lv-bytemap's LV_ChargeRequest (0x618) with id_offset -360 is 0x4B0: acme-hv's EMS_Setpoints.
    Its received IDs (0x4A8..0x4AA) collide with nothing: only the sent ID gives it away."""
    text = good_site("t") + '\n[[device]]\nname = "lv_0"\nbus = "can0"\nprofile = "acme-lv-bytemap"\nid_offset = -360\n'
    refused_everywhere(tmp_path, text, SENT_COLLISION)


# -- commission: the same checks, the same messages -----------------------------------------------------

@pytest.fixture
def commissioned(tmp_path: Path) -> Path:
    """A database holding hv_0 (acme-hv) and j_0 (j1939-hvess) on can0 and the udp bus can1."""
    db = tmp_path / "c.db"
    good = tmp_path / "good.toml"
    good.write_text(good_site(uuid.uuid4().hex[:8]), encoding="utf-8")
    assert invoke(db, "site", "import", str(good)).exit_code == 0
    return db


def refused_by_commission(db: Path, args: list[str], message: str) -> None:
    before = invoke(db, "site", "export").stdout
    r = invoke(db, "commission", *args)
    assert (r.exit_code, r.stderr) == (2, f"error: cannot commission {args[0]!r} on bus {args[2]!r}: database {db}:"
                                          f" {message}\n")
    assert invoke(db, "site", "export").stdout == before


def test_commission_refuses_the_sent_id_collision(commissioned: Path) -> None:
    refused_by_commission(commissioned, ["lv_0", "--bus", "can0", "--profile", "acme-lv-bytemap",
                                         "--id-offset", "-360"], SENT_COLLISION)


def test_commission_refuses_an_overflowing_id_offset(commissioned: Path) -> None:
    refused_by_commission(commissioned, ["hv_1", "--bus", "can0", "--profile", "acme-hv", "--id-offset", "0x800"],
                          "[[device]] #3 'hv_1': key 'id_offset' expected IDs that fit their frames (11-bit 0..0x7FF,"
                          " 29-bit 0..0x1FFFFFFF), found 0x4A0 + 0x800 = 0xCA0 (11-bit) (received)")


def test_commission_refuses_an_unknown_interface_and_a_shared_channel(commissioned: Path, tmp_path: Path) -> None:
    refused_by_commission(commissioned, ["p_0", "--bus", "can9", "--profile", "pylon-lv", "--interface", "virtaul"],
                          "[[bus]] #3 'can9': key 'interface' expected a python-can interface (canalystii, cantact,"
                          " emsbms_faulty, etas, gs_usb, iscan, ixxat, kvaser, neousys, neovi, nican, nixnet, pcan,"
                          " robotell, seeedstudio, serial, slcan, socketcan, socketcand, systec, udp_multicast,"
                          " usb2can, vector, virtual), found 'virtaul'; did you mean 'virtual'?")
    channel = invoke(commissioned, "site", "export").stdout.split('channel = "')[1].split('"')[0]
    refused_by_commission(commissioned, ["p_0", "--bus", "can9", "--profile", "pylon-lv", "--interface", "virtual",
                                         "--channel", channel],
                          f"[[bus]] #3 'can9': key 'channel' expected a physical channel no other bus opens, found"
                          f" virtual channel {channel!r}, already opened by [[bus]] #1 'can0'")


def test_commission_refuses_a_j1939_source_address_twin(commissioned: Path) -> None:
    assert invoke(commissioned, "commission", "j_1", "--bus", "can1", "--profile", "j1939-hvess",
                  "--source-address", "0xF3").exit_code == 0
    refused_by_commission(commissioned, ["j_2", "--bus", "can1", "--profile", "j1939-hvess", "--source-address",
                                         "243"],
                          "[[device]] #4 'j_2': key 'source_address' expected one no other device on bus 'can1' has,"
                          " found 0xF3, already device 'j_1'")
