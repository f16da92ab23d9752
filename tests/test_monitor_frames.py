"""The monitor as an integrator's tool: the frames page (snapshots at 80x24 and 160x48), the
frame table kept on the receive path, the event details page, the `/` filter, the event pane in
the free rows, pause freezing the events, and every key through the key handler (`Controls`)."""

from __future__ import annotations

import logging
import re
import time

import can
import pytest

from emsbms.can.health import EXTENDED_KEY, FrameStat, FrameTable
from emsbms.cli import monitor as monitor_cli
from emsbms.edge import Edge
from emsbms.edge.events import EventKind, EventLog, Severity
from emsbms.monitor import Filters, FrameRow, History, Show, render
from emsbms.monitor._keys import Controls, Pager
from tests.conftest import virtual_site, wait
from tests.test_monitor import DEVICES, EVENTS, NOW, check_snapshot, event, history, site, styles_of, text_of


def stat(key: int, frames: int, age_s: float, period_s: float, data: bytes, previous: bytes | None = None,
         changed_age_s: float = 0.0) -> FrameStat:
    t = NOW / 1e6
    return FrameStat(key, frames, t - age_s, period_s, len(data), data, data if previous is None else previous,
                     t - changed_age_s if changed_age_s else 0.0)


FRAMES = (
    FrameRow("can0", stat(0x35E, 3, 1.5, 1.0, b"PYTES"), "bms_0"),
    FrameRow("can0", stat(0x351, 1234, 0.4, 1.0, bytes([0x2C, 0x02, 0xE8, 0x03, 0xE8, 0x03, 0xC2, 0x01])), "bms_0"),
    FrameRow("can0", stat(0x123, 42, 0.2, 0.1, bytes.fromhex("1122334455667788"), bytes.fromhex("1122334055667780"),
                          0.5), ""),
    FrameRow("can0", stat(0x355, 1234, 0.3, 0.998, bytes([77, 0, 98, 0, 0, 0]), bytes([76, 0, 98, 0, 0, 0]), 10.0),
             "bms_0"),
    FrameRow("can2", stat(0x18FF50E5 | EXTENDED_KEY, 98765, 0.0, 0.02, bytes(8)), "hv_0"),
    FrameRow("can1", stat(0x705, 1_500_000, 0.9, 0.0025, bytes([0x05])), "node_5"),
    FrameRow("can2", stat(0x7FF, 1, 12.0, 0.0, b""), ""),
)


def frames_lines(width: int, height: int, filters: Filters | None = None) -> list[str]:
    shown = filters or Filters(show=Show.FRAMES)
    drawn = render(site(), NOW, width, height, shown, "emsbms monitor · test", history=history(), events=EVENTS,
                   devices=DEVICES, events_total=9, frames=FRAMES)
    return [line.rstrip() for line in text_of(drawn, width, height).splitlines()]


# -- the frames page --------------------------------------------------------------------------------------


def test_frames_page_80x24_snapshot() -> None:
    lines = frames_lines(80, 24)
    check_snapshot("monitor-frames-80x24.txt", lines)
    assert lines[0].startswith("emsbms monitor · test  3 devices  3 buses  22:13:20 UTC  frames")
    assert lines[1].split() == ["Bus", "ID", "Device", "Count", "Period", "DLC", "Seen", "Data", "ASCII"]
    # unknown IDs first, then by bus and ID
    assert [line.split()[1] for line in lines[2:]] == ["0x123", "0x7FF", "0x351", "0x355", "0x35E", "0x705",
                                                       "0x18FF50E5"]
    assert lines[2] == """can0 0x123      unknown     42  100 ms   8 0.2s 11 22 33 44 55 66 77 88 ."3DUfw."""
    assert lines[6] == "can0 0x35E      bms_0        3  1.00 s   5 1.5s 50 59 54 45 53          PYTES"
    assert lines[8] == "can2 0x18FF50E5 hv_0     98765   20 ms   8 0.0s 00 00 00 00 00 00 00 00 ........"
    assert max(len(line) for line in lines) <= 80 and len(lines) <= 24


def test_frames_page_160x48_snapshot() -> None:
    lines = frames_lines(160, 48)
    check_snapshot("monitor-frames-160x48.txt", lines)
    assert lines[1].endswith("ASCII    Changed")  # the age of the last change, where there is room
    assert "can1 0x705      node_5    1.5M  2.5 ms   1 0.9s 05                      .          never" in lines
    assert "can0 0x355      bms_0     1234  998 ms   6 0.3s 4D 00 62 00 00 00       M.b...       10s" in lines
    assert max(len(line) for line in lines) <= 160


