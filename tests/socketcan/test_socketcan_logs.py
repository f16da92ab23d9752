"""SocketCAN tier: a `candump -l` capture decoded by `emsbms decode`; `emsbms log record` beside candump.

Values are computed by hand from PROTOCOLS.md (Pylon LV 0x356: voltage s16 0.01 V, current s16
0.1 A, temperature s16 0.1 degC; 0x355: SoC u16 %, SoH u16 %), not from the DBC.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from emsbms.cli import app
from emsbms.diag.logs import read_log
from tests.socketcan.support import Background, Candump, Vcans, parse_candump_line, sh, write_site

pytestmark = pytest.mark.socketcan

# (bus, cansend frame, values of the device on that bus)
FRAMES: list[tuple[str, str, dict[str, float]]] = [
    # 0x145C = 5212 x 0.01 V; 0xFF83 = -125 x 0.1 A; 0x00EA = 234 x 0.1 degC
    ("lv", "356#5C1483FFEA00", {"Voltage": 52.12, "Current": -12.5, "Temperature": 23.4}),
    # 0x146F = 5231 x 0.01 V; 0x0019 = 25 x 0.1 A; 0x00F4 = 244 x 0.1 degC
    ("hv", "356#6F141900F400", {"Voltage": 52.31, "Current": 2.5, "Temperature": 24.4}),
    ("lv", "355#4D006200", {"Soc": 77, "Soh": 98}),  # 0x4D = 77 %, 0x62 = 98 %
    ("hv", "355#40005F00", {"Soc": 64, "Soh": 95}),  # 0x40 = 64 %, 0x5F = 95 %
]
DEVICE = {"lv": "bms_0", "hv": "bms_1"}


def two_pylons(tmp_path: Path, vcans: Vcans) -> tuple[dict[str, str], Path]:
    """Two vcan buses, a pylon-lv unit on each: identical IDs, only the bus tells them apart."""
    lv, hv = vcans.add(2)
    ifaces = {"lv": lv, "hv": hv}
    site = write_site(tmp_path / "logs.toml", ifaces, [{"name": DEVICE[b], "bus": b, "profile": "pylon-lv"}
                                                        for b in ifaces])
    return ifaces, site


def test_decode_a_capture_written_by_candump_l(tmp_path: Path, vcans: Vcans) -> None:
    ifaces, site = two_pylons(tmp_path, vcans)
    capture = tmp_path / "capture"
    capture.mkdir()
    # candump -l writes candump-<date>_<time>.log into its working directory, as in the field
    dump = subprocess.Popen(["candump", "-l", *ifaces.values()], cwd=capture, stderr=subprocess.PIPE)
    time.sleep(0.3)  # let it bind before anything is sent
    for bus, frame, _ in FRAMES:
        sh("cansend", ifaces[bus], frame)
    time.sleep(0.3)
    dump.send_signal(signal.SIGINT)  # candump flushes and closes the file on SIGINT
    dump.wait(30)
    (log,) = capture.glob("candump-*.log")
    dumped = [parse_candump_line(line) for line in log.read_text().splitlines() if line.strip()]
    assert [(d.iface, f"{d.can_id:03X}#{d.data.hex().upper()}") for d in dumped] == [
        (ifaces[bus], frame) for bus, frame, _ in FRAMES]

    # in this process: a second interpreter costs ~20 s under TCG, and the command is the same
    done = CliRunner().invoke(app, ["decode", str(log), "--site", str(site), "--format", "jsonl"])

    assert done.exit_code == 0, done.output
    rows: list[dict[str, Any]] = [json.loads(x) for x in done.stdout.splitlines()]
    for (bus, _, values), frame in zip(FRAMES, dumped, strict=True):
        for name, value in values.items():
            got = [r for r in rows if r["address"] == f"{DEVICE[bus]}/{name}"]
            assert len(got) == 1, (name, got)
            assert got[0]["value"] == pytest.approx(value, abs=1e-9), name
            assert got[0]["timestamp_us"] == frame.timestamp_us, name  # candump's kernel timestamp, to the µs
            assert got[0]["quality"] == "ok"
    assert "4 frames (lv 2, hv 2): 4 decoded, 0 unknown IDs, 0 bad" in done.stderr


def test_record_keeps_kernel_timestamps_and_buses(
    tmp_path: Path, vcans: Vcans, candump: Callable[[list[str]], Candump]
) -> None:
    ifaces, site = two_pylons(tmp_path, vcans)
    out = tmp_path / "recorded.log"
    dump = candump(list(ifaces.values()))
    record = Background("--site", str(site), "log", "record", str(out))
    try:
        record.wait_for_line("record:")
        for bus, frame, _ in FRAMES:
            sh("cansend", ifaces[bus], frame)
        frames = dump.stop()
    finally:
        code = record.stop()  # SIGINT right away: what is still in the socket buffers must be written too
    assert code == 0, record.stderr
    assert any(line.startswith("record: 4 frames written") for line in record.stderr), record.stderr

    got = list(read_log(out))
    bus_of = {iface: bus for bus, iface in ifaces.items()}
    assert [(m.channel, m.arbitration_id, m.data.hex()) for m in got] == [
        (bus_of[f.iface], f.can_id, f.data.hex()) for f in frames]
    for m, f in zip(got, frames, strict=True):
        # the same kernel timestamp: candump truncates to the µs, python-can rounds its ns value
        assert abs(round(m.timestamp * 1_000_000) - f.timestamp_us) <= 2
