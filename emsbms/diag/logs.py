"""CAN log files: recording a site's buses, replaying a log with its timing, decoding a log offline.

The formats are python-can's, chosen by the file suffix: ``.log`` (candump -l), ``.asc``, ``.blf``,
``.csv`` and ``.trc``. Each frame keeps its bus where the format can hold it: candump logs name the
site bus, asc/blf/trc number it (the site's bus order, 1-based in the file, 0-based when read
back), csv has no channel column. Decoding runs a log through the same protocol adapters the edge
uses, with the log's own timestamps as the adapters' clock, and opens no bus.
"""

from __future__ import annotations

import csv
import heapq
import io
import itertools
import json
import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Any, TextIO

import can

from emsbms.can.bus import BusFactory, open_python_can
from emsbms.edge.dispatch import TICK_S
from emsbms.errors import BusError, ConfigError, EmsbmsError
from emsbms.protocols.base import Adapter, Output, frame_key
from emsbms.site import BusConfig, Site, build_adapters, load_profiles
from emsbms.types import Quality, Sample, Value

log = logging.getLogger(__name__)

REORDER_S = 0.2
"""The recorder holds frames this long so frames of several buses reach the file in time order."""
DRAIN_MAX = 100_000
"""At most this many frames are read from a bus's socket buffer after the recorder is told to stop."""
HOLD_MAX = 100_000
"""The recorder writes held frames early rather than hold more than this many (a very busy bus)."""


class LogFileError(ConfigError):
    """A log file cannot be read or written: names the file and what was wrong with it."""


class ChannelStyle(Enum):
    """How a log format stores which bus a frame came from."""

    NAME = "name"  # candump: the bus name, as text
    NUMBER = "number"  # asc, blf, trc: a channel number
    NONE = "none"  # csv: not at all


FORMATS: dict[str, ChannelStyle] = {
    ".log": ChannelStyle.NAME,
    ".asc": ChannelStyle.NUMBER,
    ".blf": ChannelStyle.NUMBER,
    ".csv": ChannelStyle.NONE,
    ".trc": ChannelStyle.NUMBER,
}
"""The log formats emsbms records, replays and decodes, by file suffix."""


def log_format(path: str | Path) -> str:
    """The format suffix of a log file name (``.log``, ``.asc``, ...); LogFileError for others."""
    suffix = Path(path).suffix.lower()
    if suffix not in FORMATS:
        raise LogFileError(
            f"{path}: unknown log format {suffix or '(no suffix)'!r}; expected one of {', '.join(FORMATS)}"
        )
    return suffix


def _cannot_hold(suffix: str, msg: can.Message) -> bool:
    """True for frames the format drops (python-can's trc writer skips error, remote and FD frames)."""
    return suffix == ".trc" and (msg.is_error_frame or msg.is_remote_frame or msg.is_fd)


# -- reading -------------------------------------------------------------------------------------


def read_log(path: str | Path) -> Iterator[can.Message]:
    """The frames of a log file, in file order, with absolute timestamps.

    asc files are read with their absolute start time (python-can's default is relative): the
    ``Begin Triggerblock`` line, local time, to the millisecond.
    """
    suffix = log_format(path)
    p = Path(path)
    if not p.is_file():
        raise LogFileError(f"{p}: no such log file")
    kwargs: dict[str, Any] = {"relative_timestamp": False} if suffix == ".asc" else {}
    try:
        reader = can.LogReader(p, **kwargs)
        for n, msg in enumerate(reader, 1):
            if msg.timestamp is None:
                raise LogFileError(f"{p}: frame {n} has no timestamp")
            if suffix == ".trc" and isinstance(msg.channel, int):
                msg.channel -= 1  # python-can writes trc channels 1-based and reads them back unchanged
            yield msg
    except LogFileError:
        raise
    except Exception as e:
        raise LogFileError(f"{p}: cannot read as a {suffix} log: {type(e).__name__}: {e}") from e