def test_changed_bytes_are_highlighted_while_the_change_is_recent() -> None:
    html = styles_of(render(site(), NOW, 80, 24, Filters(show=Show.FRAMES), "t", frames=FRAMES))
    row = html[html.index("0x123") :].split("\n", 1)[0]
    highlighted = re.findall(r'<span style="background-color: #808000; font-weight: bold">(\w\w)</span>', row)
    assert highlighted == ["44", "88"]  # the bytes that differ from the data before, changed 0.5 s ago
    assert " 11 22 33 <span" in row
    old = html[html.index("0x355") :].split("\n", 1)[0]
    assert "</span> 4D 00 62 00 00 00       <span" in old  # changed 10 s ago: no highlight


def test_frames_page_pages_when_the_ids_do_not_fit() -> None:
    many = tuple(FrameRow("can0", stat(0x400 + i, 10, 0.1, 0.1, bytes([i])), "bms_0") for i in range(30))
    drawn = render(site(), NOW, 80, 12, Filters(show=Show.FRAMES, page=1), "t", frames=many)
    lines = text_of(drawn, 80, 12).splitlines()
    assert lines[2].split()[1] == "0x409"  # 12 lines: header, title, 9 IDs, the page line
    assert lines[-1].strip() == "page 2/4 · 21 more IDs on the other pages"


def test_the_filter_narrows_frames_by_id_device_or_bus() -> None:
    lines = frames_lines(80, 24, Filters(show=Show.FRAMES, text="35"))
    assert [line.split()[1] for line in lines[2:]] == ["0x351", "0x355", "0x35E"]
    assert lines[0].endswith("frames  /35")
    assert [line.split()[1] for line in frames_lines(80, 24, Filters(show=Show.FRAMES, text="UNKNOWN"))[2:]] == [
        "0x123", "0x7FF"]
    assert frames_lines(80, 24, Filters(show=Show.FRAMES, text="zz"))[2] == "no frame ID matches /zz"


# -- the frame table on the receive path -------------------------------------------------------------------


def msg(aid: int, data: bytes, t: float, extended: bool = False) -> can.Message:
    return can.Message(arbitration_id=aid, data=data, timestamp=t, is_extended_id=extended)


def test_frame_table_counts_measures_the_period_and_keeps_the_previous_data() -> None:
    table = FrameTable(max_ids=3)
    table.note(msg(0x351, b"\x01\x02", 100.0))
    table.note(msg(0x351, b"\x01\x02", 101.0))  # first interval: 1 s
    table.note(msg(0x351, b"\x01\x03", 103.0))  # 1 + (2 - 1) / 8
    table.note(msg(0x1ABCDEF0, b"", 100.5, extended=True))
    table.note(can.Message(arbitration_id=0x20000004, is_error_frame=True, timestamp=100.6))  # not an ID
    table.note(msg(0x100, b"\xff", 100.7))
    table.note(msg(0x101, b"\xff", 100.8))  # a fourth ID: over the bound, only counted
    stats = {s.key: s for s in table.stats()}
    assert sorted(stats) == [0x100, 0x351, 0x1ABCDEF0 | EXTENDED_KEY]
    s = stats[0x351]
    assert (s.frames, s.last_s, s.period_s, s.dlc, s.data, s.previous, s.changed_s) == (
        3, 103.0, 1.125, 2, b"\x01\x03", b"\x01\x02", 103.0)
    assert stats[0x1ABCDEF0 | EXTENDED_KEY].extended and stats[0x1ABCDEF0 | EXTENDED_KEY].arbitration_id == 0x1ABCDEF0
    assert stats[0x100].period_s == 0.0 and stats[0x100].changed_s == 0.0
    assert table.overflow == 1


