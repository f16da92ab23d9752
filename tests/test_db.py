"""The edge database: migrations, the profile store, site import/export, and starting from the database alone."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner, Result

from emsbms.cli import app
from emsbms.db import EdgeDb, applied, connect, load_stored_site, migrate
from emsbms.edge import Edge
from emsbms.edge.store import RunLog
from emsbms.errors import ConfigError, ProfileError
from emsbms.profile.loader import load_profile
from emsbms.sim.runner import Simulation
from emsbms.site import load_site

ROOT = Path(__file__).parent.parent
runner = CliRunner()


def invoke(db: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(app, ["--db", str(db), *args], input=input, catch_exceptions=False, env={"EMSBMS_SITE": ""})


def profile_copy(
    folder: Path,
    base: str = "pylon-lv",
    name: str | None = None,
    version: str = "1.0.0",
    edit: Callable[[dict[str, Any]], None] | None = None,
    dbc_edit: Callable[[str], str] | None = None,
) -> Path:
    """A copy of a shipped profile in `folder`, renamed/re-versioned/edited, with its own uniquely named DBC."""
    doc = json.loads((ROOT / "profiles" / f"{base}.json").read_text(encoding="utf-8"))
    doc["name"] = name or base
    doc["version"] = version
    if edit is not None:
        edit(doc)
    if "dbc" in doc["source"]:
        text = (ROOT / "dbc" / doc["source"]["dbc"]).read_text(encoding="utf-8")
        source = f"{doc['name'].replace('-', '_')}_{version.replace('.', '_')}_{uuid.uuid4().hex[:6]}.dbc"
        (folder / source).write_text(dbc_edit(text) if dbc_edit else text, encoding="utf-8")
        doc["source"]["dbc"] = source
    path = folder / f"{doc['name']}-{version}.json"
    path.write_text(json.dumps(doc, indent=1), encoding="utf-8")
    return path


def pylon_v2(doc: dict[str, Any]) -> None:
    """v2 of pylon-lv: Soc rescaled by 0.5, Soh renamed StateOfHealth."""
    doc["channels"]["Soc"]["scale"] = 0.5
    doc["channels"]["StateOfHealth"] = doc["channels"].pop("Soh")


# -- migrations ------------------------------------------------------------------------------------

V1_BY_HAND = """
CREATE TABLE migrations (number INTEGER PRIMARY KEY, name TEXT, applied_us INTEGER);
INSERT INTO migrations VALUES (1, 'profile store', 1);
CREATE TABLE source_files (hash TEXT PRIMARY KEY, kind TEXT NOT NULL, name TEXT NOT NULL, content TEXT NOT NULL);
CREATE TABLE profiles (id INTEGER PRIMARY KEY, name TEXT NOT NULL, version TEXT NOT NULL, protocol TEXT NOT NULL,
    document TEXT NOT NULL, hash TEXT NOT NULL, source TEXT NOT NULL, source_file TEXT, imported_us INTEGER NOT NULL);