class BusMap:
    """Which site bus a logged frame belongs to.

    ``specs`` come from ``--bus``: ``NAME`` puts every frame on that bus; ``CHANNEL=NAME`` (repeatable)
    maps one log channel. Otherwise a frame goes to the bus whose name, or interface channel, equals
    its log channel (text), or to the bus at that position in the site (a number, as asc, blf and trc
    store it). Frames without a channel (csv), or with one no bus matches, go to the first bus.
    """

    def __init__(self, site: Site, specs: Sequence[str] = ()) -> None:
        if not site.buses:
            raise ConfigError(f"{site.path or '<site>'}: the site has no [[bus]]")
        self.site = site
        self.names = [b.name for b in site.buses]
        self.fixed: str | None = None
        self.explicit: dict[str, str] = {}
        for spec in specs:
            channel, sep, name = spec.rpartition("=")
            self._check(spec, name)
            if sep:
                self.explicit[channel] = name
            elif self.fixed is not None:
                raise ConfigError(f"--bus {spec!r}: only one --bus NAME (without CHANNEL=) may be given")
            else:
                self.fixed = name
        if self.fixed is not None and self.explicit:
            raise ConfigError("--bus NAME puts every frame on one bus: do not combine it with --bus CHANNEL=NAME")
        self.unmatched: dict[str, int] = {}
        self._cache: dict[object, str] = {}

    def _check(self, spec: str, name: str) -> None:
        if name not in self.names:
            raise ConfigError(f"--bus {spec!r}: no bus {name!r} in the site; known: {', '.join(self.names)}")

    def bus_for(self, channel: object) -> str:
        """The bus name of a frame logged on `channel` (a str, an int or None)."""
        if self.fixed is not None:
            return self.fixed
        try:
            return self._cache[channel]
        except KeyError:
            pass
        except TypeError:  # unhashable: treat as text
            channel = str(channel)
        name = self._resolve(channel)
        self._cache[channel] = name
        return name

    def _resolve(self, channel: object) -> str:
        text = None if channel is None else str(channel)
        if text is not None and text in self.explicit:
            return self.explicit[text]
        buses = self.site.buses
        if isinstance(channel, str):
            for b in buses:
                if channel == b.name:
                    return b.name
            for b in buses:
                if channel == b.channel:
                    return b.name
        elif isinstance(channel, int) and 0 <= channel < len(buses):
            return buses[channel].name
        if len(buses) > 1:
            key = "(none)" if text is None else text
            log.warning("log channel %s matches no bus of the site: its frames go to bus %s (see --bus)", key,
                        buses[0].name)
            self.unmatched[key] = 0
        return buses[0].name

    def note(self, channel: object) -> None:
        """Count a frame of an unmatched channel (for the summary)."""
        key = "(none)" if channel is None else str(channel)
        if key in self.unmatched:
            self.unmatched[key] += 1


# -- recording -----------------------------------------------------------------------------------


@dataclass
class RecordStats:
    """What a recording did: frames received per bus, written and skipped, bus failures."""

    received: dict[str, int] = field(default_factory=dict)
    written: int = 0
    skipped: int = 0  # frames the format cannot hold (trc: error, remote and FD frames)
    failures: int = 0  # receive errors (the bus is reopened)

    @property
    def total(self) -> int:
        return sum(self.received.values())