def test_frames_of_a_live_edge_with_their_devices_unknown_first() -> None:
    site_ = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    peer = can.Bus(interface="virtual", channel=site_.buses[0].channel)
    try:
        with Edge(site_) as edge:
            for soc in (50, 51):
                peer.send(can.Message(arbitration_id=0x355, data=bytes([soc, 0, 98, 0]), is_extended_id=False))
            peer.send(can.Message(arbitration_id=0x6A5, data=b"\x01", is_extended_id=False))
            assert wait(lambda: edge.snapshot().value("can0/UnknownIds") == 1)
            assert wait(lambda: len(monitor_cli.frame_rows(edge)) == 2)
            rows = {r.stat.key: r for r in monitor_cli.frame_rows(edge)}
            screen = monitor_cli.Screen(edge, EventLog(), Filters(), "live")
            screen.feed(b"f", 0.0)
            text = text_of(screen.frame(80, 10, hint=False), 80, 10)
    finally:
        peer.shutdown()
    assert rows[0x355].device == "bms_0" and rows[0x355].stat.frames == 2
    assert rows[0x355].stat.data == bytes([51, 0, 98, 0]) and rows[0x355].stat.previous == bytes([50, 0, 98, 0])
    assert rows[0x6A5].device == ""
    lines = text.splitlines()
    assert lines[2].startswith("can0 0x6A5 unknown") and lines[3].startswith("can0 0x355 bms_0")


# -- event details, the event pane, pause -----------------------------------------------------------------

LONG = (
    event(2, "node_5", EventKind.EMCY, Severity.ALARM,
          "EMCY 0x5000 device hardware · error register 0x01 · manufacturer bytes 01 02 03 04 05"),
    event(1, "hv_0", EventKind.DM1, Severity.WARNING,
          "DM1 2 DTCs: SPN 520201 FMI 16, SPN 520202 FMI 18, SPN 520203 FMI 3 · amber lamp"),
)


def test_event_details_page_wraps_long_events_80x24_snapshot() -> None:
    drawn = render(site(), NOW, 80, 24, Filters(show=Show.EVENTS), "emsbms monitor · test", events=EVENTS + LONG,
                   devices=DEVICES, events_total=11)
    lines = [line.rstrip() for line in text_of(drawn, 80, 24).splitlines()]
    check_snapshot("monitor-events-80x24.txt", lines)
    assert lines[-4:] == [
        "22:13:18 node_5 EMCY 0x5000 device hardware · error register 0x01 · manufacturer",
        "                bytes 01 02 03 04 05",
        "22:13:19 hv_0   DM1 2 DTCs: SPN 520201 FMI 16, SPN 520202 FMI 18, SPN 520203 FMI",
        "                3 · amber lamp",
    ]


def test_event_details_scroll_back_by_whole_events() -> None:
    many = tuple(event(60 - i, "bms_0", EventKind.COMM, Severity.INFO, f"event number {i}") for i in range(30))
    newest = text_of(render(site(), NOW, 80, 12, Filters(show=Show.EVENTS), "t", events=many), 80, 12).splitlines()
    older = text_of(render(site(), NOW, 80, 12, Filters(show=Show.EVENTS, page=1), "t", events=many), 80, 12)
    oldest = text_of(render(site(), NOW, 80, 12, Filters(show=Show.EVENTS, page=99), "t", events=many), 80, 12)
    assert newest[-1].rstrip().endswith("event number 29") and newest[2].rstrip().endswith("event number 20")
    assert "page 1 of 3" in newest[1]
    assert older.splitlines()[-1].rstrip().endswith("event number 19")
    assert oldest.splitlines()[2].rstrip().endswith("event number 0") and "page 3 of 3" in oldest


def test_the_event_pane_takes_the_free_rows_at_full_width_on_a_wide_terminal() -> None:
    events = EVENTS + LONG
    drawn = render(site(), NOW, 160, 48, None, "t", history=history(), events=events, devices=DEVICES,
                   events_total=11)
    lines = [line.rstrip() for line in text_of(drawn, 160, 48).splitlines()]
    # before: beside the bus and device panes in 56 columns, "EMCY 0x5000 device hardware · …"
    assert "22:13:18 node_5 EMCY 0x5000 device hardware · error register 0x01 · manufacturer bytes 01 02 03 04 05" \
        in lines
    assert "22:13:19 hv_0   DM1 2 DTCs: SPN 520201 FMI 16, SPN 520202 FMI 18, SPN 520203 FMI 3 · amber lamp" in lines
    assert lines[5].startswith("Time UTC Source Events (11, newest last)")  # under the 3 buses and devices


