"""Log record, replay and offline decode: round trips through every format, replay timing, SIGTERM.

Frame values are computed by hand from PROTOCOLS.md (Pylon LV, little-endian, raw x scale), not
from the DBC: 0x356 = voltage s16 0.01 V, current s16 0.1 A, temperature s16 0.1 degC;
0x355 = SoC u16 %, SoH u16 %.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import can
import pytest
from typer.testing import CliRunner

from emsbms.cli import app
from emsbms.demo import site_toml
from emsbms.diag.logs import (
    FORMATS,
    BusMap,
    LogFileError,
    OfflineDecoder,
    Recorder,
    decode_to_text,
    read_log,
)
from emsbms.errors import ConfigError
from emsbms.site import Site, parse_site

runner = CliRunner()

T0_US = 1_700_000_000_123_456  # 2023-11-14: an old capture, far from the wall clock
LV_356 = "5C1483FFEA00"  # 0x145C = 5212 -> 52.12 V; 0xFF83 = -125 -> -12.5 A; 0x00EA = 234 -> 23.4 degC
HV_356 = "6F141900F400"  # 0x146F = 5231 -> 52.31 V; 0x0019 = 25 -> 2.5 A; 0x00F4 = 244 -> 24.4 degC
LV_355 = "4D006200"  # SoC 0x4D = 77 %, SoH 0x62 = 98 %
HV_355 = "40005F00"  # SoC 0x40 = 64 %, SoH 0x5F = 95 %
LV_VALUES = {"Voltage": 52.12, "Current": -12.5, "Temperature": 23.4, "Soc": 77, "Soh": 98}
HV_VALUES = {"Voltage": 52.31, "Current": 2.5, "Temperature": 24.4, "Soc": 64, "Soh": 95}


def two_bus_tables(tag: str, interface: str = "virtual") -> dict[str, Any]:
    """Buses lv and hv, each with a pylon-lv unit: identical IDs, so only the bus tells them apart."""
    return {
        "site": {"org": "test", "name": "logs"},
        "bus": [{"name": b, "interface": interface, "channel": f"{b}-{tag}"} for b in ("lv", "hv")],
        "device": [{"name": "bms_0", "bus": "lv", "profile": "pylon-lv"},
                   {"name": "bms_1", "bus": "hv", "profile": "pylon-lv"}],
    }


@pytest.fixture
def site_file(tmp_path: Path) -> Path:
    path = tmp_path / "site.toml"
    path.write_text(site_toml(two_bus_tables(uuid.uuid4().hex[:8])), encoding="utf-8")
    return path


@pytest.fixture
def site(site_file: Path) -> Site:
    from emsbms.site import load_site

    return load_site(site_file)


def rows(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def values_of(samples: list[dict[str, Any]], address: str, quality: str = "ok") -> list[tuple[Any, int]]:
    """(value, timestamp_us) of one address; floats rounded to 9 places (52.12 is 52.120000000000005)."""
    return [(round(r["value"], 9) if isinstance(r["value"], float) else r["value"], r["timestamp_us"])
            for r in samples if r["address"] == address and r["quality"] == quality]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# -- record -> file -> decode, every format ----------------------------------------------------------

# (bus, µs after T0, id, extended, remote, data)
SENT: list[tuple[str, int, int, bool, bool, str]] = [
    ("lv", 0, 0x356, False, False, LV_356),
    ("hv", 250, 0x356, False, False, HV_356),
    ("lv", 100_001, 0x355, False, False, LV_355),
    ("hv", 100_502, 0x355, False, False, HV_355),
    ("lv", 200_000, 0x18FF50E5, True, False, "0102030405060708"),  # nobody's: counted unknown
    ("lv", 1_000_017, 0x356, False, False, LV_356),
    ("hv", 1_000_999, 0x351, False, True, ""),  # a remote frame for a pylon ID: counted bad
]


def send_all(site: Site) -> None:
    senders = {b.name: can.Bus(interface="virtual", channel=b.channel, preserve_timestamps=True) for b in site.buses}
    try:
        for bus, dt, can_id, ext, remote, data in SENT:
            senders[bus].send(can.Message(timestamp=(T0_US + dt) / 1e6, arbitration_id=can_id, is_extended_id=ext,
                                          is_remote_frame=remote, data=bytes.fromhex(data),
                                          dlc=0 if remote else len(data) // 2))
    finally:
        for b in senders.values():
            b.shutdown()


@pytest.mark.parametrize("suffix", list(FORMATS))
def test_record_then_decode_round_trips_exactly(suffix: str, site: Site, tmp_path: Path) -> None:
    path = tmp_path / f"capture{suffix}"
    recorder = Recorder(path, site.buses, site.buses).start()
    try:
        send_all(site)
        wait_for(lambda: recorder.stats.total == len(SENT))
    finally:
        stats = recorder.stop()

    assert stats.received == {"lv": 4, "hv": 3}
    remote_kept = suffix != ".trc"  # python-can's trc writer drops remote frames: counted, not lost silently
    assert (stats.written, stats.skipped) == ((7, 0) if remote_kept else (6, 1))
    frames = list(read_log(path))
    expected = [s for s in SENT if remote_kept or not s[4]]
    assert [(round(m.timestamp * 1e6) - T0_US, m.arbitration_id, m.is_extended_id, m.is_remote_frame,
             m.data.hex().upper()) for m in frames] == [(dt, i, e, r, d) for _, dt, i, e, r, d in expected]

    decoder = OfflineDecoder(site)
    samples = [{"address": s.address, "value": s.value, "timestamp_us": s.timestamp_us, "quality": s.quality.value}
               for s in decoder.decode(read_log(path))]
    if suffix == ".csv":  # csv holds no channel: every frame is decoded on the first bus
        assert values_of(samples, "bms_0/Voltage") == [(52.12, T0_US), (52.31, T0_US + 250),
                                                       (52.12, T0_US + 1_000_017)]
        assert values_of(samples, "bms_1/Voltage") == []
        return
    for name, value in LV_VALUES.items():
        assert values_of(samples, f"bms_0/{name}")[0][0] == value, name
    for name, value in HV_VALUES.items():
        assert [v for v, _ in values_of(samples, f"bms_1/{name}")] == [value], name
    assert [t for _, t in values_of(samples, "bms_0/Voltage")] == [T0_US, T0_US + 1_000_017]
    assert values_of(samples, "bms_0/Soc") == [(77, T0_US + 100_001)]
    assert values_of(samples, "bms_1/Soh") == [(95, T0_US + 100_502)]
    assert (decoder.stats.decoded, decoder.stats.unknown, decoder.stats.bad) == (5, 1, 1 if remote_kept else 0)
    assert decoder.stats.per_bus == {"lv": 4, "hv": 3 if remote_kept else 2}


def test_record_only_the_named_bus_and_text_channels(site: Site, tmp_path: Path) -> None:
    path = tmp_path / "lv.log"
    with Recorder(path, [site.bus("lv")], site.buses) as recorder:
        send_all(site)
        wait_for(lambda: recorder.stats.total == 4)
        time.sleep(0.2)  # the hv frames were sent too: none may show up
    lines = path.read_text().splitlines()
    assert recorder.stats.received == {"lv": 4}
    # candump -l format, with the site's bus name as the channel (and python-can's R/T direction)
    assert lines[0] == "(1700000000.123456) lv 356#5C1483FFEA00 R"
    assert lines[2] == "(1700000000.323456) lv 18FF50E5#0102030405060708 R"
    assert len(lines) == 4


# -- decoding a capture as candump -l writes it ----------------------------------------------------

CANDUMP = """\
(1700000000.123456) can0 356#5C1483FFEA00
(1700000000.123789) can1 356#6F141900F400
(1700000000.623456) can0 355#4D006200
(1700000001.123456) can0 356#5D1483FFEA00
"""  # 0x145D = 5213 -> 52.13 V


def test_decode_a_hand_written_candump_log(tmp_path: Path) -> None:
    tables = two_bus_tables(uuid.uuid4().hex[:8])
    for b in tables["bus"]:
        b["name"] = {"lv": "can0", "hv": "can1"}[b["name"]]
    tables["device"][0]["bus"], tables["device"][1]["bus"] = "can0", "can1"
    site = parse_site(tables)
    path = tmp_path / "field.log"
    path.write_text(CANDUMP)

    samples = rows(decode_to_text(path, site))

    assert values_of(samples, "bms_0/Voltage") == [(52.12, 1_700_000_000_123_456), (52.13, 1_700_000_001_123_456)]
    assert values_of(samples, "bms_0/Current") == [(-12.5, 1_700_000_000_123_456), (-12.5, 1_700_000_001_123_456)]
    assert values_of(samples, "bms_0/Soc") == [(77, 1_700_000_000_623_456)]
    assert values_of(samples, "bms_1/Voltage") == [(52.31, 1_700_000_000_123_789)]
    assert values_of(samples, "bms_1/Temperature") == [(24.4, 1_700_000_000_123_789)]
    voltage = next(r for r in samples if r["address"] == "bms_0/Voltage")
    assert voltage == {"address": "bms_0/Voltage", "value": 52.12, "unit": "V",
                       "timestamp_us": 1_700_000_000_123_456, "quality": "ok"}


def test_decode_cli_csv_output_bus_mapping_and_filter(site_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "field.log"
    log.write_text("(1700000000.123456) vcan7 356#5C1483FFEA00\n(1700000000.223456) vcan7 355#4D006200\n")
    out = tmp_path / "out.csv"

    result = runner.invoke(app, ["decode", str(log), "--site", str(site_file), "--bus", "vcan7=hv",
                                 "--address", "*/Voltage", "--address", "*/Soc", "--output", str(out)])

    assert result.exit_code == 0, result.output
    assert out.read_text().splitlines() == [
        "address,value,unit,timestamp_us,quality",
        "bms_1/Voltage,52.12,V,1700000000123456,ok",
        "bms_1/Soc,77,%,1700000000223456,ok",
    ]
    assert "2 frames (hv 2): 2 decoded, 0 unknown IDs, 0 bad, 0 short, 0 bad values, 0 error frames" in result.stderr


def test_decode_cli_jsonl_to_stdout_with_global_site(site_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "field.log"
    log.write_text("(1700000000.123456) lv 356#5C1483FFEA00\n")
    result = runner.invoke(app, ["--site", str(site_file), "decode", str(log), "--format", "jsonl",
                                 "--address", "bms_0/Temperature"])
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == [{"address": "bms_0/Temperature", "value": 23.4, "unit": "°C",
                                    "timestamp_us": 1_700_000_000_123_456, "quality": "ok"}]


def test_decode_supervision_runs_on_the_log_clock(site: Site, tmp_path: Path) -> None:
    # 0x356 at 0, 1 and 2 s, then silence until 0x355 at 10 s. pylon-lv: every message has a
    # 1000 ms period (stale after 2.5 periods: 2.5 s since start for the 8 never seen) and the
    # device a 5000 ms timeout. Ticks run every 10 ms from the first frame, so:
    # WAITING at 0 (start), OK at 0 (first frame), STALE at 2.51 s, LOST at 2 s + 5.01 s = 7.01 s,
    # STALE again at 10 s (heard again, other messages still stale). The capture is from 2023:
    # against the wall clock everything would be LOST at once.
    path = tmp_path / "gap.log"
    path.write_text("".join(f"({(T0_US + s * 1_000_000) / 1e6:.6f}) lv 356#{LV_356}\n" for s in (0, 1, 2))
                    + f"({(T0_US + 10_000_000) / 1e6:.6f}) lv 355#{LV_355}\n")

    samples = rows(decode_to_text(path, site))

    states = [(r["value"], r["timestamp_us"] - T0_US) for r in samples if r["address"] == "bms_0/CommState"]
    assert states == [("WAITING", 0), ("OK", 0), ("STALE", 2_510_000), ("LOST", 7_010_000), ("STALE", 10_000_000)]
    # last seen at 2 s: stale 2.5 periods later, once (LOST at 7.01 s marks it again: no new row)
    assert values_of(samples, "bms_0/Voltage", "stale") == [(52.12, T0_US + 4_510_000)]
    assert values_of(samples, "bms_0/Soc", "stale") == []  # never had a value
    assert [r["timestamp_us"] for r in samples] == sorted(r["timestamp_us"] for r in samples)
    assert max(r["timestamp_us"] for r in samples) == T0_US + 10_000_000  # nothing beyond the log's end


def test_bus_map_rules(site: Site) -> None:
    default = BusMap(site)
    assert [default.bus_for(c) for c in ("lv", "hv", site.bus("hv").channel, 0, 1, None)] == [
        "lv", "hv", "hv", "lv", "hv", "lv"]
    assert BusMap(site, ["hv"]).bus_for("lv") == "hv"
    assert BusMap(site, ["can9=hv"]).bus_for("can9") == "hv"
    with pytest.raises(ConfigError, match=r"no bus 'xx' in the site; known: lv, hv"):
        BusMap(site, ["xx"])
    with pytest.raises(ConfigError, match="do not combine"):
        BusMap(site, ["hv", "can9=lv"])


def test_bad_log_files_exit_2(site_file: Path, tmp_path: Path) -> None:
    missing = runner.invoke(app, ["decode", str(tmp_path / "nope.log"), "--site", str(site_file)])
    assert missing.exit_code == 2
    assert "nope.log: no such log file" in missing.stderr
    wrong = runner.invoke(app, ["decode", str(tmp_path / "capture.pcap"), "--site", str(site_file)])
    assert wrong.exit_code == 2
    assert "unknown log format '.pcap'; expected one of .log, .asc, .blf, .csv, .trc" in wrong.stderr
    garbage = tmp_path / "garbage.blf"
    garbage.write_bytes(b"not a blf file at all")
    with pytest.raises(LogFileError, match=r"garbage\.blf: cannot read as a \.blf log"):
        list(read_log(garbage))
    no_bus = runner.invoke(app, ["--site", str(site_file), "log", "record", str(tmp_path / "x.log"), "--bus", "can7"])
    assert no_bus.exit_code == 2
    assert "no bus 'can7'; known: lv, hv" in no_bus.stderr


def test_asc_absolute_times_are_exact(site: Site, tmp_path: Path) -> None:
    # python-can reads asc times relative to the file's start unless told otherwise, and writes the
    # start's milliseconds without leading zeros; the decoder reads absolute times, the recorder
    # starts the file on a whole 100 ms. A start at .018 s would otherwise read back as .180 s.
    path = tmp_path / "early.asc"
    first = 1_700_000_000_018_007
    with Recorder(path, [site.bus("lv")], site.buses) as recorder:
        with can.Bus(interface="virtual", channel=site.bus("lv").channel, preserve_timestamps=True) as tx:
            for k in range(3):
                tx.send(can.Message(timestamp=(first + k * 40_000) / 1e6, arbitration_id=0x355,
                                    data=bytes.fromhex(LV_355), is_extended_id=False))
        wait_for(lambda: recorder.stats.total == 3)
    assert [round(m.timestamp * 1e6) for m in read_log(path)] == [first, first + 40_000, first + 80_000]


# -- replay --------------------------------------------------------------------------------------


@pytest.fixture
def listener(site: Site) -> Iterator[Callable[[int], list[can.Message]]]:
    """Collects what arrives on the site's lv bus (virtual: timestamps are send times)."""
    bus = can.Bus(interface="virtual", channel=site.bus("lv").channel)

    def take(n: int, timeout: float = 30.0) -> list[can.Message]:
        got: list[can.Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < n and time.monotonic() < deadline:
            msg = bus.recv(0.1)
            if msg is not None:
                got.append(msg)
        return got

    yield take
    bus.shutdown()


def write_candump(path: Path, offsets_s: list[float]) -> None:
    path.write_text("".join(f"({1_700_000_000 + t:.6f}) lv {0x300 + i:03X}#{i:02X}0102\n"
                            for i, t in enumerate(offsets_s)))


def replay_in_thread(args: list[str]) -> tuple[threading.Thread, dict[str, Any]]:
    out: dict[str, Any] = {}
    t = threading.Thread(target=lambda: out.update(result=runner.invoke(app, args)))
    t.start()
    return t, out


@pytest.mark.parametrize(("speed", "offsets", "expected"), [
    (None, [0.0, 0.3, 0.8], [0.0, 0.3, 0.8]),
    ("4", [0.0, 1.2, 3.2], [0.0, 0.3, 0.8]),
])
def test_replay_keeps_relative_timing(speed: str | None, offsets: list[float], expected: list[float],
                                      site_file: Path, tmp_path: Path,
                                      listener: Callable[[int], list[can.Message]]) -> None:
    log = tmp_path / "timed.log"
    write_candump(log, offsets)
    args = ["--site", str(site_file), "replay", str(log)] + (["--speed", speed] if speed else [])
    thread, out = replay_in_thread(args)
    got = listener(3)
    thread.join(30)
    assert out["result"].exit_code == 0, out["result"].output
    assert [(m.arbitration_id, m.data.hex()) for m in got] == [(0x300, "000102"), (0x301, "010102"),
                                                               (0x302, "020102")]
    gaps = [m.timestamp - got[0].timestamp for m in got]
    for gap, want in zip(gaps, expected, strict=True):
        assert want - 0.002 <= gap <= want + 2.0, (gaps, expected)  # never early; late only on a busy machine
    assert "replay: 3 frames sent (lv 3)" in out["result"].stderr


def test_replay_max_ignores_the_timing(site_file: Path, tmp_path: Path,
                                       listener: Callable[[int], list[can.Message]]) -> None:
    log = tmp_path / "slow.log"
    write_candump(log, [0.0, 5.0, 10.0])
    thread, out = replay_in_thread(["--site", str(site_file), "replay", str(log), "--max"])
    got = listener(3)
    thread.join(30)
    assert out["result"].exit_code == 0, out["result"].output
    assert len(got) == 3
    assert got[-1].timestamp - got[0].timestamp < 2.5  # the log spans 10 s


def test_replay_rejects_speed_with_max(site_file: Path, tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    write_candump(log, [0.0])
    result = runner.invoke(app, ["--site", str(site_file), "replay", str(log), "--max", "--speed", "2"])
    assert result.exit_code == 2
    assert "either --speed or --max" in result.output


# -- record in a subprocess, stopped by SIGTERM -------------------------------------------------------


def emsbms_command() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "from emsbms.cli import main; main()"]


def wait_for_line(proc: subprocess.Popen[str], prefix: str, timeout: float = 60.0) -> str:
    assert proc.stderr is not None
    lines: list[str] = []
    result: list[str] = []

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if line.startswith(prefix):
                result.append(line)
                return

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(timeout)
    assert result, f"no {prefix!r} line within {timeout} s: {lines}"
    return result[0]


def test_record_stopped_by_sigterm_loses_no_frame(tmp_path: Path) -> None:
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(48000, 49990)
    group = "239.74.163.9"
    site = tmp_path / "udp.toml"
    site.write_text(site_toml({
        "site": {"org": "test", "name": "udp"},
        "bus": [{"name": "can0", "interface": "udp_multicast", "channel": group, "port": port}],
        "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}],
    }), encoding="utf-8")
    out = tmp_path / "sigterm.blf"  # blf buffers in compressed blocks: only a clean stop writes them
    proc = subprocess.Popen([*emsbms_command(), "--site", str(site), "log", "record", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        wait_for_line(proc, "record:")
        sent = 300
        with can.Bus(interface="udp_multicast", channel=group, port=port) as tx:
            for i in range(sent):
                tx.send(can.Message(arbitration_id=0x356, data=i.to_bytes(2, "little") + bytes.fromhex("83FFEA00"),
                                    is_extended_id=False))
                time.sleep(0.002)  # well within the socket buffer: UDP itself must not drop
        proc.send_signal(signal.SIGTERM)  # at once: the last frames are still held or in the socket
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    frames = list(read_log(out))
    assert [int.from_bytes(m.data[:2], "little") for m in frames] == list(range(sent))
    assert f"record: {sent} frames written to {out} (can0 {sent})" in err
