"""The benchmark suite: every scenario runs once, tiny, and its counting is right.

Not timed tests: they prove that the scenarios work and that what they count (lost frames above
all) is exact, by dropping frames on purpose and finding every one.
"""

from __future__ import annotations

import json
import random
import uuid
from pathlib import Path
from typing import Any

import can
import pytest

from emsbms.bench import commands, decode, devices, e2e, startup
from emsbms.bench.__main__ import main
from emsbms.bench.traffic import PROFILE_PATH, LossCounter, Traffic, pace
from emsbms.can.faults import FaultyBus
from emsbms.profile import list_shipped, load_profile
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter
from emsbms.site import BusConfig

# -- the loss counter ---------------------------------------------------------------------------


def test_loss_counter_counts_gaps_duplicates_reordering_and_the_tail() -> None:
    c = LossCounter()
    for seq in (0, 1, 2, 5, 5, 6, 4, 9):  # 3, 4 and 7, 8 missing; 5 twice; 4 arrives late
        c.see("a", seq)
    for seq in (2, 3):  # 0 and 1 never arrived
        c.see("b", seq)
    assert (c.received, c.gaps, c.duplicates, c.reordered) == (10, 4 + 2, 1, 1)
    # sent: a 0..11 (10, 11 after the last received), b 0..3, c 0..6 (nothing received)
    assert c.finish({"a": 12, "b": 4, "c": 7}) == 6 + 2 + 7
    assert c.tail_lost == 2 + 0 + 7


def test_loss_counter_follows_the_16_bit_wrap() -> None:
    c = LossCounter()
    for seq in (65533, 65534, 65535, 0, 2):  # 65535 -> 0 is one step; 1 is missing
        c.see("a", seq)
    assert (c.gaps, c.duplicates, c.reordered) == (65533 + 1, 0, 0)
    assert c.finish({"a": 65536 + 3}) == 65533 + 1  # frame 65536+2 (seq 2) was the last sent


# -- traffic --------------------------------------------------------------------------------------


def test_traffic_payload_carries_the_sequence_number_little_endian() -> None:
    t = Traffic(2, 3)
    assert [s.arbitration_id for s in t.streams[1][:6]] == [0x351, 0x355, 0x356, 0x359, 0x373, 0x451]
    assert t.streams[1][5].address == "b1d1/Seq/Limits"
    data = t.data(0, 2, 0x1234 + 65536)
    assert len(data) == 8 and data[6:8] == b"\x34\x12"


def test_frame_rate_lies_within_the_physical_limits_of_the_bus() -> None:
    t = Traffic(1, 4)
    rate = t.frame_rate(1_000_000, 1.0)
    # 11-bit 8-byte frames: 111 bits without stuffing (9,009/s), 135 with the worst stuffing (7,407/s)
    assert 7_407 <= rate <= 9_009
    assert t.frame_rate(500_000, 0.8) == pytest.approx(rate * 0.4)


def test_bench_profile_decodes_a_hand_built_frame() -> None:
    adapter = DbcAdapter(DeviceConfig("d", "can0", str(PROFILE_PATH)), load_profile(PROFILE_PATH))
    adapter.start(0)
    # CVL 560 (56.0 V), CCL 1000 (100.0 A), DCL -1200 = 0xFB50 (|-120.0| A), Seq 0x3039 = 12345
    msg = can.Message(arbitration_id=0x351, data=bytes.fromhex("3002e80350fb3930"), is_extended_id=False,
                      timestamp=2.0)
    out = adapter.on_frame(msg, 0)
    assert out is not None
    values = {s.address: s.value for s in out.samples}
    assert values["d/ChargeMaxVoltage"] == pytest.approx(56.0)
    assert values["d/ChargeMaxCurrent"] == pytest.approx(100.0)
    assert values["d/DischargeMaxCurrent"] == pytest.approx(120.0)
    assert values["d/Seq/Limits"] == 12345 and isinstance(values["d/Seq/Limits"], int)
    assert {s.timestamp_us for s in out.samples} == {2_000_000}