class Recorder:
    """Records raw frames from some buses into one log file, through python-can's can.Logger.

    One reader thread per bus puts frames on a queue; one writer thread holds them `reorder_s`
    seconds, so the file is in time order across buses, and writes them. `stop()` reads what is
    left in each bus's socket buffer, writes every frame and closes the file: nothing received
    is lost. Use as a context manager.
    """

    def __init__(
        self,
        path: str | Path,
        buses: Sequence[BusConfig],
        site_buses: Sequence[BusConfig] | None = None,
        factory: BusFactory = open_python_can,
        reorder_s: float = REORDER_S,
    ) -> None:
        self.path = Path(path)
        self.suffix = log_format(path)
        self.buses = list(buses)
        order = [b.name for b in (site_buses if site_buses is not None else buses)]
        style = FORMATS[self.suffix]
        self._stamp: dict[str, int | str] = {
            b.name: (order.index(b.name) if style is ChannelStyle.NUMBER else b.name) for b in self.buses
        }
        self._factory = factory
        self.reorder_s = reorder_s
        self.stats = RecordStats(received={b.name: 0 for b in self.buses})
        self._queue: queue.SimpleQueue[tuple[float, can.Message]] = queue.SimpleQueue()
        self._stop_readers = threading.Event()
        self._stop_writer = threading.Event()
        self._readers: list[threading.Thread] = []
        self._writer_thread: threading.Thread | None = None
        self._writer: Any = None
        self._error: BaseException | None = None
        self._seq = itertools.count()

    def start(self) -> Recorder:
        """Open the file and every bus (BusError if one cannot be opened), then start recording."""
        try:
            self._writer = can.Logger(self.path)
        except Exception as e:
            raise LogFileError(f"{self.path}: cannot write a {self.suffix} log: {e}") from e
        opened: list[tuple[BusConfig, Any]] = []
        try:
            for b in self.buses:
                opened.append((b, self._factory(b)))
        except Exception:
            for _, bus in opened:
                bus.shutdown()
            self._writer.stop()
            raise
        self._writer_thread = threading.Thread(target=self._write_loop, name="emsbms-log-writer", daemon=True)
        self._writer_thread.start()
        for b, bus in opened:
            t = threading.Thread(target=self._read_loop, args=(b, bus), name=f"emsbms-log-{b.name}", daemon=True)
            t.start()
            self._readers.append(t)
        return self

    @property
    def failed(self) -> bool:
        """True once writing the file has failed (`stop()` then raises)."""
        return self._error is not None

    def stop(self) -> RecordStats:
        """Stop reading, write every frame received, close the file. Raises if writing failed."""
        self._stop_readers.set()
        for t in self._readers:
            t.join()
        self._stop_writer.set()
        if self._writer_thread is not None:
            self._writer_thread.join()
        if self._error is not None:
            raise EmsbmsError(f"{self.path}: writing the log failed: {self._error}") from self._error
        return self.stats

    def __enter__(self) -> Recorder:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- threads ----------------------------------------------------------------------------

    def _take(self, name: str, msg: can.Message) -> None:
        if not msg.timestamp:
            msg.timestamp = time.time()
        msg.channel = self._stamp[name]
        self.stats.received[name] += 1
        self._queue.put((time.monotonic(), msg))

    def _read_loop(self, config: BusConfig, bus: Any) -> None:
        backoff = 0.1
        while not self._stop_readers.is_set():
            if bus is None:
                bus = self._reopen(config, backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            try:
                msg = bus.recv(0.1)
            except Exception as e:
                self.stats.failures += 1
                log.warning("bus %s failed while recording: %s; reopening it", config.name, e)
                _shutdown(bus)
                bus = None
                continue
            backoff = 0.1
            if msg is not None:
                self._take(config.name, msg)
        if bus is not None:
            self._drain(config.name, bus)
            _shutdown(bus)

    def _reopen(self, config: BusConfig, backoff: float) -> Any:
        if self._stop_readers.wait(backoff):
            return None
        try:
            return self._factory(config)
        except Exception as e:
            log.debug("bus %s: reopen failed: %s", config.name, e)
            return None

    def _drain(self, name: str, bus: Any) -> None:
        """What is already in the socket buffer when the stop came."""
        try:
            for _ in range(DRAIN_MAX):
                msg = bus.recv(0)
                if msg is None:
                    return
                self._take(name, msg)
        except Exception as e:
            log.debug("bus %s: drain stopped: %s", name, e)

    def _write_loop(self) -> None:
        held: list[tuple[float, int, float, can.Message]] = []
        try:
            while True:
                done = self._stop_writer.is_set()  # read before draining: a set flag means no more frames
                try:
                    arrived, msg = self._queue.get(timeout=0.05)
                    heapq.heappush(held, (msg.timestamp, next(self._seq), arrived, msg))
                    while True:
                        arrived, msg = self._queue.get_nowait()
                        heapq.heappush(held, (msg.timestamp, next(self._seq), arrived, msg))
                except queue.Empty:
                    pass
                limit = float("inf") if done else time.monotonic() - self.reorder_s
                while held and (held[0][2] <= limit or len(held) > HOLD_MAX):
                    self._write(heapq.heappop(held)[3])
                if done and not held and self._queue.empty():
                    return
        except BaseException as e:
            self._error = e
            log.error("writing %s failed: %s", self.path, e)
        finally:
            try:
                self._writer.stop()
            except Exception as e:
                self._error = self._error or e

    def _write(self, msg: can.Message) -> None:
        if _cannot_hold(self.suffix, msg):
            self.stats.skipped += 1
            return
        if self.suffix == ".asc" and self.stats.written == 0:
            _align_asc(self._writer, msg.timestamp)
        self._writer.on_message_received(msg)
        self.stats.written += 1


def _shutdown(bus: Any) -> None:
    try:
        bus.shutdown()
    except Exception:
        log.debug("bus shutdown raised", exc_info=True)


def _align_asc(writer: Any, first: float) -> None:
    """Start an asc file's measurement on the whole 100 ms before its first frame.

    The ``Begin Triggerblock`` line holds milliseconds only, and python-can 4.6 writes them without
    leading zeros (.018 s as ``.18``, read back as .180 s). A start on a whole 100 ms is written
    exactly, so the file's absolute times (start + relative) are exact to the microsecond.
    """
    start_ds = round(first * 1_000_000) // 100_000
    writer.log_event("emsbms log record", start_ds / 10)


# -- replay --------------------------------------------------------------------------------------


@dataclass
class ReplayStats:
    """What a replay did: frames sent per bus, frames skipped, the worst lag behind the schedule."""

    sent: dict[str, int] = field(default_factory=dict)
    skipped: int = 0  # error frames: they cannot be sent
    max_lag_s: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.sent.values())


