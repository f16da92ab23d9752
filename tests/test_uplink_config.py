"""Configuration from the cloud as desired state: validated whole, stored, switched hot, all or nothing.

A real Edge started from a real edge database, on a virtual bus; a separate node sends the frames.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.db import EdgeDb, load_stored_site
from emsbms.edge import Edge
from emsbms.uplink.config import ConfigHandler
from tests.conftest import virtual_site, wait
from tests.test_db import profile_copy, pylon_v2

# 0x355 SoC u16 % = 80, SoH u16 % = 100 (PROTOCOLS.md): Soc reads 80 under pylon-lv 1.0.0, 40 under the 1.1.0 copy
PYLON_SOC = can.Message(arbitration_id=0x355, data=bytes([80, 0, 100, 0, 0, 0]), is_extended_id=False)


def now() -> int:
    return time.time_ns() // 1000


def profile_item(path: Path) -> dict[str, Any]:
    """A profile as a config payload carries it: its JSON and its DBC's text."""
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {"document": doc, "source": (path.parent / doc["source"]["dbc"]).read_text(encoding="utf-8")}


class Rig:
    def __init__(self, tmp_path: Path, edge: Edge, db: Path, tables: dict[str, Any], v2: Path) -> None:
        self.tmp_path, self.edge, self.db, self.tables, self.v2 = tmp_path, edge, db, tables, v2

    def payload(self, version: str, devices: list[dict[str, Any]] | None = None,
                profiles: list[dict[str, Any]] | None = None, **site: Any) -> bytes:
        body = {"version": version,
                "site": {"bus": self.tables["bus"], "device": devices or self.tables["device"], **site},
                "profiles": [profile_item(self.v2)] if profiles is None else profiles}
        return json.dumps(body).encode()

    def soc(self) -> object:
        r = self.edge.registry.get("bms_0/Soc")
        return None if r is None else r.value


@contextmanager
def rig(tmp_path: Path, *others: dict[str, Any]) -> Iterator[Rig]:
    v1 = profile_copy(tmp_path, version="1.0.0")
    v2 = profile_copy(tmp_path, version="1.1.0", edit=pylon_v2)
    db = tmp_path / "edge.db"
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv@1.0.0"}, *others])
    with EdgeDb(db) as store:
        store.profiles.import_paths([v1])
        store.site.replace(site)
        tables = store.site.tables()
    stop = threading.Event()

    def send(bus: can.BusABC) -> None:
        while not stop.wait(0.01):
            bus.send(PYLON_SOC)

    with Edge.from_db(db) as edge, can.Bus(interface="virtual", channel=site.bus("can0").channel) as bus:
        sender = threading.Thread(target=send, args=(bus,))
        sender.start()
        try:
            r = Rig(tmp_path, edge, db, tables, v2)
            assert wait(lambda: r.soc() == 80)
            yield r
        finally:
            stop.set()
            sender.join()


def status(raw: bytes) -> dict[str, Any]:
    out = json.loads(raw)
    assert isinstance(out, dict)
    return out


def stored_ref(db: Path) -> str:
    return load_stored_site(db).devices[0].profile


