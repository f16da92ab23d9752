"""The monitor's uplink pane: the uplink's counters (uplink/State, Queued, Published, Dropped,
OldestQueuedAge, RoundTrip) on a line of their own between the panes and the channel table, and
not drawn as a device; no pane without an uplink."""

from __future__ import annotations

from emsbms.edge.registry import Snapshot
from emsbms.monitor import Filters, Scene
from emsbms.monitor._model import classify
from emsbms.monitor._uplink import uplink_row
from emsbms.types import Quality, Reading
from tests.test_monitor import NOW, at, check_snapshot, frame, lines_of, site, style_before, styles_of


def with_uplink(state: str = "offline", dropped: int = 3, trip: float | None = 2.35) -> Snapshot:
    snap = dict(site())
    snap |= {"uplink/State": at(state), "uplink/Queued": at(1234), "uplink/Published": at(56_789),
             "uplink/Dropped": at(dropped), "uplink/OldestQueuedAge": at(42.4, "s"),
             "uplink/RoundTrip": at(trip, "ms", quality=Quality.OK)}
    return Snapshot(snap, NOW)


def test_uplink_pane_80x24_snapshot() -> None:
    lines = lines_of(80, 24, snap=with_uplink())
    check_snapshot("monitor-uplink-80x24.txt", lines)
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 80
    head = next(i for i, line in enumerate(lines) if line.startswith("Uplink"))
    assert lines[head].split() == ["Uplink", "Queued", "Published", "Dropped", "Oldest", "Round", "trip"]
    assert lines[head + 1].split() == ["offline", "1234", "56789", "3", "42s", "2.4", "ms"]
    assert "3 devices" in lines[0]  # the uplink is no device
    assert not any(line.startswith("uplink ") or " uplink " in line for line in lines)


def test_no_uplink_pane_without_uplink_channels() -> None:
    lines = lines_of(80, 24)
    assert not any(line.startswith("Uplink") for line in lines)


def test_uplink_values_not_yet_known_and_colours() -> None:
    view = classify(Scene(Snapshot({"uplink/State": Reading("connecting", "", NOW, Quality.OK)}, NOW), NOW),
                    Filters())
    assert [str(c) for c in uplink_row(view)] == ["connecting", "—", "—", "—", "—", "—"]
    html = styles_of(frame(80, 24, snap=with_uplink(dropped=987)))
    offline = style_before(html, "offline")
    assert "#800000" in offline and "bold" in offline  # the broker away: bold red
    assert "#800000" in style_before(html, "987")  # rows dropped: red
    html = styles_of(frame(80, 24, snap=with_uplink("online", dropped=0)))
    assert "#008000" in style_before(html, "online ")  # green
