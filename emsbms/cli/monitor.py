"""`emsbms monitor`: the live loop (snapshots, event log, history, keys) around the pure renderer."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console, RenderableType
from rich.live import Live
from rich.logging import RichHandler

from emsbms.alarms.sources import start_alarms
from emsbms.cli.common import Duration, handle_errors, state, stop_signals
from emsbms.cli.run import core_events_to, start_core
from emsbms.edge import Edge
from emsbms.edge.dispatch import now_us
from emsbms.edge.events import Event, EventLog, EventLogHandler
from emsbms.edge.lock import EdgeLock
from emsbms.edge.registry import Snapshot
from emsbms.errors import ConfigError
from emsbms.monitor import DeviceMeta, Filters, FrameRow, History, Show, render
from emsbms.monitor._keys import Controls, KeyReader, Pager
from emsbms.site import Site

if TYPE_CHECKING:
    from emsbms.core.service import EdgeCore

log = logging.getLogger(__name__)

REFRESH_S = 0.2
"""Redraw period (5 Hz), on the main thread, from a registry snapshot."""

PAGE_S = 5.0
"""When the channels do not fit, the next page is shown after this many seconds."""


def make_filters(site: Site, devices: list[str], buses: list[str]) -> Filters:
    """Filters from --device and --bus: --bus narrows the devices to those on it, and --device
    alone shows only the buses of those devices."""
    device_names = [d.name for d in site.devices]
    bus_names = [b.name for b in site.buses]
    for d in devices:
        if d not in device_names:
            raise ConfigError(f"--device {d!r}: not a device of the site; known: {', '.join(device_names)}")
    for b in buses:
        if b not in bus_names:
            raise ConfigError(f"--bus {b!r}: not a bus of the site; known: {', '.join(bus_names)}")
    shown = devices or device_names
    if buses:
        shown = [d.name for d in site.devices if d.bus in buses and d.name in shown]
        if not shown:
            shown = ["-"]  # nothing on those buses matches: show no device
    if devices and not buses:
        buses = [b for b in bus_names if any(d.bus == b and d.name in devices for d in site.devices)]
    return Filters(devices=tuple(shown) if devices or buses else (), buses=tuple(buses))


def watch(edge: Edge) -> EventLog:
    """An event log fed by `edge`'s registry (its devices and buses) and its command results.

    Call it before the edge starts, so the first transitions are seen.
    """
    log = EventLog()
    log.attach(edge.registry, buses=[b.name for b in edge.site.buses])
    edge.on_command(log.post_command)
    return log


def device_metas(edge: Edge) -> dict[str, DeviceMeta]:
    """Bus, profile and profile version of every device of `edge`."""
    return {
        d.name: DeviceMeta(d.bus, edge.profiles[d.name].name, edge.profiles[d.name].version)
        for d in edge.site.devices
    }


def frame_rows(edge: Edge) -> list[FrameRow]:
    """Every ID each bus of `edge` received (its reader's frame table), with the device that
    claims it: the devices whose profile lists the ID; for an ID no profile lists, the devices
    that look at unlisted frames (CANopen, J1939), unless the dispatcher found none claimed it."""
    rows: list[FrameRow] = []
    for bus, runner in edge.runners.items():
        dispatcher = edge.dispatchers[bus]
        claims: dict[int, list[str]] = {}
        for adapter in list(dispatcher.adapters):
            for key in adapter.frame_keys():
                claims.setdefault(key, []).append(adapter.device.name)
        open_to = [a.device.name for a in dispatcher.adapters if a.wants_unmatched]
        unknown = dispatcher.unknown_keys
        for stat in runner.frames.stats():
            names = claims.get(stat.key) or ([] if stat.key in unknown else open_to)
            rows.append(FrameRow(bus, stat, ", ".join(names)))
    return rows


@dataclass(frozen=True)
class Frozen:
    """What a paused monitor keeps drawing: the snapshot, its time, the events and frames then."""

    snapshot: Snapshot
    now_us: int
    events: tuple[Event, ...]
    events_total: int
    frames: tuple[FrameRow, ...]


@contextmanager
def logs_into(events: EventLog, enabled: bool) -> Iterator[None]:
    """While the block runs, log warnings go to `events` instead of the terminal, where they
    would scroll the live screen (when `enabled`: the monitor draws on a terminal)."""
    if not enabled:
        yield
        return
    root = logging.getLogger()
    muted = [h for h in root.handlers if isinstance(h, RichHandler)
             or (type(h) is logging.StreamHandler and h.stream in (sys.stderr, sys.stdout))]
    for h in muted:
        root.removeHandler(h)
    handler = EventLogHandler(events)
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        for h in muted:
            root.addHandler(h)


class Screen:
    """One monitor's state between redraws: its event log, history, key controls, and what a
    pause froze. `frame(width, height, hint)` drains the log and draws."""

    def __init__(self, edge: Edge, log: EventLog, filters: Filters, title: str) -> None:
        self.edge = edge
        self.log = log
        self.filters = filters
        self.title = title
        self.history = History()
        self.metas = device_metas(edge)
        self.controls = Controls(Pager(time.monotonic(), PAGE_S))
        self.frozen: Frozen | None = None

    def feed(self, data: bytes, now_s: float) -> None:
        """Keys from the terminal; a pause freezes what is on the screen at the key press."""
        was_paused = self.controls.paused
        self.controls.feed(data, now_s)
        if self.controls.paused and not was_paused:
            self.log.drain()
            self.frozen = self._now()

    def _now(self) -> Frozen:
        rows = tuple(frame_rows(self.edge)) if self.controls.show is Show.FRAMES else ()
        return Frozen(self.edge.snapshot(), now_us(), tuple(self.log.events()), self.log.total, rows)

    def frame(self, width: int, height: int, hint: bool = True) -> RenderableType:
        controls = self.controls
        self.log.drain()  # also while paused: the inbox stays bounded
        if not controls.paused:
            self.frozen = None
        elif self.frozen is None:
            self.frozen = self._now()
        elif controls.show is Show.FRAMES and not self.frozen.frames:  # paused before the frames page was shown
            self.frozen = replace(self.frozen, frames=tuple(frame_rows(self.edge)))
        state_now = self.frozen or self._now()
        if self.frozen is None:
            self.history.sample(state_now.snapshot, state_now.now_us)
        shown = replace(self.filters, page=controls.page(time.monotonic()), text=controls.text, show=controls.show)
        return render(state_now.snapshot, state_now.now_us, width, height, shown, self.title,
                      history=self.history, events=state_now.events, devices=self.metas,
                      events_total=state_now.events_total, status=controls.status(hint), frames=state_now.frames)


def show(
    edge: Edge,
    duration: float | None,
    filters: Filters,
    title: str,
    console: Console | None = None,
    events: EventLog | None = None,
) -> None:
    """Draw the monitor until q, Ctrl-C, SIGTERM or `duration` seconds.

    Each redraw takes a snapshot, drains the event log and samples the history, all on this
    (the main) thread; the receive threads only append to the event log's inbox. On a
    terminal, keys (`Controls`) pause the view (the events and frames too), show the frames
    or the event details page, filter, and turn the pages.
    """
    console = console or Console()
    screen = Screen(edge, events if events is not None else watch(edge), filters, title)
    controls = screen.controls
    log = screen.log
    deadline = None if duration is None else time.monotonic() + duration
    live = Live(console=console, auto_refresh=False, redirect_stderr=True)
    with stop_signals() as stop, KeyReader(stop, console.is_terminal) as keys, logs_into(log, console.is_terminal), \
            live:
        while not stop.is_set():
            size = console.size
            live.update(screen.frame(size.width, max(size.height - 1, 5), keys.active), refresh=True)
            left = REFRESH_S if deadline is None else min(REFRESH_S, deadline - time.monotonic())
            if left <= 0:
                break
            data = keys.read(left)
            if data:
                screen.feed(data, time.monotonic())
            if controls.quit:
                stop.set()
    if not console.is_terminal:
        console.line()  # Live leaves the last line open when it is not drawing on a terminal


@handle_errors
def command(
    ctx: typer.Context,
    duration: Duration = None,
    device: Annotated[
        list[str] | None, typer.Option("--device", metavar="NAME", help="show only this device (repeatable)")
    ] = None,
    bus: Annotated[
        list[str] | None, typer.Option("--bus", metavar="NAME", help="show only this bus and its devices (repeatable)")
    ] = None,
) -> None:
    """A live view of the buses, the devices, what happened (EMCY, DM1, comm loss, commands) and
    every channel with a sparkline of its last minute. Keys: q quit, space pause, f frames (every
    ID received), e events in full, / filter channels and IDs, arrows turn pages."""
    site = state(ctx).load_site()
    filters = make_filters(site, list(device or []), list(bus or []))
    edge = Edge(site)
    events = watch(edge)
    with uplink_of(edge, state(ctx).db, events) as core, edge:
        if core is not None:
            core.start()
        try:
            show(edge, duration, filters, f"emsbms monitor · {site.name}", events=events)
        finally:
            if core is not None:
                core.stop()  # before the edge stops: a write may be on its way


@contextmanager
def uplink_of(edge: Edge, db: Path, events: EventLog | None = None) -> Iterator[EdgeCore | None]:
    """The site's [uplink], core and alarm rules, run by the monitor when no other edge holds `db`: the
    uplink's pane shows uplink/*, the alarm pane the rules' states; for a site with [[controller]] tables
    it yields the core (not started: the caller starts it once the edge runs, and stops it). Their events
    go to `events`; the core takes the cloud's commands.

    An `emsbms run` on the same database owns them all (one MQTT session per site, one writer per device,
    one alarm state): the monitor then watches the buses only, and says so when the site configures any.
    """
    try:
        lock = EdgeLock.acquire(db)
    except ConfigError as e:
        configured = edge.site.uplink is not None or edge.site.controllers or edge.site.rules
        log.log(logging.WARNING if configured else logging.DEBUG, "monitor: no uplink, core or alarms from here: %s", e)
        yield None
        return
    link = None
    alarms = None
    try:
        core = start_core(edge, db)
        if core is not None and events is not None:
            core_events_to(core, events)
        if edge.site.uplink is not None:
            from emsbms.uplink.link import EdgeUplink  # paho-mqtt is loaded only for a site with an [uplink]

            link = EdgeUplink(edge, edge.site.uplink, db, writer=None if core is None else core.writer)
            link.start()
        alarms = start_alarms(edge, db, link, on_event=None if events is None else events.post_event)
        yield core
    finally:
        if alarms is not None:
            alarms.close()
        if link is not None:
            link.close()
        lock.release()
