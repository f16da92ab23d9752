"""The edge: builds buses, adapters and the registry from a site and runs them."""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import can

from emsbms.can.bus import BusFactory, BusRunner, open_python_can
from emsbms.db import load_stored_site
from emsbms.edge.commands import CommandChannel
from emsbms.edge.dispatch import Dispatcher, now_us
from emsbms.edge.lock import EdgeLock
from emsbms.edge.reconfig import SiteChange, plan_change
from emsbms.edge.registry import Callback, Registry, Snapshot, Subscription
from emsbms.edge.workers import RemoteCommands, WorkerPool
from emsbms.errors import ConfigError, UnknownAddressError, UnsupportedError
from emsbms.profile.models import Profile
from emsbms.protocols import adapter_class
from emsbms.protocols.base import Adapter
from emsbms.site import Site, build_adapters, load_profiles, load_site
from emsbms.site.groups import plan_groups
from emsbms.types import ChannelInfo, ChannelKind, CommandResult, Reading, Sample

log = logging.getLogger(__name__)


class _WorkerIO:
    """The AdapterIO handed to background workers."""

    def __init__(self, dispatcher: Dispatcher, stop: threading.Event) -> None:
        self._dispatcher = dispatcher
        self.stop = stop

    def send(self, msg: can.Message) -> None:
        self._dispatcher.runner.send(msg)

    def publish(self, samples: Sequence[Sample], stale: Sequence[str] = ()) -> None:
        self._dispatcher.registry.apply(samples, stale)

    def now_us(self) -> int:
        return now_us()