def test_pace_sends_every_sequence_number_except_the_skipped_ones() -> None:
    t = Traffic(2, 1)
    got: list[tuple[int, int, int]] = []
    sent = pace(t, lambda b, i, d: got.append((b, i, d[6] | d[7] << 8)), 4000.0, 0.1,
                skip=lambda address, seq: address == "b1d0/Seq/Cells" and seq % 3 == 1)
    by_stream: dict[tuple[int, int], list[int]] = {}
    for b, can_id, seq in got:
        by_stream.setdefault((b, can_id), []).append(seq)
    assert by_stream[(0, 0x351)] == list(range(sent.counts["b0d0/Seq/Limits"]))
    cells = sent.counts["b1d0/Seq/Cells"]
    assert by_stream[(1, 0x373)] == [s for s in range(cells) if s % 3 != 1]
    assert sent.total == len(got) + len([s for s in range(cells) if s % 3 == 1])


# -- end to end: the counters find the frames dropped on purpose ---------------------------------


def _virtual(count: int) -> list[BusConfig]:
    return e2e.bus_configs("virtual", count, 500_000)


class _Skip:
    """Leaves out every 4th frame of one stream, and counts what it left out."""

    def __init__(self, stream: str) -> None:
        self.stream = stream
        self.skipped = 0

    def __call__(self, address: str, seq: int) -> bool:
        if address == self.stream and seq % 4 == 3:
            self.skipped += 1
            return True
        return False


@pytest.mark.parametrize("receiver", [e2e.EdgeReceiver, e2e.NotifierReceiver])
def test_frames_skipped_on_purpose_are_counted_lost(receiver: Any) -> None:
    traffic = Traffic(2, 2)
    configs = _virtual(2)
    skip = _Skip("b1d1/Seq/Measurements")
    figures = e2e.measure(receiver(configs, traffic), e2e.VirtualSource(configs, traffic, skip), 1500.0, 0.4, False)
    assert skip.skipped > 0
    assert figures.lost == skip.skipped
    assert figures.received + figures.lost == figures.sent
    assert (figures.duplicates, figures.reordered, figures.queue_drops) == (0, 0, 0)
    assert figures.latency_p50_us is not None and figures.latency_p50_us >= 0


def test_frames_a_faulty_bus_drops_are_counted_lost() -> None:
    traffic = Traffic(1, 3)
    configs = _virtual(1)
    faulty: list[FaultyBus] = []

    def factory(config: BusConfig) -> FaultyBus:
        bus = FaultyBus(inner_bus=can.Bus(interface="virtual", channel=config.channel), drop=0.05, seed=11)
        faulty.append(bus)
        return bus

    receiver = e2e.EdgeReceiver(configs, traffic, bus_factory=factory)
    figures = e2e.measure(receiver, e2e.VirtualSource(configs, traffic), 2000.0, 0.4, False)
    assert len(faulty) == 1 and faulty[0].dropped > 0
    assert figures.lost == faulty[0].dropped
    assert figures.received + figures.lost == figures.sent


def test_capacity_counts_every_frame_put_in_the_queues() -> None:
    r = e2e.capacity(2, 300)
    assert (r.buses, r.frames, r.lost) == (2, 600, 0)
    assert r.frames_per_s > 0 and r.cpu_us_per_frame > 0


def test_udp_multicast_variant_counts_every_frame_sent_by_the_other_process() -> None:
    r = e2e.run("udp_multicast", 1, 1_000_000, 0.05, duration=0.3, devices_per_bus=2)
    for side in (r.edge, r.baseline):
        assert side.sent > 0
        assert side.received + side.lost == side.sent
        assert side.generator_cpu_pct == 0.0  # the generator is not in this process
    assert r.as_dict()["ratio_decoded_vs_baseline"] is not None


# -- the other scenarios, tiny -------------------------------------------------------------------


