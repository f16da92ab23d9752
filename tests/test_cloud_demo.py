"""`emsbms cloud demo` as a process: it comes up with a site online and live channels, serves the dashboard,
and on SIGINT stops every process it started and removes its folder; without Mosquitto or PostgreSQL it
names the Debian packages and exits 2 having started nothing.

The running test skips without Mosquitto or PostgreSQL, unless EMSBMS_REQUIRE_MOSQUITTO=1 or
EMSBMS_REQUIRE_POSTGRES=1 (CI), where it fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from emsbms.demo import available_profiles, demo_tables
from emsbms.uplink.broker import free_port
from tests.cloud_fixtures import require_postgres
from tests.conftest import wait
from tests.test_uplink_mqtt import emsbms_command, require_mosquitto


class Demo:
    """`emsbms cloud demo --json` running; its stdout lines and stderr gathered by threads."""

    def __init__(self, port: int, env: dict[str, str] | None = None) -> None:
        self.proc = subprocess.Popen([*emsbms_command(), "cloud", "demo", "--json", "--listen", f"127.0.0.1:{port}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        self.out: list[str] = []
        self.err: list[str] = []
        self.threads = [threading.Thread(target=self._read, args=(s, lines), daemon=True)
                        for s, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.threads:
            t.start()

    @staticmethod
    def _read(stream: Any, lines: list[str]) -> None:
        for line in stream:
            lines.append(line)

    def info(self) -> dict[str, Any] | None:
        return json.loads(self.out[0]) if self.out else None

    def stderr(self) -> str:
        return "".join(self.err)


def ppid_of(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> set[int]:
    """Every process below `root` (from /proc)."""
    parents = {int(p.name): ppid_of(int(p.name)) for p in Path("/proc").iterdir() if p.name.isdigit()}
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting for its parent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def running_demo() -> Iterator[tuple[Demo, int]]:
    require_mosquitto()
    require_postgres()
    port = free_port()
    demo = Demo(port)
    try:
        yield demo, port
    finally:
        if demo.proc.poll() is None:
            demo.proc.send_signal(signal.SIGTERM)
            try:
                demo.proc.wait(120)
            except subprocess.TimeoutExpired:
                demo.proc.kill()
                demo.proc.wait()


@pytest.mark.slow
def test_the_demo_serves_a_live_site_and_sigint_stops_everything_it_started(running_demo: tuple[Demo, int]) -> None:
    demo, port = running_demo
    assert wait(lambda: demo.info() is not None or demo.proc.poll() is not None, 300), demo.stderr()
    info = demo.info()
    assert info is not None, demo.stderr()
    assert (info["url"], info["org"], info["site"]) == (f"http://127.0.0.1:{port}/", "demo", "demo-1")
    assert sorted(info["pids"]) == ["mosquitto", "postgres", "run", "serve", "simulate"]
    folder = Path(info["folder"])
    assert folder.is_dir() and folder.name.startswith("emsbms-cloud-demo-")
    for name in ("PostgreSQL on 127.0.0.1:", "Mosquitto on mqtt://127.0.0.1:", "emsbms cloud serve on",
                 "organisation 'demo' and site 'demo-1'", "emsbms simulate:", "emsbms run:"):
        assert f"cloud demo: {name}" in demo.stderr()

    auth = {"Authorization": f"Bearer {info['token']}"}
    with httpx.Client(base_url=info["url"], timeout=30) as http:
        def sites() -> list[dict[str, Any]]:
            r = http.get("/api/v1/orgs/demo/sites", headers=auth)
            assert r.status_code == 200, r.text
            return list(r.json()["sites"])
        assert wait(lambda: [(s["site"], s["online"]) for s in sites()] == [("demo-1", True)], 60), sites()
        assert http.get("/api/v1/orgs/demo/sites").status_code == 401  # the token is needed

        devices = {d["name"] for d in demo_tables(available_profiles())["device"]}
        assert {"acme_hv", "pylon_lv", "pylon_lv_2"} <= devices

        def channels() -> dict[str, Any]:
            r = http.get("/api/v1/orgs/demo/sites/demo-1/channels", headers=auth)
            assert r.status_code == 200, r.text
            return dict(r.json())

        def every_device_reports() -> bool:
            now = channels()
            return all(isinstance(now.get(f"{d}/Soc", {}).get("value"), float | int)
                       and now[f"{d}/Soc"]["quality"] == "ok" for d in devices)
        assert wait(every_device_reports, 120), channels()
        soc = channels()["pylon_lv/Soc"]
        assert soc["unit"] == "%" and 0 <= soc["value"] <= 100, soc

        page = http.get("/")
        assert page.status_code == 200 and "<title>emsbms dashboard</title>" in page.text

    postmaster = info["pids"]["postgres"]
    cluster = Path(Path(f"/proc/{postmaster}/cmdline").read_text(encoding="utf-8").split("\0")[2]).parent
    assert cluster.name.startswith("emsbms-pg-") and cluster.is_dir(), cluster
    started = descendants(demo.proc.pid) | {postmaster} | descendants(postmaster)
    assert set(info["pids"].values()) <= started
    assert len(descendants(postmaster)) >= 3  # checkpointer, walwriter, ... and the service's connections

    demo.proc.send_signal(signal.SIGINT)
    assert demo.proc.wait(120) == 0, demo.stderr()
    assert wait(lambda: not [pid for pid in started if alive(pid)], 60), [pid for pid in started if alive(pid)]
    assert not folder.exists() and not cluster.exists()
    for t in demo.threads:
        t.join(10)
    assert f"cloud demo: removed {folder}" in demo.stderr()


def test_missing_programs_are_named_with_their_debian_packages_and_nothing_starts(tmp_path: Path) -> None:
    empty = tmp_path / "bin"
    empty.mkdir()
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "PATH": str(empty), "TMPDIR": str(scratch),
           "EMSBMS_MOSQUITTO": str(empty / "mosquitto"), "EMSBMS_POSTGRES_BIN": str(empty)}
    done = subprocess.run([*emsbms_command(), "cloud", "demo"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stdout == ""
    assert "Install it with: apt-get install mosquitto mosquitto-clients postgresql-15 (nothing was started)" \
        in done.stderr, done.stderr
    assert "mosquitto_ctrl (on PATH)" in done.stderr and "PostgreSQL's initdb" in done.stderr
    assert list(scratch.iterdir()) == []  # no temporary folder


def test_without_postgresql_only_its_package_is_named(tmp_path: Path) -> None:
    require_mosquitto()
    env = {**os.environ, "EMSBMS_POSTGRES_BIN": str(tmp_path), "TMPDIR": str(tmp_path)}
    done = subprocess.run([*emsbms_command(), "cloud", "demo"], capture_output=True, text=True, env=env, timeout=120)
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert done.stderr == ("error: the cloud demo needs what is not installed: PostgreSQL's initdb"
                           " ($EMSBMS_POSTGRES_BIN or /usr/lib/postgresql/*/bin). Install it with: apt-get install"
                           " postgresql-15 (nothing was started)\n")
    assert list(tmp_path.iterdir()) == []


def test_a_listen_address_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    require_mosquitto()
    require_postgres()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "TMPDIR": str(tmp_path)}
        done = subprocess.run([*emsbms_command(), "cloud", "demo", "--listen", f"127.0.0.1:{port}"],
                              capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"error: --listen: expected a free address, found 127.0.0.1:{port} in use"), \
        done.stderr
    assert list(tmp_path.iterdir()) == []
