"""The device abstraction: one registry of every channel, with snapshots and subscriptions."""

from __future__ import annotations

import fnmatch
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from emsbms.errors import ReadTimeout, UnknownAddressError
from emsbms.types import ChannelInfo, Quality, Reading, Sample

log = logging.getLogger(__name__)

_tuple_new = tuple.__new__  # builds a Reading without NamedTuple.__new__'s Python-level call

Callback = Callable[[str, Reading], None]


class Snapshot(Mapping[str, Reading]):
    """A consistent copy of every channel, taken at one instant (`taken_us`)."""

    def __init__(self, readings: dict[str, Reading], taken_us: int) -> None:
        self._readings = readings
        self.taken_us = taken_us

    def __getitem__(self, address: str) -> Reading:
        return self._readings[address]

    def __iter__(self) -> Iterator[str]:
        return iter(self._readings)

    def __len__(self) -> int:
        return len(self._readings)

    def value(self, address: str) -> object:
        """The value of a channel, or None if it has none."""
        r = self._readings.get(address)
        return None if r is None else r.value


@dataclass(eq=False)
class Subscription:
    """A registered callback; call `cancel()` (or use as a context manager) to stop it."""

    pattern: str
    callback: Callback
    _registry: Registry | None = field(default=None, repr=False)

    def matches(self, address: str) -> bool:
        return fnmatch.fnmatchcase(address, self.pattern)

    def cancel(self) -> None:
        if self._registry is not None:
            self._registry._remove(self)
            self._registry = None

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Registry:
    """Holds the current reading of every channel. Only the registry owns channel state."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._info: dict[str, ChannelInfo] = {}
        self._units: dict[str, str] = {}  # address -> unit, read on the hot path
        self._readings: dict[str, Reading] = {}
        self._subs: list[Subscription] = []
        self._route: dict[str, tuple[Subscription, ...]] = {}

    # -- metadata ---------------------------------------------------------------------------

    def declare(self, infos: Iterable[ChannelInfo]) -> None:
        """Declare channels (their units and kinds); values arrive later through `apply`."""
        with self._lock:
            for info in infos:
                self._info[info.address] = info
                self._units[info.address] = info.unit
            self._route = {}

    def info(self, address: str) -> ChannelInfo:
        try:
            return self._info[address]
        except KeyError:
            raise UnknownAddressError(self._unknown(address)) from None

    def addresses(self) -> list[str]:
        return list(self._info)

    def _unknown(self, address: str) -> str:
        device = address.split("/", 1)[0]
        devices = sorted({a.split("/", 1)[0] for a in self._info})
        if device not in devices:
            return f"unknown device {device!r} in {address!r}; known devices: {', '.join(devices)}"
        names = sorted(a.split("/", 1)[1] for a in self._info if a.startswith(device + "/"))
        return f"unknown channel {address!r}; {device} has: {', '.join(names)}"

    # -- updates (hot path) -----------------------------------------------------------------

    def apply(self, samples: Iterable[Sample], stale: Iterable[str] = ()) -> None:
        """Store samples and mark addresses stale, then tell the subscribers."""
        units = self._units
        new = _tuple_new
        changed: list[tuple[str, Reading]] = []
        with self._lock:
            readings = self._readings
            if self._subs:
                add = changed.append
                route = self._route
                any_change = False
                for address, value, ts, quality in samples:
                    r = new(Reading, (value, units.get(address, ""), ts, quality))
                    readings[address] = r
                    any_change = True
                    if route.get(address, True):  # () = routed, nobody subscribes: nothing to tell
                        add((address, r))
            else:  # nobody to tell: no list of changes to build
                any_change = False
                for address, value, ts, quality in samples:
                    readings[address] = new(Reading, (value, units.get(address, ""), ts, quality))
                    any_change = True
            for address in stale:
                old = readings.get(address)
                if old is not None and old.quality is not Quality.STALE:
                    r = old._replace(quality=Quality.STALE)
                    readings[address] = r
                    changed.append((address, r))
                    any_change = True
            if any_change:
                self._changed.notify_all()
        if self._subs and changed:
            self._notify(changed)

    def _notify(self, changed: list[tuple[str, Reading]]) -> None:
        route = self._route
        for address, reading in changed:
            subs = route.get(address)
            if subs is None:
                subs = tuple(s for s in self._subs if s.matches(address))
                route[address] = subs
            for sub in subs:
                try:
                    sub.callback(address, reading)
                except Exception:
                    log.exception("subscriber %s raised for %s", sub.pattern, address)

    # -- reading ----------------------------------------------------------------------------

    def get(self, address: str) -> Reading | None:
        return self._readings.get(address)

    def snapshot(self) -> Snapshot:
        """One consistent copy of every reading."""
        with self._lock:
            return Snapshot(dict(self._readings), time.time_ns() // 1000)

    def wait_for(self, address: str, after_us: int, timeout: float) -> Reading:
        """Wait for a reading of `address` with quality ok received at or after `after_us`."""
        if address not in self._info:
            raise UnknownAddressError(self._unknown(address))
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                r = self._readings.get(address)
                if r is not None and r.timestamp_us >= after_us and r.quality is not Quality.STALE:
                    return r
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ReadTimeout(f"no fresh value of {address} within {timeout:g} s")
                self._changed.wait(left)

    # -- subscriptions ----------------------------------------------------------------------

    def subscribe(self, pattern: str, callback: Callback) -> Subscription:
        """Call `callback(address, reading)` on every update of a matching address.

        `pattern` is a glob (``bms_0/*``, ``*/Soc``). Callbacks run on a receive thread:
        keep them short, or hand the work to a queue.
        """
        sub = Subscription(pattern, callback, self)
        with self._lock:
            self._subs.append(sub)
            self._route = {}
        return sub

    def _remove(self, sub: Subscription) -> None:
        with self._lock:
            if sub in self._subs:
                self._subs.remove(sub)
            self._route = {}
