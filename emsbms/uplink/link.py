"""An edge's uplink, wired: registry → feed → outbox → MQTT, and `cmd` / `config` → their handlers.

`EdgeUplink(edge, config, db_path)` builds the outbox (``<db>.outbox``), the telemetry batcher, the
feed (subscribed at once, so no update of the running edge is missed), the command handler (its
ledger in the edge database) and the config handler, and the `Uplink` that carries them. `start()`
connects in the background; `close()` queues what the feed holds, publishes `offline` and
disconnects. Command results and config statuses go through the outbox like telemetry.
"""

from __future__ import annotations

import time
from importlib.metadata import version
from pathlib import Path

from emsbms.db.profiles import content_hash, document_of
from emsbms.edge import Edge
from emsbms.site.model import UplinkConfig
from emsbms.uplink.client import Feed, Uplink
from emsbms.uplink.commands import CommandHandler
from emsbms.uplink.config import ConfigHandler
from emsbms.uplink.messages import UPLINK_PREFIX, DeviceInfo, MessageKind, TelemetryBatcher, Topics, birth_payload
from emsbms.uplink.outbox import Outbox, outbox_path


def _now_us() -> int:
    return time.time_ns() // 1000


class EdgeUplink:
    """Everything the uplink of one running edge needs (see the module docstring)."""

    def __init__(self, edge: Edge, config: UplinkConfig, db_path: str | Path) -> None:
        self.edge = edge
        self.session = _now_us()
        self.topics = Topics(edge.site.org, edge.site.name)
        self.outbox = Outbox(outbox_path(db_path))
        self.batcher = TelemetryBatcher(self.topics, self.session, start_us=self.session,
                                        health_prefixes={UPLINK_PREFIX, *(b.name for b in edge.site.buses)})
        self.commands = CommandHandler(edge, db_path)
        self.config = ConfigHandler(edge, db_path)
        self.uplink = Uplink(config, self.topics, self.outbox, edge.registry, birth=self.birth,
                             on_command=self._command, on_config=self._config, on_birth=self.batcher.refresh,
                             dropped=lambda: self.feed.dropped)
        self.feed = Feed(edge.registry, self.batcher, self.outbox, wake=self.uplink.wake)

    def birth(self, bd_seq: int) -> bytes:
        registry = self.edge.registry
        devices = []
        for d in self.edge.site.devices:
            p = self.edge.profiles[d.name]
            devices.append(DeviceInfo(d.name, d.bus, p.protocol, p.name, p.version,
                                      content_hash(document_of(p), p.source_text)))
        return birth_payload([registry.info(a) for a in registry.addresses()], devices, version("emsbms"), bd_seq,
                             self.session, _now_us())

    def _command(self, payload: bytes) -> None:
        result = self.commands.handle(payload, _now_us())
        if result is not None:
            self.uplink.send(self.topics.cmd_result, result, MessageKind.CMD_RESULT.value)

    def _config(self, payload: bytes) -> None:
        status = self.config.handle(payload, _now_us())
        self.uplink.send(self.topics.config_status, status, MessageKind.CONFIG_STATUS.value)

    def start(self) -> None:
        self.uplink.start()

    def close(self) -> None:
        self.feed.close()
        self.uplink.stop()
        self.commands.close()
        self.outbox.close()