def replay(
    frames: Iterable[can.Message],
    send: Callable[[str, can.Message], None],
    bus_map: BusMap,
    speed: float | None = 1.0,
    stop: threading.Event | None = None,
) -> ReplayStats:
    """Send logged frames with their relative timing (divided by `speed`; None: as fast as possible).

    The schedule is anchored when the first frame has been sent, so frame i is never sent before
    ``(t_i - t_0) / speed`` after frame 0; a late frame is sent at once (no drift accumulates).
    """
    if speed is not None and speed <= 0:
        raise ConfigError(f"--speed expected a positive factor, found {speed:g}")
    stop = stop or threading.Event()
    stats = ReplayStats()
    t0_log: float | None = None
    t0_wall = 0.0
    for msg in frames:
        if stop.is_set():
            break
        if msg.is_error_frame:
            stats.skipped += 1
            continue
        if speed is not None and t0_log is not None:
            due = t0_wall + (msg.timestamp - t0_log) / speed
            left = due - time.monotonic()
            if left > 0 and stop.wait(left):
                break
            stats.max_lag_s = max(stats.max_lag_s, time.monotonic() - due)
        bus = bus_map.bus_for(msg.channel)
        bus_map.note(msg.channel)
        send(bus, _outgoing(msg))
        stats.sent[bus] = stats.sent.get(bus, 0) + 1
        if t0_log is None:
            t0_log, t0_wall = msg.timestamp, time.monotonic()
    return stats


def _outgoing(msg: can.Message) -> can.Message:
    """A fresh frame to send: the logged ID, flags and data, no timestamp or channel."""
    return can.Message(
        arbitration_id=msg.arbitration_id, is_extended_id=msg.is_extended_id, is_remote_frame=msg.is_remote_frame,
        dlc=msg.dlc, data=msg.data, is_fd=msg.is_fd, bitrate_switch=msg.bitrate_switch,
        error_state_indicator=msg.error_state_indicator, is_rx=False,
    )