def test_a_profile_version_switch_is_applied_hot_and_stored_for_an_offline_restart(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        handler = ConfigHandler(r.edge, r.db)
        first = status(handler.handle(r.payload("7", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"}]), now()))
        assert wait(lambda: r.soc() == 40.0)  # a reading under the new profile (Soc scaled by 0.5)
        version = r.edge.profiles["bms_0"].version
    assert first == {"version": "7", "status": "applied", "switched": ["bms_0"],
                     "detail": "version 7 applied: bms_0 -> pylon-lv 1.1.0"}
    assert version == "1.1.0"
    assert stored_ref(r.db) == "pylon-lv@1.1.0"  # a restart without the broker runs it
    assert handler.applied() is not None and handler.applied()[0] == "7"  # type: ignore[index]
    restarted = Edge.from_db(r.db)
    assert restarted.profiles["bms_0"].version == "1.1.0"
    assert restarted.lock is not None
    restarted.lock.release()


def test_the_same_version_again_applies_nothing(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        payload = r.payload("7", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"}])
        handler = ConfigHandler(r.edge, r.db)
        status(handler.handle(payload, now()))
        adapter = r.edge.adapters["bms_0"]
        again = status(handler.handle(payload, now()))  # a reconnect brings the retained message again
        after_restart = ConfigHandler(r.edge, r.db)  # the uplink restarted: the applied version is in the database
        third = status(after_restart.handle(payload, now()))
        same_adapter = r.edge.adapters["bms_0"] is adapter
    assert handler.activations == 1 and after_restart.activations == 0
    assert same_adapter
    assert again == third == {"version": "7", "status": "applied", "switched": [],
                              "detail": "version 7 is applied already; nothing changed"}


def _bad_profile(r: Rig) -> bytes:
    item = profile_item(r.v2)
    item["document"]["channels"]["Soc"]["scale"] = "half"
    return r.payload("8", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"}], [item])


def _colliding(r: Rig) -> bytes:
    twin = {**r.tables["device"][0], "name": "bms_1", "profile": "pylon-lv@1.1.0"}
    return r.payload("8", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"}, twin])


BAD: list[tuple[str, Callable[[Rig], bytes], str]] = [
    ("not json", lambda r: b"{version: 8", "config: expected a JSON object, found text that is not JSON"),
    ("no version", lambda r: b'{"site": {}}', "config: key 'version': expected a non-empty string, found nothing"),
    ("bad profile", _bad_profile, "config 8: profiles[0]: profile pylon-lv: channels.Soc.scale: Input should be a"
     " valid number, unable to parse string as a number; found 'half'"),
    ("unknown device key",
     lambda r: r.payload("8", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0", "colour": "red"}]),
     "config 8: [[device]] #1 'bms_0': unknown key 'colour'"),
    ("unknown profile version", lambda r: r.payload(
        "8", [{**r.tables["device"][0], "profile": "pylon-lv@9.0.0"}], []),
     "config 8: [[device]] #1 'bms_0': key 'profile': profile pylon-lv: no version 9.0.0"),
    ("colliding ids", _colliding, "config 8: [[device]] #2 'bms_1': key 'bus' expected IDs no other device on bus"
     " 'can0' uses, found frame 0x351 (received), already used by device 'bms_0'"),
    ("other site", lambda r: r.payload("8", site={"org": "other", "name": "x"}),
     "config 8: [site]: expected org 'test' and name 'test' (this edge), found"),
]


@pytest.mark.parametrize(("case", "make", "detail"), BAD, ids=[b[0] for b in BAD])
def test_a_bad_config_is_refused_with_its_reason_and_the_running_one_stays(
    tmp_path: Path, case: str, make: Callable[[Rig], bytes], detail: str
) -> None:
    with rig(tmp_path) as r:
        handler = ConfigHandler(r.edge, r.db)
        adapter = r.edge.adapters["bms_0"]
        out = status(handler.handle(make(r), now()))
        still = r.soc() == 80 and r.edge.adapters["bms_0"] is adapter
    assert out["status"] == "failed"
    assert out["detail"].startswith(detail), out["detail"]
    assert out["detail"].endswith("; the running configuration stays")
    assert still and handler.activations == 0 and handler.applied() is None
    assert stored_ref(r.db) == "pylon-lv@1.0.0"
    with EdgeDb(r.db) as store:
        assert [p.version for p in store.profiles.versions("pylon-lv")] == ["1.0.0"]


def test_a_version_applied_with_other_content_is_refused(tmp_path: Path) -> None:
    with rig(tmp_path) as r:
        handler = ConfigHandler(r.edge, r.db)
        status(handler.handle(r.payload("7", [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"}]), now()))
        back = status(handler.handle(r.payload("7", [{**r.tables["device"][0], "profile": "pylon-lv@1.0.0"}]), now()))
        version = r.edge.profiles["bms_0"].version
    assert back["status"] == "failed"
    assert "version 7 is applied already with other content; a changed configuration needs a new version" in back[
        "detail"]
    assert version == "1.1.0" and handler.activations == 1


def test_an_activation_that_fails_midway_switches_back_what_it_switched_and_stores_nothing(tmp_path: Path) -> None:
    # bms_0 switches first (1.0.0 -> 1.1.0); hv_0 cannot move from dbc to j1939 in place: bms_0 goes back
    with rig(tmp_path, {"name": "hv_0", "bus": "can0", "profile": "acme-hv", "source_address": 0x80}) as r:
        handler = ConfigHandler(r.edge, r.db)
        devices = [{**r.tables["device"][0], "profile": "pylon-lv@1.1.0"},
                   {**r.tables["device"][1], "profile": "j1939-hvess"}]
        out = status(handler.handle(r.payload("2", devices), now()))
        versions = {n: p.version for n, p in r.edge.profiles.items()}
        after = now()
        reading = r.edge.read("bms_0/Soc", timeout=5.0, after_us=after)  # from a frame decoded after the refusal
    assert out["status"] == "failed" and out["switched"] == []
    assert out["detail"].startswith("config 2: device hv_0: cannot switch from protocol dbc to j1939")
    assert versions == {"bms_0": "1.0.0", "hv_0": "1.0.0"}
    assert reading.value == 80  # decoded under 1.0.0 again (1.1.0 would give 40)
    assert handler.activations == 0 and handler.applied() is None
    assert stored_ref(r.db) == "pylon-lv@1.0.0"