CREATE UNIQUE INDEX profiles_name_version ON profiles (name, version);
INSERT INTO profiles VALUES (7, 'old-one', '0.9', 'dbc', '{}', 'abc', 'by hand', NULL, 123);
CREATE TABLE samples (address TEXT NOT NULL, value, unit TEXT, timestamp_us INTEGER NOT NULL, quality TEXT);
INSERT INTO samples VALUES ('bms_0/Soc', 77, '%', 1000, 'ok');
"""


def columns(db: Path, table: str) -> list[str]:
    with sqlite3.connect(db) as conn:
        return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def test_migrations_on_an_empty_database(tmp_path: Path) -> None:
    path = tmp_path / "new.db"
    with EdgeDb(path) as db:
        assert applied(db.db) == [1, 2, 3]
    assert columns(path, "profiles") == ["id", "name", "version", "protocol", "document", "hash", "source",
                                         "source_file", "imported_us"]
    assert columns(path, "devices")[-1] == "found_by"
    assert columns(path, "site") == ["key", "value"]
    assert migrate(connect(path)) == []  # opening again applies nothing


def test_migrations_bring_an_older_database_up_to_date_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "v1.db"
    with sqlite3.connect(path) as conn:
        conn.executescript(V1_BY_HAND)
    db = connect(path)
    assert migrate(db) == [2, 3]
    assert applied(db) == [1, 2, 3]
    assert db.execute("SELECT id, name, version, source FROM profiles").fetchall() == [(7, "old-one", "0.9", "by hand")]
    assert db.execute("SELECT address, value FROM samples").fetchall() == [("bms_0/Soc", 77)]
    db.execute("INSERT INTO buses (name, interface, channel, bitrate) VALUES ('can0', 'virtual', 'x', 500000)")
    db.execute("INSERT INTO devices (name, bus, profile, commissioned_us) VALUES ('d', 'can0', 'pylon-lv', 1)")
    assert db.execute("SELECT found_by, id_offset, options FROM devices").fetchall() == [("", 0, "{}")]


def test_a_database_from_a_newer_emsbms_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    EdgeDb(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO migrations VALUES (99, 'from the future', 1)")
    with pytest.raises(ConfigError, match="schema version 99 is newer than this emsbms knows \\(3\\)"):
        EdgeDb(path)


def test_the_run_log_and_the_edge_database_share_one_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.db"
    with EdgeDb(path) as db:
        db.profiles.import_paths([ROOT / "profiles" / "pylon-lv.json"])
    with RunLog(path, site="s") as log:
        assert log.run_id == 1
    with EdgeDb(path) as db:
        assert [(p.name, p.version) for p in db.profiles.all()] == [("pylon-lv", "1.1.0")]
        assert db.db["runs"].count == 1


# -- the profile store -----------------------------------------------------------------------------


def test_import_with_an_invalid_profile_in_a_directory_stores_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "profiles"
    folder.mkdir()
    profile_copy(folder, name="good-one")
    bad = profile_copy(folder, name="zz-bad", edit=lambda d: d["channels"]["Soc"].update(signal="SOC"))
    db = tmp_path / "e.db"
    r = invoke(db, "profiles", "import", str(folder))
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: {bad}: profile zz-bad: channels.Soc.signal 'SOC'")
    with EdgeDb(db) as edge_db:
        assert edge_db.profiles.all() == []
    bad.unlink()
    r = invoke(db, "profiles", "import", str(folder))
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("stored    good-one 1.0.0  from ")
    assert invoke(db, "profiles", "import", str(folder)).stdout.startswith("unchanged good-one 1.0.0")


def test_a_changed_profile_needs_a_new_version(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    first = profile_copy(tmp_path, name="mine")
    assert invoke(db, "profiles", "import", str(first)).exit_code == 0
    changed = profile_copy(tmp_path / "..", name="mine", edit=pylon_v2)
    r = invoke(db, "profiles", "import", str(changed))
    assert r.exit_code == 2
    assert "profile mine 1.0.0 is already stored" in r.stderr and "needs a new version" in r.stderr
    with EdgeDb(db) as edge_db:
        assert [p.version for p in edge_db.profiles.versions("mine")] == ["1.0.0"]


def test_a_stored_profile_loads_with_its_files_gone(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    path = profile_copy(folder, name="gone-soon", version="2.0")
    original = load_profile(path)
    with EdgeDb(tmp_path / "e.db") as db:
        db.profiles.import_paths([path])
        shutil.rmtree(folder)
        stored = db.profiles.get("gone-soon")
        assert stored is not None and stored.version == "2.0" and stored.source == str(path)
        profile = stored.load()
    assert profile.path is None and profile.source_path is None
    assert [(m.name, m.frame_id, m.length) for m in profile.db.messages] == [
        (m.name, m.frame_id, m.length) for m in original.db.messages]
    assert profile.db.get_message_by_name("PYLON_SocSoh").decode(bytes([80, 0, 95, 0, 0, 0])) == {
        "SoC": 80, "SoH": 95, "SoCHighRes": 0}


def test_a_stored_canopen_profile_parses_its_eds_from_the_database(tmp_path: Path) -> None:
    with EdgeDb(tmp_path / "e.db") as db:
        db.profiles.import_paths([ROOT / "profiles" / "cia418-bms.json"])
        stored = db.profiles.get("cia418-bms")
        assert stored is not None and stored.source_kind == "eds" and stored.source_name == "cia418_bms.eds"
        profile = stored.load()
    assert profile.source_path is not None and profile.source_path.parent.name == "emsbms-sources"
    assert profile.source_path.read_text(encoding="utf-8") == (ROOT / "eds" / "cia418_bms.eds").read_text(
        encoding="utf-8")


def test_newest_version_wins_and_a_version_can_be_named(tmp_path: Path) -> None:
    with EdgeDb(tmp_path / "e.db") as db:
        db.profiles.import_paths([profile_copy(tmp_path, name="v", version="1.10.0"),
                                  profile_copy(tmp_path, name="v", version="1.9.2", edit=pylon_v2)])
        assert [p.version for p in db.profiles.versions("v")] == ["1.9.2", "1.10.0"]
        assert db.profiles.resolve("v").version == "1.10.0"
        assert "StateOfHealth" in db.profiles.resolve("v@1.9.2").model.channels
        with pytest.raises(ProfileError, match=re.escape("profile v: no version 3.0; stored versions: 1.9.2, 1.10.0")):
            db.profiles.resolve("v@3.0")
        assert db.profiles.resolve("pylon-lv").path is not None  # not stored: the shipped one


# -- the profiles commands -------------------------------------------------------------------------


def test_profiles_list_show_export_and_diff(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    v1 = profile_copy(tmp_path, version="1.1.0")
    v2 = profile_copy(tmp_path, version="1.2.0", edit=pylon_v2)
    assert invoke(db, "profiles", "import", str(v2)).exit_code == 0
    listing = invoke(db, "profiles", "list").stdout.splitlines()
    pylon = [line.split()[:4] for line in listing if line.startswith("pylon-lv ")]
    assert pylon == [["pylon-lv", "1.1.0", "dbc", "shipped"], ["pylon-lv", "1.2.0", "dbc", "stored"]]
    rows = json.loads(invoke(db, "profiles", "list", "--json").stdout)
    assert [r["origin"] for r in rows if r["name"] == "pylon-lv"] == [["shipped"], ["stored"]]

    shown = invoke(db, "profiles", "show", "pylon-lv").stdout
    assert shown.startswith("pylon-lv 1.2.0 (dbc)") and "StateOfHealth" in shown
    assert f"from: stored in {db}" in shown
    old = invoke(db, "profiles", "show", "pylon-lv", "--version", "1.1.0").stdout
    assert old.startswith("pylon-lv 1.1.0 (dbc)") and "from: shipped" in old
    r = invoke(db, "profiles", "show", "pylon-lv", "--version", "7.0")
    assert r.exit_code == 2 and "no version 7.0; known versions: 1.2.0, 1.1.0 (shipped)" in r.stderr

    out = tmp_path / "exported"
    r = invoke(db, "profiles", "export", "pylon-lv", str(out))
    assert r.exit_code == 0, r.output
    exported = json.loads((out / "pylon-lv.json").read_text(encoding="utf-8"))
    assert exported["version"] == "1.2.0" and exported["channels"]["Soc"]["scale"] == 0.5
    assert (out / exported["source"]["dbc"]).read_text(encoding="utf-8") == (
        tmp_path / json.loads(v2.read_text())["source"]["dbc"]).read_text(encoding="utf-8")
    assert invoke(db, "profiles", "validate", str(out / "pylon-lv.json")).stdout.startswith("ok: pylon-lv 1.2.0")

    assert invoke(db, "profiles", "import", str(v1)).exit_code == 0  # 1.1.0 stored too: it wins over the shipped
    d = invoke(db, "profiles", "diff", "pylon-lv", "1.1.0", "1.2.0")
    assert d.exit_code == 0
    dbc = json.loads(v2.read_text())["source"]["dbc"]
    assert d.stdout.splitlines() == [
        "pylon-lv 1.1.0 -> 1.2.0: 4 change(s)",
        f'~ profile.settings: source "{json.loads(v1.read_text())["source"]["dbc"]}" -> "{dbc}"',
        "- channels.Soh",
        "+ channels.StateOfHealth",
        "~ channels.Soc: scale 1.0 -> 0.5",
    ]
    changes = json.loads(invoke(db, "profiles", "diff", "pylon-lv", "1.1.0", "1.2.0", "--json").stdout)
    assert changes[3] == {"section": "channels", "name": "Soc", "kind": "changed",
                          "fields": [{"field": "scale", "old": 1.0, "new": 0.5}]}


def test_diff_reports_message_changes(tmp_path: Path) -> None:
    db = tmp_path / "e.db"
    moved = profile_copy(tmp_path, version="2.0.0", dbc_edit=lambda t: t.replace("BO_ 889 PYLON_Capacity: 2",
                                                                                  "BO_ 890 PYLON_Capacity: 4"),
                         edit=lambda d: d["messages"]["PYLON_Capacity"].update(period_ms=2000))
    assert invoke(db, "profiles", "import", str(moved)).exit_code == 0
    lines = invoke(db, "profiles", "diff", "pylon-lv", "1.1.0", "2.0.0").stdout.splitlines()
    assert lines[1:] == [
        f"~ profile.settings: source \"pylon_lv.dbc\" -> \"{json.loads(moved.read_text())['source']['dbc']}\"",
        "~ messages.PYLON_Capacity: dlc 2 -> 4, id \"0x379\" -> \"0x37A\", settings.period_ms 1000.0 -> 2000.0",
    ]


# -- the site in the database ----------------------------------------------------------------------

SITE = """
[site]
org = "acme"
name = "plant-9"