class Edge:
    """Every bus and device of a site, as one registry of channels.

    Use as a context manager::

        with Edge.from_site("site.toml") as edge:
            print(edge.read("bms_0/Soc", timeout=2.0))
            edge.write("bms_0/SetChargeCurrent", 50.0)
    """

    def __init__(self, site: Site, bus_factory: BusFactory = open_python_can, queue_size: int = 50_000,
                 registry: Registry | None = None) -> None:
        self.site = site
        self.profiles = load_profiles(site)
        self.adapters = build_adapters(site, self.profiles)
        self.registry = Registry() if registry is None else registry
        self._bus_factory, self._queue_size = bus_factory, queue_size
        plan = {} if bus_factory is not open_python_can and site.workers == "auto" else \
            plan_groups(site.buses, site.groups, site.workers, os.cpu_count() or 1)
        self.pool = WorkerPool(site, plan, self.registry, type(self), bus_factory, queue_size) if plan else None
        """The bus groups' worker processes (docs/architecture.md, "Bus groups"); None: one process."""
        local = [b for b in site.buses if self.pool is None or b.name not in self.pool.owner]
        self.runners: dict[str, BusRunner] = {
            b.name: BusRunner(b, bus_factory, queue_size=queue_size) for b in local
        }
        self.dispatchers: dict[str, Dispatcher] = {}
        for b in local:
            mine = [a for a in self.adapters.values() if a.device.bus == b.name]
            self.dispatchers[b.name] = Dispatcher(self.runners[b.name], mine, self.registry)
        for d in self.dispatchers.values():
            self.registry.declare(d.channels())
        for a in self.adapters.values():
            self.registry.declare(a.channels())
        self.commands: dict[str, CommandChannel | RemoteCommands] = {
            name: CommandChannel(a, self.dispatchers[a.device.bus]) if self.pool is None or a.device.bus
            not in self.pool.owner else self.pool.commands(name, a.device.bus) for name, a in self.adapters.items()
        }
        self.started_us = 0
        self._running = False
        self._stop_workers = threading.Event()
        self._workers: list[threading.Thread] = []
        self._device_workers: dict[str, tuple[threading.Event, threading.Thread]] = {}
        self._activation_lock = threading.Lock()
        self._command_listeners: list[Callable[[CommandResult], None]] = []
        self.lock: EdgeLock | None = None  # the database's lock, when from_db took it (stop() releases it)
        self.retired: set[str] = set()
        """Addresses of removed devices and buses: still in the registry, marked stale, in no birth."""

    @classmethod
    def from_site(cls, path: str | Path, **kwargs: Any) -> Edge:
        """Build an edge from a site TOML file."""
        return cls(load_site(path), **kwargs)

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> Edge:
        """Open every bus and start receiving.

        A bus that cannot be opened now is DOWN (its `<bus>/State` and `LastError` say so) and is
        opened with the reopen backoff while the other buses run. Raises BusError only for an
        interface python-can does not know.
        """
        if self._running:
            return self
        self.started_us = now_us()
        opened: list[BusRunner] = []
        try:
            for r in self.runners.values():
                r.open()
                opened.append(r)
        except Exception:
            for r in opened:
                r.close()
            raise
        for d in self.dispatchers.values():
            d.start()
        if self.pool is not None:
            try:
                self.pool.start()
            except BaseException:
                for d in self.dispatchers.values():
                    d.stop()
                for r in self.runners.values():
                    r.close()
                raise
        self._stop_workers.clear()
        for a in self.adapters.values():
            if a.has_background and a.device.bus in self.dispatchers:  # a grouped bus's adapters run in its worker
                self._start_worker(a)
        self._running = True
        return self

    @staticmethod
    def _run_background(adapter: Adapter, io: _WorkerIO) -> None:
        while not io.stop.is_set():
            try:
                adapter.background(io)
                return
            except Exception:
                log.exception("background worker of %s failed; restarting in 1 s", adapter.device.name)
                io.stop.wait(1.0)

    def stop(self) -> None:
        """Stop every thread and close every bus; give up the database lock `from_db` took."""
        if self.lock is not None:
            lock, self.lock = self.lock, None
            try:
                self._stop_running()
            finally:
                lock.release()
            return
        self._stop_running()

    def _stop_running(self) -> None:
        if not self._running:
            return
        self._running = False
        self._stop_workers.set()
        for event, _ in self._device_workers.values():
            event.set()
        self._device_workers.clear()
        for t in self._workers:
            t.join(3.0)
        self._workers.clear()
        for d in self.dispatchers.values():
            d.stop()
        for r in self.runners.values():
            r.close()
        if self.pool is not None:
            self.pool.stop()

    def __enter__(self) -> Edge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the public API ---------------------------------------------------------------------

    def read(self, address: str, timeout: float = 2.0, after_us: int | None = None, fresh: bool = False) -> Reading:
        """The reading of `address` received since the edge started (or since `after_us`).

        Waits up to `timeout` seconds for one; raises ReadTimeout if none arrives. With `fresh`,
        asks the device now on the caller's thread (CANopen: SDO upload) instead of waiting for
        its cyclic frames; a protocol without on-demand reads raises EmsbmsError.
        """
        if fresh:
            return self._read_fresh(address, timeout)
        since = self.started_us if after_us is None else after_us
        return self.registry.wait_for(address, since, timeout)

    def _read_fresh(self, address: str, timeout: float) -> Reading:
        self.registry.info(address)  # raises UnknownAddressError
        device, name = address.split("/", 1)
        adapter = self.adapters[device]
        if adapter.device.bus not in self.dispatchers:
            raise UnsupportedError(f"{address}: cannot read on demand: its bus runs in a worker process (a bus group)")
        try:
            sample = adapter.fresh(name, timeout)
        except NotImplementedError as e:
            raise UnsupportedError(f"{address}: cannot read on demand: {e}") from e
        self.registry.apply([sample])
        reading = self.registry.get(address)
        assert reading is not None
        return reading

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult:
        """Validate, encode, send and confirm a command, e.g. ``write("bms_0/SetChargeCurrent", 50)``.

        Returns a CommandResult whose status is acked, sent, rejected or timeout. An unknown
        address raises UnknownAddressError.
        """
        info = self.registry.info(address)
        if info.kind is not ChannelKind.COMMAND:
            device, name = address.split("/", 1)
            known = ", ".join(self.adapters[device].command_names) or "none"
            raise UnknownAddressError(f"{address} is not a command channel; {device} commands: {known}")
        device, name = address.split("/", 1)
        result = self.commands[device].write(name, value, timeout)
        for listener in list(self._command_listeners):
            try:
                listener(result)
            except Exception:
                log.exception("command listener %r raised for %s", listener, address)
        return result

    def on_command(self, callback: Callable[[CommandResult], None]) -> Callable[[], None]:
        """Call `callback(result)` after every `write` (on the writer's thread; keep it short).

        Returns a function that removes the callback.
        """
        self._command_listeners.append(callback)

        def remove() -> None:
            if callback in self._command_listeners:
                self._command_listeners.remove(callback)

        return remove

    def snapshot(self) -> Snapshot:
        """A consistent copy of every channel, taken at one instant."""
        return self.registry.snapshot()

    def subscribe(self, pattern: str, callback: Callback) -> Subscription:
        """Call `callback(address, reading)` on every update of channels matching `pattern`."""
        return self.registry.subscribe(pattern, callback)

    def wait_until(self, predicate: Callable[[Snapshot], bool], timeout: float) -> bool:
        """Poll snapshots until `predicate` holds or `timeout` passes (handy in scripts)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self.snapshot()):
                return True
            time.sleep(0.02)
        return predicate(self.snapshot())

    # -- starting from the database, hot activation ------------------------------------------

    @classmethod
    def from_db(cls, path: str | Path, lock: EdgeLock | None = None, identity: Site | None = None,
                **kwargs: Any) -> Edge:
        """Build an edge from the devices and buses commissioned in the database at `path`.

        Their profiles come from the database's profile store: no profile, DBC or EDS file is read.
        One edge per database: it takes the database's `EdgeLock` first (ConfigError naming the
        holder's PID if another edge has it) and holds it until `stop()` (released at once if the
        edge cannot be built). A caller that holds the lock already (`emsbms run`) hands it in as
        `lock`, and releases it itself. With `identity` (the edge's own site file), the site's org,
        name and ``[uplink]`` come from it: the database holds buses and devices, no credentials.
        """
        held = EdgeLock.acquire(path) if lock is None else None
        try:
            site = load_stored_site(path)
            if identity is not None:
                site = replace(site, org=identity.org, name=identity.name, uplink=identity.uplink)
            edge = cls(site, **kwargs)
        except BaseException:
            if held is not None:
                held.release()
            raise
        edge.lock = held
        return edge

    def _start_worker(self, adapter: Adapter) -> None:
        """Give an adapter with has_background its worker thread, with a stop event of its own."""
        stop = threading.Event()
        io = _WorkerIO(self.dispatchers[adapter.device.bus], stop)
        t = threading.Thread(target=self._run_background, args=(adapter, io),
                             name=f"emsbms-worker-{adapter.device.name}", daemon=True)
        self._device_workers[adapter.device.name] = (stop, t)
        t.start()
        self._workers.append(t)

    def activate_profile(self, profile: Profile, devices: Sequence[str] | None = None) -> list[str]:
        """Switch the devices that use `profile.name` (or the named `devices`) to `profile`, running or not.

        Per device, atomically: the new adapter is built and checked first (a ProfileError or
        ConfigError leaves the device on its working profile), then swapped in under its
        dispatcher's lock, which rebuilds that bus's dispatch table. Frames of other devices keep
        flowing. Channels that still exist keep their readings, new ones are declared, and
        channels the new profile drops are marked stale. Returns the devices switched.
        """
        names = [n for n, p in self.profiles.items() if p.name == profile.name] if devices is None else list(devices)
        for name in names:
            if name not in self.adapters:
                raise UnknownAddressError(f"no device {name!r}; known: {', '.join(self.adapters)}")
            if self.adapters[name].device.bus not in self.dispatchers:
                raise UnsupportedError(f"device {name}: its bus runs in a worker process (a bus group);"
                                       " switch its profile in the site and restart the edge")
        adapter_class(profile.protocol).check_profile(profile)
        with self._activation_lock:
            for name in names:
                self._activate(name, profile)
        return names

    def _activate(self, name: str, profile: Profile) -> None:
        old = self.adapters[name]
        if old.protocol != profile.protocol and "j1939" in (old.protocol, profile.protocol):
            raise UnsupportedError(f"device {name}: cannot switch from protocol {old.protocol} to {profile.protocol}"
                                   f" ({profile.name} {profile.version}) in place: a j1939 device shares its"
                                   " bus's J1939 ECU; restart the edge")
        new = adapter_class(profile.protocol)(old.device, profile)
        self._check_site(name, profile)
        dispatcher = self.dispatchers[old.device.bus]
        infos = new.channels()
        self.registry.declare(infos)
        gone = sorted({i.address for i in old.channels()} - {i.address for i in infos})
        with dispatcher.lock:  # the hand-over and the swap are one step for the dispatcher thread
            new.take_over(old)
            dispatcher.replace_adapter(old, new, start=self._running)
        self.adapters[name] = new
        self.profiles[name] = profile
        self.commands[name] = CommandChannel(new, dispatcher)
        if gone:
            self.registry.apply((), gone)
        if self._running and name in self._device_workers:
            stop, thread = self._device_workers.pop(name)
            stop.set()
            thread.join(3.0)
        if self._running and new.has_background:
            self._start_worker(new)
        log.info("device %s: now on profile %s %s", name, profile.name, profile.version)

    def _check_site(self, name: str, profile: Profile) -> None:
        """The site's own checks (IDs received and sent, widths, J1939 twins) with `name` on `profile`."""
        try:
            build_adapters(self.site, {**self.profiles, name: profile})
        except ConfigError as e:
            raise ConfigError(f"device {name!r}: profile {profile.name} {profile.version}: {e}") from e

    # -- another site, hot (a configuration from the cloud) ------------------------------------

    def apply_site(self, site: Site, profiles: dict[str, Profile]) -> SiteChange:
        """Move the edge to `site`, each device on `profiles[device]`, changing only what differs.

        Validated whole first (`build_adapters`: the site's own checks, and `plan_change`); a
        refusal raises before anything changes. Then devices are removed, buses removed, changed
        buses restarted (only those), devices added and profiles switched, while the other buses'
        dispatchers keep running. Removed channels stay in the registry, marked stale, and are
        listed in `retired`. A failure midway puts every touched bus back as it ran, and raises.
        """
        if self.pool is not None:  # a new site's own groups are not applied hot either: they count at start
            raise UnsupportedError("apply_site: this site runs bus groups in worker processes; restart the edge")
        with self._activation_lock:
            change = plan_change(self.site, self.profiles, site, profiles)
            fresh = build_adapters(site, profiles)
            before = (self.site, dict(self.profiles))
            try:
                self._carry_out(change, site, profiles, fresh)
            except BaseException:
                log.exception("moving to the new site failed midway; the buses it touched go back")
                self._put_back(change, *before)
                raise
            self.site = site
        return change

    def _carry_out(self, change: SiteChange, site: Site, profiles: dict[str, Profile],
                   fresh: dict[str, Adapter]) -> None:
        for name in change.removed:
            if name in self.adapters and self.adapters[name].device.bus in self.dispatchers:
                self._remove_device(name)
        for bus in change.removed_buses:
            self._put_bus(bus, site, {})
        for bus in (*change.restarted_buses, *change.added_buses):
            self._put_bus(bus, site, fresh, profiles)
        for name in change.added:
            self._add_device(fresh[name], profiles[name])
        for name in change.switched:
            self._swap(name, fresh[name], profiles[name])

    def _put_back(self, change: SiteChange, site: Site, profiles: dict[str, Profile]) -> None:
        """Every bus `change` touches rebuilt as `site` ran it (fresh adapters), the others untouched."""
        adapters = build_adapters(site, profiles)
        touched = set(change.added_buses) | set(change.removed_buses) | set(change.restarted_buses)
        touched |= {a.device.bus for n, a in adapters.items() if n in (*change.removed, *change.switched)}
        touched |= {self.adapters[n].device.bus for n in change.added if n in self.adapters}
        for bus in sorted(touched):
            self._put_bus(bus, site, adapters, profiles)
        for name in [n for n in self.adapters if n not in profiles]:
            self.adapters.pop(name)
            self.profiles.pop(name, None)
            self.commands.pop(name, None)
        self.site = site

    def _stop_device(self, name: str) -> None:
        """Stop a device's worker thread and mark its channels stale (they are no longer current)."""
        if name in self._device_workers:
            stop, thread = self._device_workers.pop(name)
            stop.set()
            thread.join(3.0)
        self._retire([i.address for i in self.adapters[name].channels()])

    def _retire(self, addresses: list[str]) -> None:
        self.registry.apply((), addresses)
        self.retired.update(addresses)

    def _declare(self, infos: Sequence[ChannelInfo]) -> None:
        self.registry.declare(infos)
        self.retired.difference_update(i.address for i in infos)

    def _remove_device(self, name: str) -> None:
        adapter = self.adapters[name]
        self.dispatchers[adapter.device.bus].remove_adapter(adapter)
        self._stop_device(name)
        del self.adapters[name], self.profiles[name], self.commands[name]
        log.info("device %s: removed", name)

    def _add_device(self, adapter: Adapter, profile: Profile) -> None:
        name, dispatcher = adapter.device.name, self.dispatchers[adapter.device.bus]
        self._declare(adapter.channels())
        self.adapters[name], self.profiles[name] = adapter, profile
        self.commands[name] = CommandChannel(adapter, dispatcher)
        dispatcher.add_adapter(adapter, start=self._running)
        if self._running and adapter.has_background:
            self._start_worker(adapter)
        log.info("device %s: added on bus %s (%s %s)", name, adapter.device.bus, profile.name, profile.version)

    def _swap(self, name: str, new: Adapter, profile: Profile) -> None:
        old = self.adapters[name]
        dispatcher = self.dispatchers[old.device.bus]
        self._declare(new.channels())
        gone = sorted({i.address for i in old.channels()} - {i.address for i in new.channels()})
        with dispatcher.lock:
            new.take_over(old)
            dispatcher.replace_adapter(old, new, start=self._running)
        self.adapters[name], self.profiles[name] = new, profile
        self.commands[name] = CommandChannel(new, dispatcher)
        if gone:
            self._retire(gone)
        if name in self._device_workers:
            stop, thread = self._device_workers.pop(name)
            stop.set()
            thread.join(3.0)
        if self._running and new.has_background:
            self._start_worker(new)
        log.info("device %s: now on profile %s %s", name, profile.name, profile.version)

    def _put_bus(self, bus: str, site: Site, adapters: dict[str, Adapter],
                 profiles: dict[str, Profile] | None = None) -> None:
        """Stop bus `bus` if it runs, then run it as `site` has it (if it has it) with its `adapters`."""
        old = self.dispatchers.pop(bus, None)
        if old is not None:
            old.stop()
            self.runners.pop(bus).close()
            for a in old.adapters:
                if self.adapters.get(a.device.name) is a:
                    self._stop_device(a.device.name)
                    del self.adapters[a.device.name], self.profiles[a.device.name], self.commands[a.device.name]
            self._retire([i.address for i in old.channels()])
        config = next((b for b in site.buses if b.name == bus), None)
        if config is None:
            log.info("bus %s: removed", bus)
            return
        mine = [a for a in adapters.values() if a.device.bus == bus]
        runner = BusRunner(config, self._bus_factory, queue_size=self._queue_size)
        dispatcher = Dispatcher(runner, mine, self.registry)
        self._declare(dispatcher.channels())
        for a in mine:
            self._declare(a.channels())
            self.adapters[a.device.name] = a
            self.profiles[a.device.name] = (profiles or {})[a.device.name]
            self.commands[a.device.name] = CommandChannel(a, dispatcher)
        self.runners[bus], self.dispatchers[bus] = runner, dispatcher
        if self._running:
            runner.open()
            dispatcher.start()
            for a in mine:
                if a.has_background:
                    self._start_worker(a)
        log.info("bus %s: (re)started with %d devices", bus, len(mine))