class Senders:
    """Opens site buses on first use and sends on them; retries a full transmit queue for up to 1 s."""

    def __init__(self, site: Site, factory: BusFactory = open_python_can) -> None:
        self.site = site
        self._factory = factory
        self._buses: dict[str, Any] = {}

    def open(self, name: str) -> Any:
        bus = self._buses.get(name)
        if bus is None:
            bus = self._buses[name] = self._factory(self.site.bus(name))
        return bus

    def send(self, name: str, msg: can.Message) -> None:
        bus = self.open(name)
        deadline = time.monotonic() + 1.0
        while True:
            try:
                bus.send(msg, 0.1)
                return
            except can.CanError as e:
                if time.monotonic() > deadline:
                    raise BusError(f"bus {name}: send of 0x{msg.arbitration_id:X} failed: {e}") from e
                time.sleep(0.001)

    def close(self) -> None:
        for bus in self._buses.values():
            _shutdown(bus)
        self._buses.clear()

    def __enter__(self) -> Senders:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- offline decoding ----------------------------------------------------------------------------


@dataclass
class DecodeStats:
    """What an offline decode did, per the whole log."""

    frames: int = 0
    decoded: int = 0
    unknown: int = 0  # no device of the frame's bus claims its ID
    bad: int = 0  # a device's ID outside the profile's strict length bounds, a remote frame, ...
    short: int = 0  # shorter than the message declares: decoded in part (the signals the bytes hold)
    bad_values: int = 0  # numbers decoded as NaN or infinity: a sample with quality invalid, or none
    error_frames: int = 0
    samples: int = 0
    last_bad: str = ""
    per_bus: dict[str, int] = field(default_factory=dict)


class _BusTable:
    """The adapters of one bus, by dispatch key, as the Dispatcher routes them."""

    def __init__(self, adapters: Sequence[Adapter]) -> None:
        self.table: dict[int, list[Adapter]] = {}
        for a in adapters:
            for key in a.frame_keys():
                self.table.setdefault(key, []).append(a)
        self.unmatched = [a for a in adapters if a.wants_unmatched]

    def handlers(self, msg: can.Message) -> list[Adapter]:
        return self.table.get(frame_key(msg.arbitration_id, msg.is_extended_id)) or self.unmatched


def offline_site(site: Site, protocols: dict[str, str]) -> Site:
    """The site as the offline decoder builds it: CANopen devices decode by the EDS's PDO mapping.

    Offline there is no device to read the mapping from over SDO. `protocols` maps device names
    to their profiles' protocols.
    """
    devices = [
        replace(d, options={**d.options, "pdo_mapping": "eds"}) if protocols.get(d.name) == "canopen" else d
        for d in site.devices
    ]
    return replace(site, devices=devices)


