"""The protocol dispatcher: one thread per bus routes frames to adapters and ticks them."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import ClassVar

import can

from emsbms.can.bus import BusRunner, BusState
from emsbms.can.health import MAX_IDS, LatencyMeter, LoadMeter, RateMeter, batch_bits, decode_error_frame
from emsbms.edge.registry import Registry
from emsbms.errors import BusError
from emsbms.protocols.base import EXTENDED, Adapter, Output
from emsbms.types import ChannelInfo, ChannelKind, CommandStatus, Sample, Value

log = logging.getLogger(__name__)

TICK_S = 0.01
HEALTH_S = 0.5
BATCH = 256


def now_us() -> int:
    """Wall-clock time in µs (the clock frame timestamps use)."""
    return time.time_ns() // 1000


class AckWaiter:
    """Watches the frames of a bus for the acknowledgement of one command."""

    def __init__(self, check: Callable[[can.Message], tuple[CommandStatus, str] | None]) -> None:
        self.check = check
        self.done = threading.Event()
        self.result: tuple[CommandStatus, str] | None = None

    def offer(self, msg: can.Message) -> None:
        if self.done.is_set():
            return
        try:
            answer = self.check(msg)
        except Exception as e:  # a broken matcher must not kill the dispatcher
            answer = (CommandStatus.REJECTED, f"acknowledgement check failed: {e}")
        if answer is not None:
            self.result = answer
            self.done.set()


class Dispatcher:
    """Routes one bus's frames to its device adapters and publishes bus health channels."""

    HEALTH = ("State", "BusLoad", "RxFrames", "TxFrames", "RxRate", "OwnFrames", "ErrorFrames",
              "Dropped", "UnknownIds", "BadFrames", "ShortFrames", "BadValues", "RxErrors", "AdapterErrors",
              "LastError", "TxErrorCounter", "RxErrorCounter", "Reopens", "LatencyP50", "LatencyP99")
    UNITS: ClassVar[dict[str, str]] = {"BusLoad": "%", "RxRate": "frames/s", "LatencyP50": "µs", "LatencyP99": "µs"}

    def __init__(self, runner: BusRunner, adapters: Sequence[Adapter], registry: Registry) -> None:
        self.runner = runner
        self.adapters = list(adapters)
        self.registry = registry
        self.lock = threading.RLock()  # guards the adapters: frames, ticks and commands
        self.waiters: list[AckWaiter] = []
        self._table: dict[int, list[Adapter]] = {}
        self._unmatched: list[Adapter] = []
        self._rebuild()
        self.unknown_ids = 0
        self.bad_frames = 0
        self.frames_ok = 0
        self.error_frames = 0
        self.adapter_errors = 0
        """Exceptions an adapter raised (on_frame, tick) that this dispatcher caught."""
        self._retired = (0, 0)
        """Short frames and bad values of adapters replaced by hot activation (their counts carry on)."""
        self.caught: dict[str, int] = {}
        """Caught adapter exceptions by "<device>.<method>: <type>", with how often (the fuzzer reads it)."""
        self.last_caught = ""
        self.last_bad = ""
        self.last_error_frame = ""
        self.tec: int | None = None
        self.rec: int | None = None
        self.load = LoadMeter(runner.config.bitrate)
        self.latency = LatencyMeter()
        self._published_state: object = None
        self._rate = RateMeter(self.load.window_s)
        self.unknown_keys: set[int] = set()
        """Keys of the frames counted in UnknownIds (at most MAX_IDS), for the monitor's frames page."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def channels(self) -> list[ChannelInfo]:
        p = self.runner.name + "/"
        return [ChannelInfo(p + n, self.UNITS.get(n, ""), ChannelKind.STATE) for n in self.HEALTH]

    def start(self) -> None:
        self.load.start(time.time())  # BusLoad and RxRate are published once a whole window has passed
        t = now_us()
        with self.lock:
            for a in self.adapters:
                self._emit(a.start(t))
        self.publish_health(t)  # the bus's State (and its counters) from the start, before any frame
        self._thread = threading.Thread(
            target=self._loop, name=f"emsbms-dispatch-{self.runner.name}", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)

    # -- the loop ---------------------------------------------------------------------------

    def _loop(self) -> None:
        get_batch = self.runner.queue.get_batch
        next_tick = 0.0
        next_health = 0.0
        while not self._stop.is_set():
            batch = get_batch(BATCH, TICK_S)
            try:
                if batch:
                    self.handle(batch)
                mono = time.monotonic()
                if mono >= next_tick:
                    next_tick = mono + TICK_S
                    self.tick(now_us())
                if mono >= next_health or self.runner.state is not self._published_state:
                    next_health = mono + HEALTH_S
                    self.publish_health(now_us())
            except Exception:  # the dispatcher must never die silently
                log.exception("dispatcher of bus %s: unexpected error (continuing)", self.runner.name)

    def handle(self, batch: Sequence[can.Message]) -> None:
        """Dispatch frames to adapters and apply what they produce."""
        samples: list[Sample] = []
        stale: list[str] = []
        frames: list[can.Message] = []
        t = now_us()
        table = self._table
        unmatched = self._unmatched
        add_samples = samples.extend
        ok_count = 0
        with self.lock:
            for msg in batch:
                if msg.is_error_frame:
                    self._error_frame(msg)
                    continue
                if self.waiters:
                    for w in list(self.waiters):
                        w.offer(msg)
                aid = msg.arbitration_id
                claimed = ok = False
                error = ""
                for a in table.get(aid | EXTENDED if msg.is_extended_id else aid) or unmatched:
                    try:
                        out = a.on_frame(msg, t)
                    except Exception as e:  # adapters must not raise; count it if one does
                        out = Output(error=self._caught(a, "on_frame", e))
                    if out is None:
                        continue
                    claimed = True
                    out_samples, out_frames, out_stale, out_error = out
                    if out_error is not None:
                        error = out_error
                        continue
                    ok = True
                    add_samples(out_samples)
                    if out_stale:
                        stale.extend(out_stale)
                    if out_frames:
                        frames.extend(out_frames)
                if ok:
                    ok_count += 1
                elif claimed:
                    self.bad_frames += 1
                    self.last_bad = error
                else:
                    self.unknown_ids += 1
                    if len(self.unknown_keys) < MAX_IDS:
                        self.unknown_keys.add(aid | EXTENDED if msg.is_extended_id else aid)
            self.frames_ok += ok_count
        self.registry.apply(samples, stale)
        done = now_us()
        if batch:
            self.load.add(batch[-1].timestamp, batch_bits(batch))
            self.latency.extend([done - round(m.timestamp * 1_000_000) for m in batch if not m.is_error_frame])
        self._send(frames)

    def _caught(self, adapter: Adapter, method: str, error: Exception) -> str:
        """Count an exception an adapter raised; returns its text (for LastError)."""
        self.adapter_errors += 1
        key = f"{adapter.device.name}.{method}: {type(error).__name__}"
        self.caught[key] = self.caught.get(key, 0) + 1
        self.last_caught = f"{adapter.device.name}: adapter raised {error!r} in {method}"
        if self.caught[key] == 1:  # the first of a kind with its traceback, the rest only counted
            log.exception("adapter %s raised in %s", adapter.device.name, method)
        return self.last_caught

    def _error_frame(self, msg: can.Message) -> None:
        self.error_frames += 1
        info = decode_error_frame(msg.arbitration_id, msg.data)
        self.last_error_frame = info.text
        if info.tx_errors is not None:
            self.tec, self.rec = info.tx_errors, info.rx_errors
        if info.state is not None:
            self.runner.note_error_state(BusState(info.state.value))

    def tick(self, t: int) -> None:
        outs: list[Output] = []
        with self.lock:
            for a in self.adapters:
                try:
                    outs.append(a.tick(t))
                except Exception as e:  # one adapter's fault must not stop the others' supervision
                    self._caught(a, "tick", e)
        samples: list[Sample] = []
        stale: list[str] = []
        frames: list[can.Message] = []
        for out_samples, out_frames, out_stale, _ in outs:  # one registry update for the whole tick
            if out_samples:
                samples.extend(out_samples)
            if out_stale:
                stale.extend(out_stale)
            if out_frames:
                frames.extend(out_frames)
        if samples or stale:
            self.registry.apply(samples, stale)
        if frames:
            self._send(frames)

    def _emit(self, out: Output) -> None:
        if out.samples or out.stale:
            self.registry.apply(out.samples, out.stale)
        self._send(out.frames)

    def _send(self, frames: Sequence[can.Message]) -> None:
        for f in frames:
            try:
                self.runner.send(f)
            except BusError as e:
                log.debug("%s", e)

    def publish_health(self, t: int) -> None:
        r = self.runner
        rate = self._rate.rate(time.monotonic(), r.rx)
        p = r.name + "/"
        r.poll_state()
        self._published_state = r.state
        wall = time.time()
        load = self.load.load(wall) + r.tx_load.load(wall)
        values: dict[str, Value] = {
            "State": r.state, "BusLoad": round(load, 2), "RxFrames": r.rx, "TxFrames": r.tx,
            "RxRate": None if rate is None else round(rate, 1), "OwnFrames": r.own_frames,
            "ErrorFrames": self.error_frames, "Dropped": r.dropped,
            "UnknownIds": self.unknown_ids, "BadFrames": self.bad_frames, "RxErrors": r.rx_errors,
            "ShortFrames": self.short_frames, "BadValues": self.bad_values,
            "AdapterErrors": self.adapter_errors,
            "LastError": (r.last_error or self.last_error_frame or self.last_bad or r.last_rx_error
                          or self.last_caught),
            "TxErrorCounter": self.tec, "RxErrorCounter": self.rec, "Reopens": r.reopens,
            "LatencyP50": self.latency.percentile(50), "LatencyP99": self.latency.percentile(99),
        }
        if rate is None or not self.load.full(wall):  # not yet one whole window: no value yet
            del values["RxRate"], values["BusLoad"]
        self.registry.apply([Sample(p + k, v, t) for k, v in values.items()])

    def _counters(self) -> tuple[int, int]:
        short, bad = self._retired
        for a in self.adapters:
            s, b = a.counters()
            short, bad = short + s, bad + b
        return short, bad

    @property
    def short_frames(self) -> int:
        """Frames shorter than their message declares, decoded in part (the signals they hold)."""
        return self._counters()[0]

    @property
    def bad_values(self) -> int:
        """Numbers decoded as NaN or ±Infinity: published with quality invalid, or no alarm information."""
        return self._counters()[1]

    def replace_adapter(self, old: Adapter, new: Adapter, start: bool = True) -> None:
        """Swap one device's adapter and rebuild this bus's dispatch table (hot profile activation).

        Done under the lock, between two batches: frames of the other devices are never dropped.
        With `start` (the dispatcher runs) the new adapter is started before its first frame.
        """
        with self.lock:
            self.adapters[self.adapters.index(old)] = new
            self._retire(old)
            self._rebuild()
            if start:
                self._emit(new.start(now_us()))

    def add_adapter(self, new: Adapter, start: bool = True) -> None:
        """Add a device to this bus, between two batches (a config from the cloud adds it)."""
        with self.lock:
            self.adapters.append(new)
            self._rebuild()
            if start:
                self._emit(new.start(now_us()))

    def remove_adapter(self, old: Adapter) -> None:
        """Take a device off this bus: its frames are no longer decoded, it is no longer ticked."""
        with self.lock:
            self.adapters.remove(old)
            self._retire(old)
            self._rebuild()

    def _retire(self, old: Adapter) -> None:
        short, bad = old.counters()
        self._retired = (self._retired[0] + short, self._retired[1] + bad)

    def _rebuild(self) -> None:
        table: dict[int, list[Adapter]] = {}
        for a in self.adapters:
            for key in a.frame_keys():
                table.setdefault(key, []).append(a)
        self._table = table
        self._unmatched = [a for a in self.adapters if a.wants_unmatched]
