"""Fixtures of the SocketCAN tier (tests marked `socketcan`): vcan interfaces, can-utils, a simulator.

These tests need a Linux kernel with SocketCAN and root (to create vcan interfaces). On a machine
without AF_CAN they skip; tests/test_socketcan_tier.py runs them inside the VM of tools/vm/run.py.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.socketcan.support import (
    PYLON_NAMES,
    Background,
    Candump,
    CansendLoop,
    Simulation,
    Vcans,
    socketcan_unavailable,
    write_site,
)


@pytest.fixture(autouse=True)
def _needs_socketcan() -> None:
    reason = socketcan_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture
def vcans() -> Iterator[Vcans]:
    v = Vcans()
    yield v
    v.remove_all()


@pytest.fixture
def candump(tmp_path: Path) -> Iterator[Callable[[list[str]], Candump]]:
    started: list[Candump] = []

    def start(ifaces: list[str]) -> Candump:
        dump = Candump(tmp_path / f"candump{len(started)}.log", ifaces)
        started.append(dump)
        return dump

    yield start
    for d in started:
        if d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait()


@pytest.fixture
def cansend_loop() -> Iterator[Callable[..., CansendLoop]]:
    loops: list[CansendLoop] = []

    def start(frames: list[tuple[str, str]], period_s: float = 0.1) -> CansendLoop:
        loop = CansendLoop(frames, period_s)
        loops.append(loop)
        return loop

    yield start
    for loop in loops:
        if loop.proc.poll() is None:
            loop.stop()


@pytest.fixture(scope="session")
def simulation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Simulation]:
    reason = socketcan_unavailable()
    if reason:
        pytest.skip(reason)
    v = Vcans()
    try:
        hv, *pylons = v.add(4)
        buses = {"hv": hv, **{f"bus_{name}": iface for name, iface in zip(PYLON_NAMES, pylons, strict=True)}}
        devices: list[dict[str, Any]] = [{"name": "hv_0", "bus": "hv", "profile": "acme-hv"}]
        devices += [{"name": name, "bus": f"bus_{name}", "profile": "pylon-lv"} for name in PYLON_NAMES]
        site = write_site(tmp_path_factory.mktemp("sim") / "sim.toml", buses, devices)
        process = Background("--site", str(site), "simulate")
        try:
            process.wait_for_line("simulate:")
            yield Simulation(hv, pylons, PYLON_NAMES, process)
        finally:
            process.stop()
    finally:
        v.remove_all()