class OfflineDecoder:
    """Runs logged frames through the site's protocol adapters, without opening any bus.

    The adapters' clock is the log: ``start`` gets the first frame's time, every frame is handed
    over with its own timestamp, and ``tick`` runs every 10 ms of log time, so supervision
    (stale, lost) follows the capture, not the wall clock. Frames the adapters would send are
    dropped. A channel going stale gives a row with its last value and quality ``stale``.
    """

    def __init__(self, site: Site, bus_map: BusMap | None = None, tick_s: float = TICK_S) -> None:
        profiles = load_profiles(site)
        self.site = offline_site(site, {name: p.protocol for name, p in profiles.items()})
        self.adapters = build_adapters(self.site, profiles)
        self.bus_map = bus_map or BusMap(site)
        self.tick_us = max(1, round(tick_s * 1_000_000))
        self.units = {info.address: info.unit for a in self.adapters.values() for info in a.channels()}
        self._tables = {
            b.name: _BusTable([a for a in self.adapters.values() if a.device.bus == b.name]) for b in self.site.buses
        }
        self._last: dict[str, Value] = {}
        self._stale: set[str] = set()
        self.stats = DecodeStats(per_bus={b.name: 0 for b in self.site.buses})

    def decode(self, frames: Iterable[can.Message]) -> Iterator[Sample]:
        """The samples the frames give, in log order (ticks in between, as the edge would)."""
        next_tick: int | None = None
        ts = 0
        for msg in frames:
            ts = round(msg.timestamp * 1_000_000)
            if next_tick is None:
                next_tick = ts
                for a in self.adapters.values():
                    yield from self._emit(a.start(ts), ts)
            while next_tick <= ts:
                yield from self._tick(next_tick)
                next_tick += self.tick_us
            yield from self._frame(msg, ts)
        if next_tick is not None:
            yield from self._tick(ts)  # the state right after the last frame; never beyond the log

    def _tick(self, now: int) -> Iterator[Sample]:
        for a in self.adapters.values():
            yield from self._emit(a.tick(now), now)

    def _frame(self, msg: can.Message, ts: int) -> Iterator[Sample]:
        st = self.stats
        st.frames += 1
        if msg.is_error_frame:
            st.error_frames += 1
            return
        bus = self.bus_map.bus_for(msg.channel)
        self.bus_map.note(msg.channel)
        st.per_bus[bus] += 1
        claimed = ok = False
        for a in self._tables[bus].handlers(msg):
            short, bad = a.counters()
            try:
                out = a.on_frame(msg, ts)
            except Exception as e:  # adapters must not raise; count it if one does
                out = Output(error=f"{a.device.name}: adapter raised {e!r}")
            short_after, bad_after = a.counters()
            st.short += short_after - short
            st.bad_values += bad_after - bad
            if out is None:
                continue
            claimed = True
            if out.error is not None:
                st.last_bad = out.error
                continue
            ok = True
            yield from self._emit(out, ts)
        if ok:
            st.decoded += 1
        elif claimed:
            st.bad += 1
        else:
            st.unknown += 1

    def _emit(self, out: Output, now: int) -> Iterator[Sample]:
        for s in out.samples:
            self._last[s.address] = s.value
            self._stale.discard(s.address)
            self.stats.samples += 1
            yield s
        for address in out.stale:
            if address in self._last and address not in self._stale:  # as the registry: once, with the last value
                self._stale.add(address)
                self.stats.samples += 1
                yield Sample(address, self._last[address], now, Quality.STALE)


# -- writing decoded samples ---------------------------------------------------------------------


class SampleFormat(Enum):
    """How `emsbms decode` writes samples."""

    CSV = "csv"
    JSONL = "jsonl"


COLUMNS = ("address", "value", "unit", "timestamp_us", "quality")


def plain(value: Value) -> Value:
    """A value as written: enums by their value (CommState 'OK', alarm levels 0/1/2), floats to 12 digits.

    Twelve significant digits hold any scaled CAN signal (a 32-bit raw value has ten) and drop the
    binary noise of the scaling: 5212 x 0.01 is written 52.12, not 52.120000000000005.
    """
    if isinstance(value, Enum):
        v: Value = value.value
        return v
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.12g}")
    return value


def write_samples(samples: Iterable[Sample], units: dict[str, str], out: TextIO, fmt: SampleFormat) -> int:
    """Write samples as csv (a header row; booleans as 1/0) or JSON lines; returns the count."""
    n = 0
    if fmt is SampleFormat.CSV:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(COLUMNS)
        for s in samples:
            value = plain(s.value)
            if isinstance(value, bool):
                value = int(value)
            writer.writerow((s.address, "" if value is None else value, units.get(s.address, ""), s.timestamp_us,
                             s.quality.value))
            n += 1
        return n
    for s in samples:
        row = dict(zip(COLUMNS, (s.address, plain(s.value), units.get(s.address, ""), s.timestamp_us,
                                 s.quality.value), strict=True))
        out.write(json.dumps(row, ensure_ascii=False) + "\n")
        n += 1
    return n


def decode_to_text(path: str | Path, site: Site, fmt: SampleFormat = SampleFormat.JSONL,
                   specs: Sequence[str] = ()) -> str:
    """Decode a log file into csv or JSON-lines text (handy in scripts and tests)."""
    decoder = OfflineDecoder(site, BusMap(site, specs))
    buf = io.StringIO()
    write_samples(decoder.decode(read_log(path)), decoder.units, buf, fmt)
    return buf.getvalue()
