"""The core wired to a running edge: the CommandDispatcher, the CycleRunner and the overrides table.

`EdgeCore.start(edge, db_path)` is what `emsbms run`, `emsbms monitor` and the demo start for a site
with `[[controller]]` tables. Its `writer` is the path of every write of the running edge that does
not come from a controller (the cloud's commands): a manual override with the default expiry. The
address `core/overrides/<device>/<Channel>/Cancel` cancels an override instead.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from emsbms.core.arbiter import DEFAULT_EXPIRES_S
from emsbms.core.cycle import Cycle, CycleRunner
from emsbms.core.dispatcher import CommandDispatcher
from emsbms.core.overrides import OverrideTable
from emsbms.core.registry import build_controllers
from emsbms.edge.edge import Edge
from emsbms.types import ChannelInfo, ChannelKind, CommandResult, CommandStatus, Sample

log = logging.getLogger("emsbms.core")

CANCEL_PREFIX = "core/overrides/"
CANCEL_SUFFIX = "/Cancel"
EVENT_CHANNEL = "core/Event"
OVERRIDES_CHANNEL = "core/Overrides"
OVERRIDE_LIST_CHANNEL = "core/OverrideList"
"""The active overrides as JSON text (a list of `Override.as_dict()`), uplinked in telemetry for the cloud API."""


def cancel_address(address: str) -> str:
    """The command address that cancels the override of `address` (bms_0/SetChargeCurrent)."""
    return f"{CANCEL_PREFIX}{address}{CANCEL_SUFFIX}"


class EdgeCore:
    """The dispatcher and cycle of one running edge; `writer` takes the cloud's commands."""

    def __init__(self, edge: Edge, db_path: str | Path | None = None, period_s: float | None = None,
                 on_event: Callable[[str], None] | None = None, expires_s: float = DEFAULT_EXPIRES_S,
                 poll_s: float = 0.2) -> None:
        self.edge = edge
        self.expires_s = expires_s
        self.sinks: list[Callable[[str], None]] = [] if on_event is None else [on_event]
        self.dispatcher = CommandDispatcher.for_edge(edge, on_event=self.event)
        cycle = Cycle(build_controllers(edge.site.controllers), period_s or edge.site.cycle_period_s)
        self.runner = CycleRunner(edge, cycle, self.dispatcher, on_event=self.event)
        edge.registry.declare([
            ChannelInfo(EVENT_CHANNEL, "", ChannelKind.STATE, "the last event of the core cycle or dispatcher"),
            ChannelInfo(OVERRIDES_CHANNEL, "", ChannelKind.STATE, "active manual overrides"),
            ChannelInfo(OVERRIDE_LIST_CHANNEL, "", ChannelKind.STATE, "active manual overrides as JSON"),
        ])
        self.table = OverrideTable(db_path) if db_path is not None else None
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll_loop, name="emsbms-core-overrides", daemon=True)
        self._count = -1
        self._listed = ""

    @property
    def writer(self) -> EdgeCore:
        return self

    def event(self, text: str) -> None:
        """A core event: the `core/Event` channel (run log, telemetry), the log (monitor, uplink events)."""
        self.edge.registry.apply([Sample(EVENT_CHANNEL, text, time.time_ns() // 1000)])
        log.info("core: %s", text)
        for sink in self.sinks:
            try:
                sink(text)
            except Exception:
                log.exception("core: an event sink raised for %r", text)

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult:
        """A cloud command: a manual override (default expiry), or the cancel of one."""
        if address.startswith(CANCEL_PREFIX) and address.endswith(CANCEL_SUFFIX):
            target = address[len(CANCEL_PREFIX):-len(CANCEL_SUFFIX)]
            done = self.dispatcher.cancel(target)
            self.sync()
            if done is None:
                return CommandResult(address, value, CommandStatus.REJECTED, f"{target} has no active override")
            text = f"override of {target} = {done.value:g} cancelled"
            return CommandResult(address, value, CommandStatus.ACKED, text)
        result = self.dispatcher.manual_write(address, value, self.expires_s, timeout=timeout, source_text="cloud")
        self.sync()
        return result

    def local_write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult:
        result = self.dispatcher.manual_write(address, value, self.expires_s, timeout=timeout, source_text="local")
        self.sync()
        return result

    def sync(self) -> None:
        """Publish the overrides (table and `core/Overrides`) and carry out the cancels asked for."""
        if self.table is not None:
            for request_id, address in self.table.take_requests():
                done = self.dispatcher.cancel(address)
                self.table.finish(request_id, f"override of {address} = {done.value:g} cancelled" if done is not None
                                  else f"{address} has no active override")
        overrides = self.dispatcher.overrides()
        if self.table is not None:
            self.table.publish(overrides)
        if len(overrides) != self._count:
            self._count = len(overrides)
            self.edge.registry.apply([Sample(OVERRIDES_CHANNEL, len(overrides), time.time_ns() // 1000)])
        listed = json.dumps([o.as_dict() for o in overrides], separators=(",", ":"))
        if listed != self._listed:
            self._listed = listed
            self.edge.registry.apply([Sample(OVERRIDE_LIST_CHANNEL, listed, time.time_ns() // 1000)])

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.sync()
            except Exception:
                log.exception("core: the overrides table could not be synced")

    def start(self) -> EdgeCore:
        self.runner.start()
        self.sync()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5.0)
        self.runner.stop()
        self.dispatcher.stop()
        if self.table is not None:
            self.table.close()
