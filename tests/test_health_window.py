"""Bus health on the first read and the edge's own frames.

BusLoad and RxRate appear only once one whole window has passed (before, they covered an almost
empty window: 0.0 frames/s with quality ok). The edge's own frames, which udp_multicast loops back
to their sender, are counted as OwnFrames, never as UnknownIds, while a foreign frame with the same
ID and data is still received.
"""

from __future__ import annotations

import os
import random
import threading
import time

import can
import pytest

from emsbms.can.bus import BusRunner
from emsbms.can.config import BusConfig
from emsbms.can.health import LoadMeter
from emsbms.edge import Edge
from emsbms.site import Site, parse_site
from emsbms.types import Quality
from tests.conftest import virtual_site, wait

GROUP = "239.74.163.9"


# -- the meters --------------------------------------------------------------------------------------


def test_rate_meter_answers_only_over_a_whole_window() -> None:
    from emsbms.can.health import RateMeter

    meter = RateMeter(window_s=1.0)
    assert meter.rate(100.0, 0) is None  # the first reading: no window at all
    assert meter.rate(100.5, 40) is None  # half a window
    assert meter.rate(101.0, 100) == pytest.approx(100.0)  # 100 frames in exactly one window
    assert meter.rate(101.5, 130) == pytest.approx((130 - 40) / 1.0)  # the window slides: from 100.5
    assert meter.rate(102.2, 130) == pytest.approx(30 / 1.2)  # from 101.0, the newest reading a window old


def test_load_meter_is_full_once_a_window_passed_since_start() -> None:
    meter = LoadMeter(bitrate=500_000, window_s=1.0)
    assert not meter.full(10.0)  # never started
    meter.start(10.0)
    meter.add(10.1, 1000)
    assert not meter.full(10.99)
    assert meter.load(10.99) == pytest.approx(0.2)  # what the first readings showed: a part of a window
    assert meter.full(11.0)


# -- the first reading of a live edge -------------------------------------------------------------------


def test_first_rate_and_load_readings_cover_a_whole_window_of_real_traffic() -> None:
    site = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site.buses[0].channel)
    stop = threading.Event()

    def traffic() -> None:  # about 500 frames/s until the readings are in
        while not stop.is_set():
            peer.send(can.Message(arbitration_id=0x356, data=bytes([0xAA] * 6), is_extended_id=False))
            time.sleep(0.002)

    sender = threading.Thread(target=traffic)
    sender.start()
    try:
        with Edge(site) as edge:
            rate = edge.read("can0/RxRate", timeout=10)  # the first reading since the edge started
            load = edge.read("can0/BusLoad", timeout=10)
            started = edge.started_us
    finally:
        stop.set()
        sender.join()
        peer.shutdown()
    # before: 0.0 frames/s and 0.03 % with quality ok, stamped at start
    assert rate.quality is Quality.OK and isinstance(rate.value, float) and rate.value > 0
    assert load.quality is Quality.OK and isinstance(load.value, float) and load.value > 0
    assert rate.timestamp_us - started >= 1_000_000  # a whole window after start
    assert load.timestamp_us - started >= 1_000_000


# -- own frames -------------------------------------------------------------------------------------------


def count(edge: Edge, address: str) -> int:
    value = edge.snapshot().value(address)
    return value if isinstance(value, int) else 0


def udp_site(port: int) -> Site:
    return parse_site({"site": {"org": "test", "name": "udp"},
                       "bus": [{"name": "can0", "interface": "udp_multicast", "channel": GROUP, "port": port}],
                       "device": [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}]})


def test_own_keepalives_over_udp_multicast_are_own_frames_not_unknown_ids() -> None:
    port = random.Random(os.getpid() ^ time.time_ns()).randrange(52000, 56000)
    site = udp_site(port)
    peer = can.Bus(interface="udp_multicast", channel=GROUP, port=port)
    try:
        with Edge(site) as edge:
            keepalive = None
            deadline = time.monotonic() + 10
            while keepalive is None and time.monotonic() < deadline:  # the edge's 0x305, as the peer sees it
                msg = peer.recv(0.5)
                if msg is not None and msg.arbitration_id == 0x305:
                    keepalive = msg
            assert keepalive is not None
            assert wait(lambda: count(edge, "can0/OwnFrames") >= 3)
            assert count(edge, "can0/UnknownIds") == 0  # before: one more a second
            assert count(edge, "can0/TxFrames") >= 3
            assert 0x305 not in {s.key for s in edge.runners["can0"].frames.stats()}
            # another node sends a frame with the same ID and data: that one is received
            peer.send(can.Message(arbitration_id=0x305, data=keepalive.data, is_extended_id=False))
            assert wait(lambda: edge.snapshot().value("can0/UnknownIds") == 1)
            seen = {s.key: s for s in edge.runners["can0"].frames.stats()}
            assert seen[0x305].frames == 1 and seen[0x305].data == bytes(keepalive.data)
    finally:
        peer.shutdown()


def test_the_senders_frame_is_left_as_it_was_and_a_virtual_echo_is_own() -> None:
    """On virtual with receive_own_messages the echo is marked is_rx=False; a runner on udp_multicast
    tags a copy of the frame, not the caller's."""
    tag = f"own-{os.getpid()}-{time.time_ns()}"
    runner = BusRunner(BusConfig("can0", "virtual", tag, 500_000, {"receive_own_messages": True}))
    peer = can.Bus(interface="virtual", channel=tag)
    runner.open()
    try:
        frame = can.Message(arbitration_id=0x305, data=bytes(8), is_extended_id=False)
        runner.send(frame)
        assert wait(lambda: runner.own_frames == 1)
        peer.send(can.Message(arbitration_id=0x305, data=bytes(8), is_extended_id=False))
        assert wait(lambda: runner.rx == 1)
        assert runner.own_frames == 1 and runner.queue.qsize() == 1
        assert frame.channel is None
    finally:
        runner.close()
        peer.shutdown()
    udp = BusRunner(BusConfig("can0", "udp_multicast", GROUP, 500_000))
    assert udp.tag is not None and udp.tag != BusRunner(BusConfig("can0", "udp_multicast", GROUP, 500_000)).tag
