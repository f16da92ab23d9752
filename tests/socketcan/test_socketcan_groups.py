"""SocketCAN tier: bus groups on 2 vcan buses with `cangen` at full rate, grouped against one process.

`cangen -g 0` sends as fast as the kernel takes frames. The receive buffers are made large enough
for every frame first (net.core.rmem_default), so the kernel drops nothing and each mode must
take every frame; how fast each mode drained them is printed (figures in docs/performance.md).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from emsbms.edge import Edge
from emsbms.site import parse_site
from emsbms.types import Quality, Reading
from tests.socketcan.support import Vcans

pytestmark = pytest.mark.socketcan

FRAMES = 5000  # per bus
WAIT_S = 300.0  # Python under TCG is slow; the condition is exact, the time only generous
RMEM = Path("/proc/sys/net/core/rmem_default")


@pytest.fixture
def big_buffers() -> Iterator[None]:
    old = RMEM.read_text(encoding="ascii")
    RMEM.write_text("67108864\n", encoding="ascii")  # 64 MiB: every frame of the test fits
    try:
        yield
    finally:
        RMEM.write_text(old, encoding="ascii")


def _counter(counts: dict[str, int], last: dict[str, float], lock: threading.Lock) -> Callable[[str, Reading], None]:
    def on_soc(address: str, reading: Reading) -> None:
        if reading.quality is Quality.OK:
            with lock:
                counts[address] = counts.get(address, 0) + 1
                last[address] = time.monotonic()

    return on_soc


def _run(ifaces: list[str], workers: str) -> tuple[dict[str, int], float, dict[str, object]]:
    site = parse_site({
        "site": {"org": "test", "name": "groups", "workers": workers},
        "bus": [{"name": f"can{i}", "interface": "socketcan", "channel": iface, "group": f"g{i + 1}"}
                for i, iface in enumerate(ifaces)],
        "device": [{"name": f"bms_{i}", "bus": f"can{i}", "profile": "pylon-lv"} for i in range(len(ifaces))],
    })
    counts: dict[str, int] = {}
    last: dict[str, float] = {}
    lock = threading.Lock()
    with Edge(site) as edge:
        assert (edge.pool is None) == (workers == "off")
        edge.subscribe("*/Soc", _counter(counts, last, lock))
        t0 = time.monotonic()
        gens = [subprocess.Popen(["cangen", iface, "-g", "0", "-n", str(FRAMES), "-I", "355", "-L", "8", "-D", "i"])
                for iface in ifaces]
        for g in gens:
            assert g.wait(WAIT_S) == 0
        deadline = time.monotonic() + WAIT_S
        while time.monotonic() < deadline and sum(counts.values()) < FRAMES * len(ifaces):
            time.sleep(0.05)
        snap = edge.snapshot()
        health = {f"can{i}/{k}": snap.value(f"can{i}/{k}") for i in range(len(ifaces)) for k in ("Dropped",)}
    seconds = max(last.values()) - t0 if last else 0.0
    return counts, seconds, health


def test_two_full_rate_vcan_buses_grouped_and_in_one_process(vcans: Vcans, big_buffers: None) -> None:
    ifaces = vcans.add(2)
    figures = {}
    for workers in ("off", "on"):
        counts, seconds, health = _run(ifaces, workers)
        assert counts == {"bms_0/Soc": FRAMES, "bms_1/Soc": FRAMES}, workers
        assert set(health.values()) == {0}, health
        figures[workers] = round(2 * FRAMES / seconds) if seconds else 0
    print(f"\nvcan x2, cangen -g 0, {FRAMES} frames a bus: one process {figures['off']} frames/s,"
          f" 2 workers {figures['on']} frames/s")
