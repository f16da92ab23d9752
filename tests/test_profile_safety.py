"""Profile numbers and references that could reach a battery: refused when the profile loads.

Through the CLI (validate, import: exit 2, the exact message, nothing stored), through the loader
(source files only from the profile's folders, no file content in errors, the EDS cache checked
against its hash), through a running edge (a value too large for a float refused, nothing sent),
and as a property: whatever validates runs, whatever does not raises ProfileError.
"""

from __future__ import annotations

import copy
import json
import math
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import can
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner, Result

from emsbms.cli import app
from emsbms.errors import CommandRejected, ProfileError
from emsbms.profile import load_profile
from emsbms.profile.loader import _materialize, parse_profile
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter
from emsbms.resources import data_dir
from emsbms.types import CommandResult, CommandStatus

ROOT = Path(__file__).resolve().parent.parent
runner = CliRunner()

NAN, INF = float("nan"), float("inf")


def invoke(*args: str) -> Result:
    return runner.invoke(app, list(args), catch_exceptions=False)


def shipped(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((ROOT / "profiles" / f"{name}.json").read_text(encoding="utf-8"))
    return doc


def save(folder: Path, doc: dict[str, Any], name: str = "p.json") -> Path:
    """Write a profile as Python's JSON writes it (NaN, Infinity and 1e+306 are what json.loads reads back)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def stored_rows(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT name, version FROM profiles"))


def hv(edit: Any) -> dict[str, Any]:
    doc = shipped("acme-hv")
    edit(doc)
    return doc


BAD = [
    (lambda d: d["commands"]["SetChargeCurrent"].update(max=NAN),
     "profile acme-hv: commands.SetChargeCurrent.max: expected a finite number; found NaN"),
    (lambda d: d.update(timeout_ms=INF),
     "profile acme-hv: timeout_ms: expected a number of milliseconds from 1 to 86400000 (1 day); found Infinity"),
    (lambda d: d.update(timeout_ms=1e306),
     "profile acme-hv: timeout_ms: expected a number of milliseconds from 1 to 86400000 (1 day); found 1e+306"),
    (lambda d: d["messages"]["ACME_Pack"].update(period_ms=1e306),
     "profile acme-hv: messages.ACME_Pack.period_ms: expected a number of milliseconds from 1 to 86400000"
     " (1 day); found 1e+306"),
    (lambda d: d["channels"]["Soc"].update(scale=0),
     "profile acme-hv: channels.Soc.scale: expected a finite non-zero number; found 0"),
    (lambda d: d["channels"]["Soc"].update(scale=NAN),
     "profile acme-hv: channels.Soc.scale: expected a finite non-zero number; found NaN"),
    (lambda d: d["channels"]["Soc"].update(offset=-INF),
     "profile acme-hv: channels.Soc.offset: expected a finite number; found -Infinity"),
    (lambda d: d["commands"]["SetChargeCurrent"].update(max=1e306),
     "profile acme-hv: commands.SetChargeCurrent.max: expected a number from 0 to 6553.5 A (what"
     " EMS_Setpoints.ChargeCurrentRequest (16-bit unsigned, scale 0.1, offset 0) can carry); found 1e+306"),
    (lambda d: d["commands"]["SetChargeCurrent"].update(min=-5),
     "profile acme-hv: commands.SetChargeCurrent.min: expected a number from 0 to 6553.5 A (what"
     " EMS_Setpoints.ChargeCurrentRequest (16-bit unsigned, scale 0.1, offset 0) can carry); found -5"),
    (lambda d: d["commands"]["SetChargeCurrent"].update(period_ms=INF),
     "profile acme-hv: commands.SetChargeCurrent.period_ms: expected a number of milliseconds from 1 to"
     " 86400000 (1 day); found Infinity"),
    (lambda d: d["commands"]["SetChargeCurrent"].update(ttl_s=1e306),
     "profile acme-hv: commands.SetChargeCurrent.ttl_s: expected a number of seconds from 0.001 to 86400"
     " (1 day); found 1e+306"),
]


@pytest.mark.parametrize(("edit", "message"), BAD)
def test_validate_refuses_non_finite_and_out_of_range_numbers(tmp_path: Path, edit: Any, message: str) -> None:
    r = invoke("profiles", "validate", str(save(tmp_path, hv(edit))))
    assert r.exit_code == 2
    assert r.stderr == f"error: {message}\n"


@pytest.mark.parametrize(("edit", "message"), BAD[:5])
def test_import_of_a_bad_profile_stores_nothing(tmp_path: Path, edit: Any, message: str) -> None:
    folder = tmp_path / "in"
    save(folder, shipped("acme-lv-bytemap"), "a-good.json")
    bad = save(folder, hv(edit), "b-bad.json")
    db = tmp_path / "e.db"
    r = invoke("--db", str(db), "profiles", "import", str(folder))
    assert r.exit_code == 2
    assert r.stderr == f"error: {bad}: {message}\n"
    assert stored_rows(db) == []
    listing = json.loads(invoke("--db", str(db), "profiles", "list", "--json").stdout)
    assert [row for row in listing if "stored" in row["origin"]] == []


def test_inline_signal_numbers_are_checked_in_the_model(tmp_path: Path) -> None:
    doc = shipped("acme-lv-bytemap")
    doc["source"]["messages"][0]["signals"][0].update(scale=0)
    with pytest.raises(ProfileError) as e:
        load_profile(save(tmp_path, doc))
    assert str(e.value) == ("profile acme-lv-bytemap: source.messages.0.signals.0.scale: expected a finite"
                            " non-zero number; found 0")
    doc = shipped("acme-lv-bytemap")
    doc["source"]["messages"][3]["signals"][0].update(maximum=1e306)
    with pytest.raises(ProfileError) as e:
        load_profile(save(tmp_path, doc))
    assert str(e.value) == (
        "profile acme-lv-bytemap: source.messages.3.signals.0: Value error, maximum: expected a number from 0 to"
        " 6553.5 (what 16 bits unsigned, scale 0.1, offset 0 can carry); found 1e+306")


def test_j1939_command_limits_stay_below_the_error_codes(tmp_path: Path) -> None:
    def profile(top: float) -> dict[str, Any]:
        return {
            "name": "j-test", "version": "1.0", "protocol": "j1939",
            "source": {"messages": [{"name": "M", "id": "0x18FF50E5", "extended": True, "dlc": 8, "signals": [
                {"name": "I", "start_byte": 0, "length": 16, "scale": 0.05}]}]},
            "commands": {"Set": {"message": "M", "signal": "I", "min": 0, "max": top, "ack": {"type": "none"}}},
        }

    assert load_profile(save(tmp_path, profile(3212.75))).model.commands["Set"].max == 3212.75  # raw 0xFAFF
    with pytest.raises(ProfileError) as e:
        load_profile(save(tmp_path, profile(3212.8)))  # raw 0xFB00: reserved, then error and not available
    assert str(e.value) == ("profile j-test: commands.Set.max: expected a number from 0 to 3212.75 (what M.I"
                            " (16-bit unsigned, scale 0.05, offset 0) can carry); found 3212.8")


def test_canopen_factor_must_be_finite_and_non_zero(tmp_path: Path) -> None:
    eds = (data_dir("eds") / "cia418_bms.eds").read_text(encoding="utf-8")
    head, rest = eds.split("[4806]", 1)
    section, tail = rest.split("\n\n", 1)
    assert "Factor=0.1" in section
    section = section.replace("Factor=0.1", "Factor=0")
    (tmp_path / "cia418_bms.eds").write_text(f"{head}[4806]{section}\n\n{tail}", encoding="utf-8")
    with pytest.raises(ProfileError) as e:
        load_profile(save(tmp_path, shipped("cia418-bms")))
    assert str(e.value) == ("profile cia418-bms: channels.ChargeMaxCurrent.od: 0x4806 in eds/cia418_bms.eds has"
                            " Factor 0.0; expected a finite non-zero number")


# -- source references ------------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["../../../../../../../../etc/passwd", "/etc/passwd"])
def test_a_source_reference_may_not_leave_the_profile_folders(tmp_path: Path, ref: str) -> None:
    folder = tmp_path / "profiles"
    doc = shipped("acme-hv")
    doc["source"]["dbc"] = ref
    path = save(folder, doc)
    r = invoke("profiles", "validate", str(path))
    assert r.exit_code == 2
    roots = f"{folder.resolve()}, {(tmp_path / 'dbc').resolve()}, {data_dir('dbc').resolve()}"
    assert r.stderr == (f"error: profile acme-hv: source.dbc {ref!r}: expected a file inside {roots};"
                        " found a path outside them (/etc/passwd)\n")
    assert "root:" not in r.stderr


def test_a_symbolic_link_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "secret" / "keys.dbc"
    outside.parent.mkdir()
    outside.write_text((data_dir("dbc") / "acme_hv.dbc").read_text(encoding="utf-8"), encoding="utf-8")
    folder = tmp_path / "profiles"
    folder.mkdir()
    (folder / "acme_hv_link.dbc").symlink_to(outside)
    doc = shipped("acme-hv")
    doc["source"]["dbc"] = "acme_hv_link.dbc"
    with pytest.raises(ProfileError, match=r"source.dbc 'acme_hv_link.dbc': expected a file inside .*"
                                           r"found a path outside them \(.*secret/keys.dbc\)"):
        load_profile(save(folder, doc))
    # the same file in the sibling dbc/ folder is allowed, `..` and all
    (tmp_path / "dbc").mkdir()
    (tmp_path / "dbc" / "mine.dbc").write_text(outside.read_text(encoding="utf-8"), encoding="utf-8")
    doc["source"]["dbc"] = "../dbc/mine.dbc"
    profile = load_profile(save(folder, doc))
    assert profile.source_path == folder / "../dbc/mine.dbc"


def test_a_file_that_does_not_parse_is_not_echoed(tmp_path: Path) -> None:
    (tmp_path / "acme_hv.dbc").write_text("password = hunter2-secret-token\nmore secrets\n", encoding="utf-8")
    r = invoke("profiles", "validate", str(save(tmp_path, shipped("acme-hv"))))
    assert r.exit_code == 2
    assert r.stderr == "error: profile acme-hv: source.dbc: not a valid DBC file: invalid syntax at line 1, column 10\n"
    doc = shipped("cia418-bms")
    (tmp_path / "cia418_bms.eds").write_text("hunter2-secret-token\n[x]\n", encoding="utf-8")
    r = invoke("profiles", "validate", str(save(tmp_path, doc, "c.json")))
    assert r.exit_code == 2
    assert r.stderr == ("error: profile cia418-bms: source.eds eds/cia418_bms.eds: cannot parse:"
                        " MissingSectionHeaderError at line 1\n")


def test_a_corrupted_eds_cache_file_is_rewritten() -> None:
    text = (data_dir("eds") / "cia418_bms.eds").read_text(encoding="utf-8") + f"\n; {uuid.uuid4().hex}\n"
    path = _materialize("eds", text)
    path.write_text("[1000]\nParameterName=planted\n", encoding="utf-8")
    assert _materialize("eds", text) == path
    assert path.read_text(encoding="utf-8") == text
    path.write_text("[1000]\nParameterName=planted\n", encoding="utf-8")
    profile = parse_profile(shipped("cia418-bms"), None, source_text=text)
    assert profile.source_path == path
    assert path.read_text(encoding="utf-8") == text


# -- command values ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "found"),
    [(NAN, "nan"), (-INF, "-inf"), ("12", "'12'"), (None, "None"),
     (-(10**400), "an integer of 1329 bits (about 10**400)")],
    ids=["nan", "-inf", "string", "none", "-10**400"],
)
def test_every_non_number_is_refused_naming_expected_and_found(value: Any, found: str) -> None:
    adapter = DbcAdapter(DeviceConfig("hv_0", "can0", "acme-hv"), load_profile("acme-hv"))
    with pytest.raises(CommandRejected) as e:
        adapter.plan_command("SetChargeCurrent", value, 0)
    assert str(e.value) == f"hv_0/SetChargeCurrent: expected a finite number from 0 to 200 A, found {found}"


# -- property: validation and runtime agree ---------------------------------------------------------

FIELDS = ("sig_scale", "sig_offset", "req_scale", "req_offset", "ch_scale", "ch_offset", "cmd_min", "cmd_max",
          "idle", "period_ms", "timeout_ms", "cmd_period_ms", "ttl_s", "tx_period_ms", "tx_value")
EXTREME = st.sampled_from([NAN, INF, -INF, 0.0, -0.0, 1e306, -1e306, 1.7e308, 5e-324, 1e-300, 86_400_001.0,
                           0.5, 10**400, 2**64, 86_400_000.0, 1.0, 0.001])
NASTY = st.one_of(EXTREME, st.floats(), st.integers(-(2**70), 2**70))
SETTINGS = {"period_ms", "timeout_ms", "cmd_period_ms", "tx_period_ms"}


def definitely_invalid(key: str, value: Any) -> bool:
    """What the profile rules refuse whatever the rest holds."""
    try:
        v = float(value)
    except OverflowError:
        return True
    if not math.isfinite(v):
        return True
    if key.endswith("scale") and v == 0:
        return True
    if key in SETTINGS:
        return not 1 <= v <= 86_400_000
    if key == "ttl_s":
        return not 0.001 <= v <= 86_400
    return False


@st.composite
def profiles(draw: st.DrawFn) -> tuple[dict[str, Any], dict[str, Any], set[str]]:
    nasty = draw(st.sets(st.sampled_from(FIELDS), max_size=3))
    scale = st.one_of(st.floats(0.001, 100), st.floats(-100, -0.001))
    nice: dict[str, Any] = {
        "sig_scale": scale, "req_scale": scale, "ch_scale": scale,
        "sig_offset": st.floats(-1000, 1000), "req_offset": st.floats(-1000, 1000),
        "ch_offset": st.floats(-1000, 1000), "period_ms": st.floats(1, 86_400_000),
        "timeout_ms": st.floats(1, 86_400_000), "cmd_period_ms": st.floats(1, 86_400_000),
        "tx_period_ms": st.floats(1, 86_400_000), "ttl_s": st.floats(0.001, 86_400),
        "tx_value": st.integers(0, 255),
    }
    v = {k: draw(NASTY if k in nasty else s) for k, s in nice.items()}
    # limits inside what the request signal carries, unless drawn nasty
    span = [draw(st.floats(0, 1)) for _ in range(3)]
    if not definitely_invalid("req_scale", v["req_scale"]) and not definitely_invalid("req_offset", v["req_offset"]):
        rs, ro = float(v["req_scale"]), float(v["req_offset"])
        a, b = ro, 65535 * rs + ro
        lo, hi = min(a, b), max(a, b)
        fracs = sorted(span[:2])
        v["cmd_min"], v["cmd_max"] = lo + fracs[0] * (hi - lo), lo + fracs[1] * (hi - lo)
        v["idle"] = lo + span[2] * (hi - lo)
    else:
        v["cmd_min"], v["cmd_max"], v["idle"] = 0.0, 1.0, 0.0
    for k in ("cmd_min", "cmd_max", "idle"):
        if k in nasty:
            v[k] = draw(NASTY)
    doc = {
        "name": "prop", "version": "1.0", "protocol": "dbc",
        "source": {"messages": [
            {"name": "Pack", "id": "0x610", "dlc": 4, "signals": [
                {"name": "V", "start_byte": 0, "length": 16, "scale": v["sig_scale"], "offset": v["sig_offset"]},
                {"name": "I", "start_byte": 2, "length": 16, "signed": True, "scale": 0.1}]},
            {"name": "Req", "id": "0x618", "dlc": 2, "signals": [
                {"name": "R", "start_byte": 0, "length": 16, "scale": v["req_scale"], "offset": v["req_offset"]}]},
            {"name": "Keep", "id": "0x619", "dlc": 1, "signals": [{"name": "K", "start_byte": 0, "length": 8}]},
        ]},
        "timeout_ms": v["timeout_ms"],
        "messages": {"Pack": {"period_ms": v["period_ms"]}},
        "channels": {
            "Voltage": {"message": "Pack", "signal": "V", "scale": v["ch_scale"], "offset": v["ch_offset"],
                        "type": draw(st.sampled_from(["number", "int", "bool"]))},
            "Current": {"message": "Pack", "signal": "I", "type": "int"},
        },
        "transmit": [{"message": "Keep", "period_ms": v["tx_period_ms"], "signals": {"K": v["tx_value"]}}],
        "commands": {"Set": {"message": "Req", "signal": "R", "min": v["cmd_min"], "max": v["cmd_max"],
                             "idle": v["idle"], "ttl_s": v["ttl_s"], "period_ms": v["cmd_period_ms"],
                             "ack": {"type": "none"}}},
    }
    return doc, v, nasty


def run_adapter(adapter: DbcAdapter, payloads: list[bytes], values: list[Any], start_us: int) -> None:
    """Frames, ticks over more than a day and commands: nothing may raise but CommandRejected."""
    cmd = adapter.profile.model.commands["Set"]
    now = start_us
    adapter.start(now)
    for i, data in enumerate(payloads):
        now += 7_000 * (i + 1)
        frame = can.Message(arbitration_id=0x610, data=data, timestamp=now / 1e6, is_extended_id=False)
        out = adapter.on_frame(frame, now)
        assert out is not None
        for s in out.samples:
            if isinstance(s.value, float):
                assert math.isfinite(s.value), s
        adapter.tick(now)
    for value in (cmd.min, cmd.max, (cmd.min + cmd.max) / 2):
        plan = adapter.plan_command("Set", value, now)  # the profile's own limits always encode
        adapter.command_done(plan, CommandResult("d/Set", value, CommandStatus.SENT), now)
        adapter.tick(now + 1)
    for value in values:
        try:
            plan = adapter.plan_command("Set", value, now)
        except CommandRejected:
            continue
        adapter.command_done(plan, CommandResult("d/Set", plan.value, CommandStatus.SENT), now)
    for step in (10_000, 1_000_000, 86_400_000_000, 2 * 86_400_000_000, 10**15):
        adapter.tick(now + step)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    case=profiles(),
    payloads=st.lists(st.binary(min_size=4, max_size=4), min_size=1, max_size=4),
    values=st.lists(NASTY, max_size=4),
    start_us=st.sampled_from([0, 1_700_000_000_000_000]),
)
def test_what_validates_runs_and_what_does_not_raises_profile_error(
    case: tuple[dict[str, Any], dict[str, Any], set[str]], payloads: list[bytes], values: list[Any], start_us: int
) -> None:
    doc, v, nasty = case
    must_fail = [k for k in FIELDS if definitely_invalid(k, v[k])]
    try:
        profile = parse_profile(copy.deepcopy(doc))
    except ProfileError:
        assert nasty, "a profile of ordinary numbers was refused"
        return
    assert not must_fail, f"validated with {[(k, v[k]) for k in must_fail]}"
    run_adapter(DbcAdapter(DeviceConfig("d", "can0", "prop"), profile), payloads, values, start_us)
