"""An edge's uplink, wired: registry → feed → outbox → MQTT, and `cmd` / `config` → their handlers.

`EdgeUplink(edge, config, db_path)` builds the outbox (``<db>.outbox``), the telemetry batcher, the
feed (subscribed at once, so no update of the running edge is missed), the command handler (its
ledger in the edge database) and the config handler, and the `Uplink` that carries them. `start()`
connects in the background; `close()` queues what the feeds hold, publishes `offline` and
disconnects. Command results and config statuses go through the outbox like telemetry.

`EventFeed` sends the edge's event log (`emsbms.edge.events.EventLog`: EMCY, DM1, comm loss and
recovery, alarms, bus states, command results) to `events`: the log's registry callbacks only append
to its bounded inbox, and a writer thread drains it and puts one `events` message (its own `seq`
stream) in the outbox per batch.

`AlarmFeed` sends the alarm runner's transitions (`emsbms.alarms.runner.AlarmRunner`, started by
`emsbms run` and attached with `attach_alarms`) to `alarms`, its own `seq` stream; their events go to
`events` with the log's; acknowledgement commands (``alarms/<rule>/<device>/Ack``) go to the runner,
and a configuration's `rules` to its `replace_rules`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path

from emsbms.alarms.engine import Transition
from emsbms.alarms.runner import AlarmRunner
from emsbms.db.profiles import content_hash, document_of
from emsbms.edge import Edge
from emsbms.edge.events import Event, EventLog
from emsbms.site.model import UplinkConfig
from emsbms.uplink.client import Feed, Uplink
from emsbms.uplink.commands import CommandHandler, Writer
from emsbms.uplink.config import ConfigHandler
from emsbms.uplink.messages import (
    UPLINK_PREFIX,
    Counter,
    DeviceInfo,
    MessageKind,
    TelemetryBatcher,
    Topics,
    alarms_payload,
    birth_payload,
    events_payload,
)
from emsbms.uplink.outbox import Outbox, outbox_path

log = logging.getLogger(__name__)

MAX_EVENTS = 100
"""Events per `events` message at most; more are split into several messages."""


def _now_us() -> int:
    return time.time_ns() // 1000


class EventFeed:
    """The edge's event log → `events` messages in the outbox, with their own `seq` from 0.

    `attach` watches the registry (the devices' CommState, alarms, EMCY and DM1 channels, each bus's
    State) and the edge's command results; the callbacks only append to the log's bounded inbox, so
    the receive path never waits. A writer thread drains the log every `every` seconds and puts the
    new events in the outbox, then calls `wake`. `close` stops listening and sends what is left.
    """

    def __init__(self, edge: Edge, topics: Topics, session: int, outbox: Outbox,
                 wake: Callable[[], None] = lambda: None, every: float = 0.2) -> None:
        self.topics = topics
        self.session = session
        self.outbox = outbox
        self.wake = wake
        self.every = every
        self.seq = Counter()
        self.queued = 0  # events messages put in the outbox
        self.extra: deque[Event] = deque()  # events made elsewhere (the alarm runner's), sent with the log's
        self.log = EventLog()
        self._cancel: list[Callable[[], None]] = [
            s.cancel for s in self.log.attach(edge.registry, buses=[b.name for b in edge.site.buses])]
        self._cancel.append(edge.on_command(self.log.post_command))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-uplink-events", daemon=True)
        self._thread.start()

    @property
    def dropped(self) -> int:
        """Registry updates the log's inbox dropped (nobody drained them in time)."""
        return self.log.dropped

    def flush(self, now_us: int) -> int:
        """Drain the log and queue its new events; returns the number of messages queued."""
        events = self.log.drain()
        while self.extra:
            events.append(self.extra.popleft())
        if not events:
            return 0
        batches: list[list[Event]] = [events[i:i + MAX_EVENTS] for i in range(0, len(events), MAX_EVENTS)]
        self.outbox.put_many([(self.topics.events, events_payload(b, self.session, self.seq.next(), now_us),
                               MessageKind.EVENTS.value) for b in batches], now_us)
        self.queued += len(batches)
        self.wake()
        return len(batches)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.flush(_now_us())
            except Exception:
                log.exception("uplink: the event feed could not queue events")

    def close(self, timeout: float = 10.0) -> None:
        """Stop listening, stop the writer, queue what is left."""
        for cancel in self._cancel:
            cancel()
        self._cancel = []
        self._stop.set()
        self._thread.join(timeout)
        self.flush(_now_us())