[j1939]
edge_address = 0x27

[[bus]]
name = "can0"
interface = "virtual"
channel = "db-{tag}-0"
bitrate = 250000
receive_own_messages = false

[[bus]]
name = "can1"
interface = "virtual"
channel = "db-{tag}-1"

[[device]]
name = "bms_0"
bus = "can0"
profile = "{profile}"

[[device]]
name = "bms_1"
bus = "can1"
profile = "pylon-lv"
id_offset = 0x20

[[device]]
name = "hv_0"
bus = "can1"
profile = "j1939-hvess"
j1939_name = 0x9000A0005CA01F3A
"""


def test_site_import_and_export_round_trip(tmp_path: Path) -> None:
    custom = profile_copy(tmp_path, name="custom-lv", version="3.1")
    site_file = tmp_path / "site.toml"
    site_file.write_text(SITE.format(tag=uuid.uuid4().hex[:8], profile=custom.name), encoding="utf-8")
    db = tmp_path / "e.db"
    r = invoke(db, "site", "import", str(site_file))
    assert r.exit_code == 0, r.output
    pylon = load_profile("pylon-lv").version
    assert r.stdout.splitlines() == [  # each device pinned to what the file names (issue 13)
        f"imported {site_file}: 2 buses, 3 devices; 3 profile version(s) stored into {db}",
        "  bms_0: runs custom-lv 3.1 (pinned: custom-lv@3.1; new device)",
        f"  bms_1: runs pylon-lv {pylon} (pinned: pylon-lv@{pylon}; new device)",
        "  hv_0: runs j1939-hvess 1.0.0 (pinned: j1939-hvess@1.0.0; new device)"]
    out = tmp_path / "exported.toml"
    assert invoke(db, "site", "export", str(out)).exit_code == 0
    again, original = load_site(out), load_site(site_file)
    assert (again.org, again.name, again.extra) == ("acme", "plant-9", {"j1939": {"edge_address": 0x27}})
    assert again.buses == original.buses
    assert [d.profile for d in again.devices] == ["custom-lv@3.1", f"pylon-lv@{pylon}", "j1939-hvess@1.0.0"]
    assert [(d.name, d.bus, d.id_offset, d.j1939_name) for d in again.devices] == [
        (d.name, d.bus, d.id_offset, d.j1939_name) for d in original.devices]
    assert "j1939_name = 0x9000A0005CA01F3A" in invoke(db, "site", "export").stdout
    r = invoke(db, "devices", "list", "--json")
    assert [(d["name"], d["profile"], d["version"], d["found_by"]) for d in json.loads(r.stdout)] == [
        ("bms_0", "custom-lv@3.1", "3.1", "site import"), ("bms_1", f"pylon-lv@{pylon}", pylon, "site import"),
        ("hv_0", "j1939-hvess@1.0.0", "1.0.0", "site import")]


def test_a_bad_site_import_stores_nothing(tmp_path: Path) -> None:
    site_file = tmp_path / "site.toml"
    text = SITE.format(tag="x", profile="pylon-lv").replace("id_offset = 0x20", "")
    site_file.write_text(text.replace('name = "bms_1"\nbus = "can1"', 'name = "bms_1"\nbus = "can0"'), encoding="utf-8")
    db = tmp_path / "e.db"
    r = invoke(db, "site", "import", str(site_file))
    assert r.exit_code == 2
    assert "found frame 0x351 (received), already used by device 'bms_0'" in r.stderr
    with EdgeDb(db) as edge_db:
        assert edge_db.site.devices() == [] and edge_db.profiles.all() == []


def test_the_edge_starts_from_the_database_alone_with_the_profile_files_gone(tmp_path: Path) -> None:
    folder = tmp_path / "src"
    folder.mkdir()
    custom = profile_copy(folder, name="offline-lv", version="1.2")
    site_file = tmp_path / "site.toml"
    site_file.write_text(SITE.format(tag=uuid.uuid4().hex[:8], profile=custom), encoding="utf-8")
    db = tmp_path / "e.db"
    assert invoke(db, "site", "import", str(site_file)).exit_code == 0
    shutil.rmtree(folder)
    site_file.unlink()
    stored = load_stored_site(db)
    assert stored.profiles["bms_0"].name == "offline-lv" and stored.profiles["bms_0"].path is None
    with Simulation(stored, devices=["bms_0", "bms_1"]), Edge.from_db(db) as edge:
        assert edge.profiles["bms_0"].version == "1.2"
        soc = edge.read("bms_0/Soc", timeout=10.0).value
        assert isinstance(soc, int) and 0 <= soc <= 100
        r = invoke(db, "read", "bms_1/Soc", "bms_0/Soh", "--json", "--timeout", "10")
    assert r.exit_code == 0, r.output
    doc = json.loads(r.stdout)
    assert doc["bms_1/Soc"]["unit"] == "%" and doc["bms_0/Soh"]["quality"] == "ok"


def test_without_site_or_devices_commands_still_ask_for_a_site(tmp_path: Path) -> None:
    r = invoke(tmp_path / "none.db", "read", "bms_0/Soc")
    assert r.exit_code == 2 and r.stderr == "error: no site file: give --site FILE (or set EMSBMS_SITE)\n"
    assert not (tmp_path / "none.db").exists()  # a read never creates the database