def test_the_filter_narrows_the_channels() -> None:
    drawn = render(site(), NOW, 80, 24, Filters(text="soc"), "t", history=history(), events=EVENTS, devices=DEVICES)
    text = text_of(drawn, 80, 24)
    assert "Voltage" not in text.split("Events")[1] and "EmcyText" not in text
    assert " Soc " in text and "─ node_5 " in text and "─ hv_0 " in text
    assert "/soc" in text.splitlines()[0]


def log_event(log: EventLog, text: str) -> None:
    log.post_log(logging.makeLogRecord({"name": "emsbms.test", "levelno": logging.WARNING, "levelname": "WARNING",
                                        "msg": text, "created": time.time()}))


def test_pause_freezes_the_events_too() -> None:
    site_ = virtual_site(["can0"], [{"name": "bms_0", "bus": "can0", "profile": "pylon-lv"}])
    edge = Edge(site_)  # not started: a pause needs no traffic
    log = EventLog()
    screen = monitor_cli.Screen(edge, log, Filters(), "t")
    screen.feed(b"e", 0.0)  # the event details page
    log_event(log, "before the pause")
    assert "before the pause" in text_of(screen.frame(80, 24), 80, 24)
    log_event(log, "just before the pause")  # posted, not yet drawn: the pause keeps it
    screen.feed(b" ", 0.0)
    log_event(log, "during the pause")
    paused = text_of(screen.frame(80, 24), 80, 24)
    assert "during the pause" not in paused and "just before the pause" in paused
    assert "PAUSED · space resumes" in paused.splitlines()[0]
    screen.feed(b" ", 0.0)
    assert "during the pause" in text_of(screen.frame(80, 24), 80, 24)


# -- keys -----------------------------------------------------------------------------------------------------


def test_keys_switch_pages_and_back() -> None:
    c = Controls(Pager(0.0))

    def shown() -> Show:
        return c.show

    c.feed(b"f", 1.0)
    assert c.show is Show.FRAMES
    c.feed(b"\x1b[C\x1b[C\x1b[D", 1.0)  # right, right, left: frame page 1
    assert c.scroll == 1 and c.page(1.0) == 1
    c.feed(b"e", 1.0)
    assert shown() is Show.EVENTS and c.scroll == 0
    c.feed(b"\x1b[A\x1b[A\x1b[B", 1.0)  # up, up, down: one page back in time
    assert c.scroll == 1
    c.feed(b"\x1b[B\x1b[B", 1.0)
    assert c.scroll == 0  # never past the newest
    c.feed(b"e", 1.0)
    assert shown() is Show.CHANNELS
    c.feed(b"f\x1b", 1.0)  # Esc: back to the channels
    assert shown() is Show.CHANNELS
    c.feed(b"n", 2.0)
    assert c.page(2.0) == 1  # a channel page turned by key
    c.feed(b" ", 3.0)
    assert c.paused and c.status(True) == "PAUSED · space resumes"
    c.feed(b"p", 3.0)
    assert not c.paused
    c.feed(b"q f", 4.0)  # nothing after q counts
    assert c.quit and c.show is Show.CHANNELS and not c.paused


def test_the_filter_key_takes_typed_text() -> None:
    c = Controls(Pager(0.0))
    c.feed(b"/Soz\x7fc", 1.0)  # a typo erased
    assert c.editing and c.text == "Soc" and c.status(True).startswith("filter /Soc")
    c.feed(b"\x1b[C", 1.0)  # an arrow key while typing: ignored
    c.feed(b"q\r", 1.0)  # q is text here, Enter keeps it
    assert not c.editing and c.text == "Socq" and not c.quit
    c.feed(b"\x1b", 1.0)  # Esc clears the filter first
    assert c.text == "" and c.show is Show.CHANNELS
    c.feed(b"f/35\x1b", 1.0)  # Esc while typing: cleared, still on the frames page
    assert c.text == "" and not c.editing and c.show is Show.FRAMES


@pytest.mark.parametrize(("width", "expected"), [
    (200, "q quit · space pause · f frames · e events · / filter · ←→ page"),
    (80, "q quit · space pause · f frames"),
])
def test_the_key_hints_shorten_to_fit(width: int, expected: str) -> None:
    drawn = render(site(), NOW, width, 24, None, "emsbms demo · 6 simulated BMS", history=History(),
                   status=Controls(Pager(0.0)).status(True))
    assert text_of(drawn, width, 24).splitlines()[0].rstrip().endswith(expected)