class AlarmFeed:
    """Alarm transitions → `alarms` messages in the outbox (own `seq` from 0), flushed every `every` s."""

    def __init__(self, topics: Topics, session: int, outbox: Outbox, wake: Callable[[], None] = lambda: None,
                 every: float = 0.05) -> None:
        self.topics, self.session, self.outbox, self.wake, self.every = topics, session, outbox, wake, every
        self.seq = Counter()
        self.queued = 0  # alarms messages put in the outbox
        self._pending: deque[Transition] = deque()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._write_loop, name="emsbms-uplink-alarms", daemon=True)
        self._thread.start()

    def post(self, transition: Transition) -> None:
        self._pending.append(transition)

    def flush(self, now_us: int) -> int:
        """Queue the transitions posted so far; returns the number of messages queued."""
        items = []
        while self._pending:
            items.append(self._pending.popleft().as_dict())
        if not items:
            return 0
        batches = [items[i:i + MAX_EVENTS] for i in range(0, len(items), MAX_EVENTS)]
        self.outbox.put_many([(self.topics.alarms, alarms_payload(b, self.session, self.seq.next(), now_us),
                               MessageKind.ALARMS.value) for b in batches], now_us)
        self.queued += len(batches)
        self.wake()
        return len(batches)

    def _write_loop(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.flush(_now_us())
            except Exception:
                log.exception("uplink: the alarm feed could not queue alarms")

    def close(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        self.flush(_now_us())


class EdgeUplink:
    """Everything the uplink of one running edge needs (see the module docstring)."""

    def __init__(self, edge: Edge, config: UplinkConfig, db_path: str | Path, writer: Writer | None = None) -> None:
        self.edge = edge
        self.session = _now_us()
        self.topics = Topics(edge.site.org, edge.site.name)
        self.outbox = Outbox(outbox_path(db_path))
        self.batcher = TelemetryBatcher(self.topics, self.session, start_us=self.session,
                                        health_prefixes={UPLINK_PREFIX, *(b.name for b in edge.site.buses)})
        self.commands = CommandHandler(writer or edge, db_path)  # writer: the core's dispatcher (core.md)
        self.config = ConfigHandler(edge, db_path)
        self.uplink = Uplink(config, self.topics, self.outbox, edge.registry, birth=self.birth,
                             on_command=self._command, on_config=self._config, on_birth=self.batcher.refresh,
                             dropped=lambda: self.feed.dropped + self.events.dropped)
        self.feed = Feed(edge.registry, self.batcher, self.outbox, wake=self.uplink.wake)
        self.events = EventFeed(edge, self.topics, self.session, self.outbox, wake=self.uplink.wake)
        self.alarms = AlarmFeed(self.topics, self.session, self.outbox, wake=self.uplink.wake)

    def post_transition(self, t: Transition) -> None:
        """The alarm runner's `on_transition`: to the `alarms` topic."""
        self.alarms.post(t)

    def post_event(self, e: Event) -> None:
        """The alarm runner's `on_event`: to the `events` topic with the event log's."""
        self.events.extra.append(e)

    def attach_alarms(self, runner: AlarmRunner) -> None:
        """Acknowledgements (`alarms/<rule>/<device>/Ack` commands) go to `runner`."""
        self.commands.alarms = runner
        self.config.on_rules = runner.replace_rules

    def birth(self, bd_seq: int) -> bytes:
        registry = self.edge.registry
        devices = []
        for d in self.edge.site.devices:
            p = self.edge.profiles[d.name]
            devices.append(DeviceInfo(d.name, d.bus, p.protocol, p.name, p.version,
                                      content_hash(document_of(p), p.source_text)))
        live = [a for a in registry.addresses() if a not in self.edge.retired]  # removed devices are in no birth
        return birth_payload([registry.info(a) for a in live], devices, version("emsbms"), bd_seq,
                             self.session, _now_us())

    def _command(self, payload: bytes) -> None:
        result = self.commands.handle(payload, _now_us())
        if result is not None:
            self.uplink.send(self.topics.cmd_result, result, MessageKind.CMD_RESULT.value)

    def _config(self, payload: bytes) -> None:
        structural = self.config.structural_changes
        status = self.config.handle(payload, _now_us())
        self.uplink.send(self.topics.config_status, status, MessageKind.CONFIG_STATUS.value)
        if self.config.structural_changes != structural:  # devices, buses or profiles changed: a new birth lists them
            self.batcher.set_health_prefixes({UPLINK_PREFIX, *(b.name for b in self.edge.site.buses)})
            self.uplink.client.publish(self.topics.birth, self.birth(self.uplink.bd_seq), qos=1)
            self.batcher.refresh()

    def start(self) -> None:
        self.uplink.start()

    def close(self) -> None:
        fed = self.feed.close()
        self.events.close()
        self.alarms.close()
        self.uplink.stop()
        self.commands.close()
        if fed:
            self.outbox.close()
        else:  # its writer still holds updates: leave it the outbox (a daemon thread; each put commits)
            log.error("uplink: the feed's writer did not finish in time; the outbox stays open for it")