def test_generated_sampler_gives_the_generic_paths_values_on_every_shipped_profile() -> None:
    rng = random.Random(5)
    for name in list_shipped():
        profile = load_profile(name)
        if profile.protocol != "dbc":
            continue
        fast = DbcAdapter(DeviceConfig("d", "can0", name), profile)
        slow = DbcAdapter(DeviceConfig("d", "can0", name), profile)
        for route in fast._by_name.values():
            for _ in range(20):
                data = bytes(rng.getrandbits(8) for _ in range(route.compiled.length))
                msg = can.Message(arbitration_id=route.compiled.frame_id, data=data, timestamp=1.5,
                                  is_extended_id=route.compiled.is_extended)
                got = fast.on_frame(msg, 0)
                want = slow._short_frame(slow._by_name[route.compiled.name], msg)
                assert got is not None and list(got.samples) == list(want.samples), (name, route.compiled.name)


def test_supervisor_quiet_ticks_miss_no_deadline() -> None:
    """Ticks every 10 ms between deadlines take the quiet path; every deadline still fires on time."""
    from emsbms.protocols.supervision import Supervisor

    t0 = 1_000_000
    sup = Supervisor("d", timeout_us=1_000_000)
    sup.watch("A", 100_000, ["d/a"])
    sup.watch("B", 200_000, ["d/b"])
    sup.begin(t0)
    sup.seen("A", t0)
    sup.seen("B", t0)
    events: list[tuple[int, str]] = []
    for t in range(10_000, 2_400_001, 10_000):  # ms after t0, in µs
        if (t <= 500_000 and t % 100_000 == 0) or t == 1_600_000:
            sup.seen("A", t0 + t)  # A until 0.5 s and once at 1.6 s
        if t == 1_700_000:
            sup.seen("B", t0 + t)  # B at 0 and at 1.7 s
        samples, stale = sup.tick(t0 + t)
        events += [(t // 1000, f"stale {a}") for a in stale]
        events += [(t // 1000, f"{s.address.split('/')[1]}={s.value}") for s in samples if "Alarm" not in s.address]
    assert events == [
        (10, "LastSeen=1000000"), (100, "LastSeen=1100000"), (200, "LastSeen=1200000"), (300, "LastSeen=1300000"),
        (400, "LastSeen=1400000"), (500, "LastSeen=1500000"),
        (510, "stale d/b"), (510, "CommState=STALE"),  # 0 + 2.5 x 200 ms, strictly after
        (760, "stale d/a"),  # 500 + 2.5 x 100 ms
        (1510, "stale d/a"), (1510, "stale d/b"), (1510, "CommState=LOST"),  # 500 ms + the 1 s timeout
        (1600, "LastSeen=2600000"), (1700, "LastSeen=2700000"),
        (1860, "stale d/a"), (1860, "CommState=STALE"),  # seen at 1600: its deadline counts again
        (2210, "stale d/b"),  # seen at 1700
    ]


def test_decode_scenario_measures_every_way_on_the_same_frames() -> None:
    r = decode.bench_profile("pylon-lv", frames=300, min_time=0.0)
    assert r is not None and r.frames == 300
    d = r.as_dict()
    for key in ("compiled_fps", "sampler_fps", "adapter_fps", "cantools_decode_message_fps",
                "cantools_message_decode_fps"):
        assert d[key] > 0
    assert d["ratio_compiled_vs_decode_message"] == round(r.compiled_fps / r.cantools_decode_message_fps, 2)
    j1939 = decode.bench_profile("j1939-hvess", frames=100, min_time=0.0)
    assert j1939 is not None and j1939.adapter_fps is None  # no DBC adapter path for J1939


def test_device_scenario_brings_up_a_small_mixed_fleet() -> None:
    r = devices.run_count(12, seconds=0.5)
    # slots 0, 1 and 2 of each of the 4 buses
    assert r.mix == {"j1939-hvess": 4, "cia418-bms": 4, "acme-lv-bytemap": 4}
    assert r.devices_ok == 12
    assert r.frames_per_s > 0 and r.baseline_frames_per_s > 0
    assert r.snapshot_p50_us is not None and r.channels > 12 * 20


def test_device_mix_keeps_ids_apart_up_to_128_devices() -> None:
    from emsbms.site import build_adapters, load_profiles, parse_site

    tables = devices.device_tables(128, [f"can{i}" for i in range(4)])
    site = parse_site({"site": {"name": "x"}, "bus": [{"name": f"can{i}", "interface": "virtual"} for i in range(4)],
                       "device": tables})
    adapters = build_adapters(site, load_profiles(site))  # raises ConfigError on colliding IDs
    assert len(adapters) == 128
    kinds = {t["profile"] for t in tables}
    assert kinds == {"j1939-hvess", "cia418-bms", "acme-lv-bytemap", "acme-hv", "pylon-lv"}


@pytest.mark.parametrize("path", commands.PATHS, ids=[p.name for p in commands.PATHS])
def test_command_round_trips_are_acknowledged(path: Any) -> None:
    r = commands.run_path(path, writes=1)
    assert (r.acked, r.baseline_acked) == (1, 1)
    assert r.p50_ms is not None and 0 < r.p50_ms < 1000 * commands.TIMEOUT_S


def test_startup_scenario_times_both_and_their_baselines() -> None:
    results = startup.run(runs=1)
    assert [r.what for r in results] == ["emsbms --help", "Edge.from_site, 10 devices"]
    for r in results:
        assert r.median_ms > r.interpreter_ms > 0 and r.baseline_median_ms > 0


def test_main_quick_writes_the_figures_as_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / f"bench-{uuid.uuid4().hex[:6]}.json"
    assert main(["--quick", "--only", "decode", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert doc["cores"] >= 1 and doc["quick"] is True
    assert {d["profile"] for d in doc["decode"]} >= {"pylon-lv", "acme-hv", "bench-lv"}
    assert "compiled f/s" in capsys.readouterr().out


# -- the uplink through a real Mosquitto ----------------------------------------------------------


@pytest.mark.slow
def test_uplink_scenarios_quick_answer_every_command_config_and_message(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.test_uplink_mqtt import require_mosquitto

    require_mosquitto()
    out = tmp_path / "uplink.json"
    assert main(["--quick", "--only", "uplink-commands", "uplink-config", "uplink-telemetry", "--json", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert [r["path"] for r in doc["uplink-commands"]] == [p.name for p in commands.PATHS]
    for r in doc["uplink-commands"]:
        # Every command is answered. A device's acknowledgement may miss its 2 s window on a starved
        # machine (the simulator is another process): that is a `timeout`, never a lost or refused one.
        assert r["writes"] == 2 and r["acked"] >= 1 and r["local_acked"] >= 1, r
        assert all(f.startswith(("cmd/result timeout:", "edge.write timeout:")) for f in r["failures"]), r
        assert len(r["failures"]) >= (r["writes"] - r["acked"]) + (r["writes"] - r["local_acked"]), r
        assert r["added_p99_ms"] is not None and r["p99_ms"] >= r["added_p99_ms"] > 0
    [cfg] = doc["uplink-config"]
    assert (cfg["switches"], cfg["applied"], cfg["local_applied"]) == (2, 2, 2)
    assert cfg["p99_ms"] >= cfg["p50_ms"] > 0
    [flow] = doc["uplink-telemetry"]
    assert (flow["devices"], flow["devices_ok"], flow["missing"]) == (4, 4, 0)
    # every message made before the broker came back and not delivered before it stopped arrived after it
    assert flow["backlog_messages"] > 0 and flow["backlog_samples"] >= flow["backlog_messages"]
    assert flow["samples_per_s"] > 0 and flow["latency_p99_ms"] >= flow["latency_p50_ms"] > 0
    assert flow["cpu_pct_with"] > 0 and flow["updates_per_s_with"] > 0
    assert "added p50/p99 ms" in capsys.readouterr().out
