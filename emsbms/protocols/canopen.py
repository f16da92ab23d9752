"""The CANopen adapter: a CiA 301 node through the canopen library (device PDO mapping, SDO, NMT, heartbeat, EMCY).

Frames reach the canopen library through ``Network.notify`` from `on_frame` (the dispatcher
thread); what the library sends goes out through the edge (`EdgeBus`). Every blocking SDO
conversation (identity, 0x1017, reading the PDO mapping, polling, commands, fresh reads) runs on
the adapter's background worker or on the caller's thread, never on the dispatcher thread: the
SDO client waits for responses that only `on_frame` can deliver.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import can
import canopen
from canopen.objectdictionary import ODVariable
from canopen.pdo import RPDO, TPDO, PdoBase, PdoMap, PdoVariable
from canopen.sdo.client import SdoClient
from canopen.sdo.exceptions import SdoAbortedError, SdoCommunicationError

from emsbms.errors import CommandRejected, ConfigError, EmsbmsError, ReadTimeout, UnknownAddressError
from emsbms.protocols.base import (
    EMPTY,
    Adapter,
    AdapterIO,
    CommandPlan,
    DeviceConfig,
    Output,
    SentFrame,
    frame_key,
)
from emsbms.protocols.canopen_codes import (
    COB_EMCY,
    COB_HEARTBEAT,
    COB_SDO_RX,
    COB_SDO_TX,
    COB_TPDO,
    NMT_START,
    NmtState,
    abort_text,
    emcy_text,
)
from emsbms.protocols.canopen_od import (
    Raw,
    check_canopen_profile,
    device_options,
    is_nmt_master,
    load_od,
    raw_kind,
    raw_value,
    real_limits,
    ref_text,
    resolve,
)
from emsbms.protocols.canopen_services import (
    IDENTITY_SUBS,
    EdgeBus,
    EmcyAlarms,
    ObjectChannel,
    identity_problems,
)
from emsbms.protocols.cyclic import CyclicSetpoints
from emsbms.protocols.dbc import validate_command_value
from emsbms.types import (
    AlarmLevel,
    ChannelInfo,
    ChannelKind,
    CommandResult,
    CommandStatus,
    CommState,
    Quality,
    Sample,
)

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

log = logging.getLogger(__name__)

STALE_FACTOR = 2.5  # a TPDO is stale after 2.5 event-timer periods
CONSUMER_FACTOR = 1.5  # default heartbeat consumer time: 1.5 x the producer time
RETRY_US = 2_000_000  # retry a failed configuration after this long (doubling up to MAX_RETRY_US)
MAX_RETRY_US = 30_000_000
NMT_RESTART_US = 1_000_000  # resend NMT start at most this often
EMCY_LOG_KEEP = 64  # EMCYs kept in the library's log


class SdoAbort(EmsbmsError):
    """The device aborted an SDO transfer; the message holds the abort code and its meaning."""


@dataclass(slots=True)
class _Route:
    """One enabled TPDO as mapped in the device: where its values go."""

    name: str
    cob: int
    pdo: PdoMap
    size: int
    outputs: tuple[tuple[PdoVariable, ObjectChannel], ...]
    period_us: int | None
    last_us: int = 0
    stale: bool = True

    @property
    def addresses(self) -> list[str]:
        return [ch.address for _, ch in self.outputs]


def _maps(pdo: PdoBase) -> list[PdoMap]:
    assert pdo.map is not None
    return list(pdo.map.values())


class CanopenAdapter(Adapter):
    """A CANopen (CiA 301/418) device: TPDOs decoded by the mapping read from the device."""

    protocol = "canopen"
    has_background = True
    wants_unmatched = True  # a device may move a TPDO off its predefined COB-ID

    def __init__(self, device: DeviceConfig, profile: Profile) -> None:
        super().__init__(device, profile)
        if device.node_id is None or not 1 <= device.node_id <= 127:
            raise ConfigError(
                f"device {device.name}: profile {profile.name} (canopen) needs node_id 1..127; found {device.node_id}"
            )
        assert profile.source_path is not None
        self.node_id = node_id = device.node_id
        self.options = opts = device_options(device, profile)
        self.offset = device.id_offset
        self.nmt_master = is_nmt_master(device, opts)
        self.od = load_od(profile.source_path, node_id)
        self._bus = EdgeBus(self.offset)
        self.network = canopen.Network(cast(can.BusABC, self._bus))
        self.node = canopen.RemoteNode(node_id, self.od)
        self.network.add_node(self.node)
        self.sdo_timeout = opts.sdo_timeout_ms / 1000
        self._channels = self._build_channels()
        self._by_obj: dict[tuple[int, int], list[ObjectChannel]] = {}
        for ch in self._channels.values():
            self._by_obj.setdefault(ch.key, []).append(ch)
        self._cmd_vars = {name: resolve(self.od, cmd.od or "", "the EDS")
                          for name, cmd in profile.model.commands.items()}
        self.emcy = EmcyAlarms(self.prefix, opts)
        self._cob_hb, self._cob_emcy, self._cob_sdo = COB_HEARTBEAT + node_id, COB_EMCY + node_id, COB_SDO_TX + node_id
        self._static = {self._key(c): c for c in (self._cob_hb, self._cob_emcy, self._cob_sdo)}
        self._static.update({self._key(base + node_id): base + node_id for base in COB_TPDO})
        self._routes: dict[int, _Route] = {}  # by dispatch key; replaced whole by the worker
        self._mapping_valid = False
        self._polled: list[ObjectChannel] = []
        self._rpdo = self._pdo_from_eds(RPDO)
        if opts.pdo_mapping == "eds":
            self._install(self._pdo_from_eds(TPDO))
        # supervision
        self.start_us = 0
        self.grace_us = int(profile.model.timeout_ms * 1000)
        hb_var = self.od.get_variable(0x1017)
        producer = hb_var.default if hb_var is not None else None
        self.consumer_us = self._consumer_us(int(producer) if producer else None)
        self.last_hb_us = 0
        self.last_seen_us = 0
        self._published_seen = 0
        self._decoded_any = False
        self.state = CommState.WAITING
        self.nmt = NmtState.UNKNOWN
        self._last_nmt_start_us = -NMT_RESTART_US
        # identity and configuration (worker)
        self.identity_ok: bool | None = None
        self._need_config = True
        self._need_mapping = opts.pdo_mapping == "device"
        self._mapping_gen = 0
        self._next_config_us = 0
        self._retry_us = RETRY_US
        self._next_poll_us = 0
        self._wake = threading.Event()
        self._sdo_lock = threading.Lock()
        self._sdo_active = False
        self._io: AdapterIO | None = None
        # commands
        self._active = CyclicSetpoints()  # values are raw RPDO integers
        self._last_raw: dict[tuple[int, int], Raw] = {}

    # -- construction -----------------------------------------------------------------------

    @classmethod
    def check_profile(cls, profile: Profile) -> None:
        check_canopen_profile(profile)

    def _key(self, cob: int) -> int:
        can_id = cob + self.offset
        return frame_key(can_id, can_id > 0x7FF)

    def _build_channels(self) -> dict[str, ObjectChannel]:
        label = f"eds/{self.profile.model.source.eds}"
        out: dict[str, ObjectChannel] = {}
        for name, ch in self.profile.model.channels.items():
            assert ch.od is not None
            var = resolve(self.od, ch.od, label)
            out[name] = ObjectChannel(name, self.prefix + name, var, ch.scale, ch.offset, ch.abs, ch.type,
                                      ch.unit or var.unit)
        return out

    def _consumer_us(self, producer_ms: int | None) -> int:
        if self.options.heartbeat_consumer_ms is not None:
            return int(self.options.heartbeat_consumer_ms * 1000)
        if producer_ms:
            return int(producer_ms * CONSUMER_FACTOR * 1000)
        return 0  # no heartbeat: any frame keeps the device alive for timeout_ms

    def _new_pdo(self, kind: type[PdoBase]) -> PdoBase:
        factory: Any = kind  # canopen's TPDO/RPDO constructors are untyped
        pdo = cast(PdoBase, factory(self.node))
        pdo.network = self.network
        return pdo

    def _pdo_from_eds(self, kind: type[PdoBase]) -> PdoBase:
        pdo = self._new_pdo(kind)
        cast(Any, pdo).read(from_od=True)
        self._unsubscribe(pdo)
        return pdo

    def _unsubscribe(self, pdo: PdoBase) -> None:
        """PdoMap.read() subscribes its maps; this adapter routes PDO frames itself."""
        for m in _maps(pdo):
            if m.enabled and m.cob_id is not None and m.on_message in self.network.subscribers.get(m.cob_id, []):
                self.network.unsubscribe(m.cob_id, m.on_message)

    def _install(self, tpdo: PdoBase) -> None:
        """Decode TPDOs by this mapping from now on."""
        routes: dict[int, _Route] = {}
        carried: set[tuple[int, int]] = set()
        for m in _maps(tpdo):
            if not m.enabled or m.cob_id is None or not m.map or m.length == 0:
                continue
            outputs = []
            for var in m.map:
                for ch in self._by_obj.get((var.od.index, var.od.subindex), ()):
                    outputs.append((var, ch))
                    carried.add(ch.key)
            period = m.event_timer if (m.trans_type or 0) >= 254 and m.event_timer else None
            routes[self._key(m.cob_id)] = _Route(
                name=f"TPDO{(m.cob_id >> 8)}" if m.cob_id - self.node_id in COB_TPDO else f"TPDO 0x{m.cob_id:X}",
                cob=m.cob_id, pdo=m, size=math.ceil(m.length / 8), outputs=tuple(outputs),
                period_us=int(period * 1000) if period else None,
            )
        self._polled = [ch for ch in self._channels.values() if ch.key not in carried]
        self._routes = routes
        self._mapping_valid = True

    # -- contract ---------------------------------------------------------------------------

    def channels(self) -> list[ChannelInfo]:
        p = self.prefix
        state, alarm, meas = ChannelKind.STATE, ChannelKind.ALARM, ChannelKind.MEASUREMENT
        out = [ChannelInfo(ch.address, ch.unit, meas, self._describe(ch)) for ch in self._channels.values()]
        out += [
            ChannelInfo(p + "NmtState", "", state, "NMT state from the heartbeat"),
            ChannelInfo(p + "DeviceType", "", state, "0x1000 device type"),
            *(ChannelInfo(p + name, "", state, f"0x1018 sub {sub}") for name, sub, _ in IDENTITY_SUBS),
            *self.emcy.channels(),
            ChannelInfo(p + "Alarm/Identity", "", alarm, "0x1000/0x1018 differ from the profile"),
            ChannelInfo(p + "CommState", "", state, "communication state (heartbeat supervision)"),
            ChannelInfo(p + "LastSeen", "µs", state, "time of the last frame"),
            ChannelInfo(p + "Alarm/CommLoss", "", alarm, "heartbeat missed: device lost"),
        ]
        out += [
            ChannelInfo(p + n, c.unit, ChannelKind.COMMAND, c.description, c.min, c.max)
            for n, c in self.profile.model.commands.items()
        ]
        return out

    @staticmethod
    def _describe(ch: ObjectChannel) -> str:
        return f"{ref_text(ch.var)} {ch.var.name}"

    def frame_keys(self) -> Iterable[int]:
        return set(self._static) | set(self._routes)

    def sent_frames(self) -> Iterable[SentFrame]:
        yield SentFrame(self._key(COB_SDO_RX + self.node_id), "SDO request", True)
        for m in _maps(self._rpdo):
            if m.enabled and m.cob_id is not None:
                yield SentFrame(self._key(m.cob_id), f"RPDO 0x{m.cob_id:X}", True)

    @property
    def comm_state(self) -> CommState:
        return self.state

    def start(self, now_us: int) -> Output:
        self.start_us = now_us
        self._need_config = True
        self._wake.set()
        samples = [Sample(self.prefix + "NmtState", self.nmt, now_us), *self._state_samples(now_us)]
        samples += self.emcy.cleared(now_us)
        frames = [self._nmt_start(now_us)] if self.nmt_master else []
        return Output(samples=samples, frames=frames)

    def _nmt_start(self, now_us: int) -> can.Message:
        self._last_nmt_start_us = now_us
        return can.Message(arbitration_id=self.offset, data=bytes([NMT_START, self.node_id]),
                           is_extended_id=self.offset > 0x7FF)

    # -- receive path (dispatcher thread: never blocks) -------------------------------------

    def on_frame(self, msg: can.Message, now_us: int) -> Output | None:
        key = frame_key(msg.arbitration_id, msg.is_extended_id)
        cob = self._static.get(key)
        route = self._routes.get(key)
        if cob is None and route is None:
            return None
        if msg.is_remote_frame:
            return Output(error=f"{self.device.name}: remote frame 0x{msg.arbitration_id:X}")
        ts = round(msg.timestamp * 1_000_000) if msg.timestamp else now_us
        data = bytes(msg.data)
        try:
            if route is not None:
                return self._on_pdo(route, data, ts, msg.timestamp)
            if cob == self._cob_hb:
                return self._on_heartbeat(data, ts, msg.timestamp)
            if cob == self._cob_emcy:
                return self._on_emcy(data, ts, msg.timestamp)
            if cob == self._cob_sdo:
                if self._sdo_active:
                    self.network.notify(self._cob_sdo, bytearray(data), msg.timestamp)
                return self._seen(ts)
            return self._seen(ts)  # a predefined TPDO COB-ID the device does not use (now)
        except Exception as e:  # the receive path never raises
            return Output(error=f"{self.device.name}: frame 0x{msg.arbitration_id:X}: {type(e).__name__}: {e}")

    def _quality(self) -> Quality:
        return Quality.INVALID if self.identity_ok is False else Quality.OK

    def _on_pdo(self, route: _Route, data: bytes, ts: int, stamp: float) -> Output:
        if len(data) != route.size:
            self._request_mapping(f"{route.name} arrived with {len(data)} bytes")
            return Output(error=f"{self.device.name}: {route.name} (0x{route.cob + self.offset:X}) DLC"
                                f" {len(data)}, expected {route.size} by the mapping read from the device")
        cast(Any, route.pdo).on_message(route.cob, bytearray(data), stamp)
        quality = self._quality()
        samples = []
        for var, ch in route.outputs:
            raw = var.raw
            if isinstance(raw, int | float):
                self._last_raw[ch.key] = raw
            samples.append(Sample(ch.address, ch.convert(var.od.decode_phys(cast(int, raw))), ts, quality))
        route.last_us = ts
        route.stale = False
        self._decoded_any = True
        out = self._seen(ts)
        return Output(samples=[*samples, *out.samples])

    def _seen(self, ts: int) -> Output:
        self.last_seen_us = ts
        if self.state is CommState.OK:
            return EMPTY
        return Output(samples=self._transition(ts))

    def _on_heartbeat(self, data: bytes, ts: int, stamp: float) -> Output:
        if len(data) != 1:
            return Output(error=f"{self.device.name}: heartbeat 0x{self._cob_hb + self.offset:X} DLC {len(data)},"
                                f" expected 1")
        state = NmtState.from_byte(data[0])
        if state is NmtState.UNKNOWN:
            return Output(error=f"{self.device.name}: heartbeat state 0x{data[0]:02X} is no NMT state")
        self.network.notify(self._cob_hb, bytearray(data), stamp)
        recheck = (self.last_hb_us == 0 and self.identity_ok is None) or self.state is CommState.LOST
        self.last_hb_us = ts
        samples: list[Sample] = []
        if recheck:
            self._need_config = True  # identity check on the first heartbeat and after a loss
            self._next_config_us = 0
            self._wake.set()
        if self.state is CommState.LOST:
            self._request_mapping("back after a loss")
        if state is not self.nmt:
            samples.extend(self._nmt_changed(state, ts))
        samples.extend(self._seen(ts).samples)
        return Output(samples=samples)

    def _nmt_changed(self, state: NmtState, ts: int) -> list[Sample]:
        old, self.nmt = self.nmt, state
        log.info("%s: node %d NMT %s -> %s", self.device.name, self.node_id, old.value, state.value)
        if state is NmtState.INITIALISING:
            self._need_config = True  # a boot-up: the device may be another one, with its own mapping
            self._next_config_us = 0
            self._request_mapping("boot-up")
        elif state is NmtState.PRE_OPERATIONAL and old is NmtState.OPERATIONAL:
            self._request_mapping("left OPERATIONAL (it may be reconfigured)")
        self._wake.set()
        return [Sample(self.prefix + "NmtState", state, ts)]

    def _request_mapping(self, reason: str) -> None:
        if self.options.pdo_mapping != "device":
            return
        self._mapping_gen += 1  # a read in progress is discarded: it may have seen the old mapping
        if not self._need_mapping:
            log.info("%s: re-reading the PDO mapping of node %d: %s", self.device.name, self.node_id, reason)
        self._need_mapping = True
        self._mapping_valid = False
        self._routes = {}
        self._next_config_us = 0
        self._wake.set()

    def _on_emcy(self, data: bytes, ts: int, stamp: float) -> Output:
        if len(data) != 8:
            return Output(error=f"{self.device.name}: EMCY 0x{self._cob_emcy + self.offset:X} DLC {len(data)},"
                                f" expected 8")
        emcy = self.node.emcy
        self.network.notify(self._cob_emcy, bytearray(data), stamp)
        del emcy.log[:-EMCY_LOG_KEEP]
        code, register = int.from_bytes(data[0:2], "little"), data[2]
        if code & 0xFF00:
            log.warning("%s: EMCY 0x%04X (%s), error register 0x%02X", self.device.name, code, emcy_text(code),
                        register)
        else:
            log.info("%s: EMCY error reset", self.device.name)
        return Output(samples=[*self.emcy.samples(emcy.active, register, ts), *self._seen(ts).samples])

    # -- supervision ------------------------------------------------------------------------

    def _derive_state(self, now_us: int) -> CommState:
        if self.consumer_us > 0:
            if self.last_hb_us:
                reference, limit = self.last_hb_us, self.consumer_us
            else:
                reference, limit = self.start_us, self.grace_us
            if now_us - reference > limit:
                return CommState.LOST
        elif now_us - (self.last_seen_us or self.start_us) > self.grace_us:
            return CommState.LOST
        if not self._decoded_any:
            return CommState.STALE if now_us - self.start_us > self.grace_us else CommState.WAITING
        if any(self._overdue(r, now_us) for r in self._routes.values()) or not self._mapping_valid:
            return CommState.STALE
        return CommState.OK

    def _overdue(self, route: _Route, now_us: int) -> bool:
        """A timed TPDO gone stale; one not yet heard since start only after its 2.5 periods of grace
        (as the DBC supervisor gives its messages), so a device is OK from its first TPDOs on."""
        if not (route.period_us and route.stale):
            return False
        return route.last_us > 0 or now_us - self.start_us > STALE_FACTOR * route.period_us

    def _transition(self, now_us: int) -> list[Sample]:
        new = self._derive_state(now_us)
        if new is self.state:
            return []
        if new is CommState.LOST:
            if self.last_hb_us:
                log.warning("%s: no heartbeat from node %d for %.0f ms (consumer time): device LOST",
                            self.device.name, self.node_id, self.consumer_us / 1000)
            else:
                log.warning("%s: nothing from node %d within %.0f ms: device LOST", self.device.name,
                            self.node_id, (self.consumer_us or self.grace_us) / 1000)
        elif self.state is CommState.LOST:
            log.info("%s: node %d is back (%s)", self.device.name, self.node_id, new.value)
        self.state = new
        return self._state_samples(now_us)

    def _state_samples(self, now_us: int) -> list[Sample]:
        level = {CommState.LOST: AlarmLevel.ALARM, CommState.STALE: AlarmLevel.WARNING}.get(self.state, AlarmLevel.OK)
        return [Sample(self.prefix + "CommState", self.state, now_us),
                Sample(self.prefix + "Alarm/CommLoss", level, now_us)]

    def _all_values(self) -> list[str]:
        p = self.prefix
        return [ch.address for ch in self._channels.values()] + [p + "NmtState", p + "EmcyCode", p + "EmcyText"]

    def tick(self, now_us: int) -> Output:
        was = self.state
        samples = self._transition(now_us)
        stale: list[str] = []
        if self.state is CommState.LOST and was is not CommState.LOST:
            stale = self._all_values()
            for route in self._routes.values():
                route.stale = True
        for route in self._routes.values():
            if route.period_us and not route.stale and now_us - route.last_us > STALE_FACTOR * route.period_us:
                route.stale = True
                stale.extend(route.addresses)
        if self.last_seen_us != self._published_seen:
            self._published_seen = self.last_seen_us
            samples.append(Sample(self.prefix + "LastSeen", self.last_seen_us, now_us))
        frames = self._due_rpdo(now_us, stale)
        if (self.nmt_master and self.nmt in (NmtState.PRE_OPERATIONAL, NmtState.INITIALISING)
                and self.identity_ok is not False and self.state is not CommState.LOST
                and now_us - self._last_nmt_start_us >= NMT_RESTART_US):
            frames.append(self._nmt_start(now_us))
        return Output(samples=samples, frames=frames, stale=stale)

    # -- commands ---------------------------------------------------------------------------

    def plan_command(self, name: str, value: float, now_us: int) -> CommandPlan:
        cmd = self.profile.model.commands.get(name)
        if cmd is None:
            known = ", ".join(sorted(self.command_names)) or "none"
            raise CommandRejected(f"{self.device.name} has no command {name!r}; known: {known}")
        value = validate_command_value(self.device.name, name, cmd, value)
        var = self._cmd_vars[name]
        raw, data = self._encode(name, var, value)
        if cmd.via == "rpdo":
            frame = self._rpdo_frame({var.index << 8 | var.subindex: raw})
            if cmd.ack.type == "none":
                return CommandPlan(command=name, value=value, frames=[frame],
                                   detail=f"RPDO 0x{frame.arbitration_id:X} sent; an RPDO is not acknowledged")
        return CommandPlan(command=name, value=value, frames=[], execute=self._download(var, raw, data))

    def _encode(self, name: str, var: ODVariable, value: float) -> tuple[Raw, bytes]:
        """The raw value (an integer, or a float for REAL32/REAL64) and its bytes; CommandRejected if out of range."""
        raw = raw_value(var, value)
        if isinstance(raw, float):
            limits = real_limits(var)
            assert limits is not None
            low: float = limits[0]
            high: float = limits[1]
        else:
            low = -(1 << (len(var) - 1)) if var.data_type in canopen.objectdictionary.SIGNED_TYPES else 0
            high = (1 << (len(var) - 1)) - 1 if low else (1 << len(var)) - 1
        if not low <= raw <= high:
            raise CommandRejected(f"{self.device.name}/{name} = {value}: raw {raw} does not fit {ref_text(var)};"
                                  f" expected {low:g} to {high:g}")
        try:
            data = var.encode_raw(raw)
        except (ValueError, OverflowError) as e:  # struct refuses what the type cannot carry
            raise CommandRejected(f"{self.device.name}/{name} = {value}: cannot encode {ref_text(var)}: {e}") from e
        return raw, data

    def _download(self, var: ODVariable, raw: Raw, data: bytes) -> Callable[[float], tuple[CommandStatus, str]]:
        where = ref_text(var)

        def execute(timeout: float) -> tuple[CommandStatus, str]:
            try:
                with self._sdo_session(timeout) as sdo:
                    sdo.download(var.index, var.subindex, data)
            except SdoAbortedError as e:
                return CommandStatus.REJECTED, f"SDO abort {abort_text(e.code)} (write {where} = {raw})"
            except (SdoCommunicationError, ReadTimeout) as e:
                return CommandStatus.TIMEOUT, f"no SDO response for {where} within {timeout:g} s ({e})"
            except (can.CanError, EmsbmsError) as e:
                return CommandStatus.REJECTED, f"not sent: {e}"
            return CommandStatus.ACKED, f"SDO download {where} = {raw} confirmed by node {self.node_id}"

        return execute

    def _rpdo_frame(self, values: dict[int, Raw]) -> can.Message:
        """The RPDO carrying `values` ((index << 8 | sub) -> raw); other entries keep their setpoints."""
        rpdo_map = next((m for m in _maps(self._rpdo) if m.enabled and any(
            (v.od.index << 8 | v.od.subindex) in values for v in m.map)), None)
        if rpdo_map is None or rpdo_map.cob_id is None:
            raise CommandRejected(f"{self.device.name}: no enabled RPDO maps {list(map(hex, values))}")
        for var in rpdo_map.map:
            k = var.od.index << 8 | var.od.subindex
            var.raw = values.get(k, self._rpdo_fill(var))
        can_id = rpdo_map.cob_id + self.offset
        return can.Message(arbitration_id=can_id, data=bytes(rpdo_map.data), is_extended_id=can_id > 0x7FF)

    def _rpdo_fill(self, var: PdoVariable) -> Raw:
        """An RPDO entry with no new value: its active setpoint, idle value, last value seen, or EDS default."""
        key = (var.od.index, var.od.subindex)
        for name, active in self._active.items():
            if self._cmd_vars[name].index == key[0] and self._cmd_vars[name].subindex == key[1]:
                return raw_kind(var.od, active.value)
        for name, cmd in self.profile.model.commands.items():
            v = self._cmd_vars[name]
            if (v.index, v.subindex) == key and cmd.idle is not None:
                return raw_value(v, cmd.idle)
        if key in self._last_raw:
            return self._last_raw[key]
        return raw_kind(var.od, var.od.default or 0)

    def command_done(self, plan: CommandPlan, result: CommandResult, now_us: int) -> Output:
        cmd = self.profile.model.commands[plan.command]
        if result.status not in (CommandStatus.ACKED, CommandStatus.SENT):
            return EMPTY
        if cmd.via == "rpdo" and cmd.ttl_s is not None and cmd.period_ms is not None:
            raw = raw_value(self._cmd_vars[plan.command], plan.value)
            self._active.start(plan.command, raw, now_us, cmd.ttl_s, cmd.period_ms)
        return Output(samples=[Sample(self.prefix + plan.command, plan.value, now_us)])

    def _due_rpdo(self, now_us: int, stale: list[str]) -> list[can.Message]:
        due: dict[int, Raw] = {}
        names, expired = self._active.due(now_us, self.state)  # tick has supervised first
        if expired and self.state is CommState.LOST:
            log.warning("%s is LOST: cyclic setpoints %s stopped (write them again once it is back)",
                        self.device.name, ", ".join(expired))
        stale.extend(self.prefix + name for name in expired)
        for name in names:
            var = self._cmd_vars[name]
            due[var.index << 8 | var.subindex] = raw_kind(var, self._active[name].value)
        if not due:
            return []
        try:
            return [self._rpdo_frame(due)]
        except CommandRejected as e:
            log.warning("%s", e)
            return []

    # -- blocking conversations (worker thread or caller's thread) --------------------------

    @contextmanager
    def _sdo_session(self, timeout: float, wait: float | None = None) -> Iterator[SdoClient]:
        """Exclusive use of the SDO client (one transfer at a time, as CiA 301 requires).

        `timeout` bounds each response; `wait` (default: timeout) how long to wait for the client.
        """
        if self._io is None:
            raise EmsbmsError(f"{self.device.name}: the edge is not running; no SDO possible")
        wait = timeout if wait is None else wait
        if not self._sdo_lock.acquire(timeout=max(wait, 0.0)):
            raise ReadTimeout(f"{self.device.name}: SDO channel busy for {wait:g} s")
        try:
            sdo = self.node.sdo
            sdo.RESPONSE_TIMEOUT = max(timeout, 0.01)
            self._sdo_active = True
            yield sdo
        finally:
            self._sdo_active = False
            self._sdo_lock.release()

    def fresh(self, name: str, timeout: float) -> Sample:
        ch = self._channels.get(name)
        if ch is None:
            if self.prefix + name in {c.address for c in self.channels()}:
                raise EmsbmsError(f"{self.prefix}{name} is kept by the edge, not an object of the device;"
                                  f" on-demand reads: {', '.join(self._channels)}")
            raise UnknownAddressError(f"{self.device.name} has no channel {name!r}")
        try:
            with self._sdo_session(timeout) as sdo:
                data = sdo.upload(ch.var.index, ch.var.subindex)
        except SdoCommunicationError as e:
            raise ReadTimeout(f"{ch.address}: no SDO response from node {self.node_id} within {timeout:g} s") from e
        except SdoAbortedError as e:
            raise SdoAbort(f"{ch.address}: SDO upload of {ref_text(ch.var)} aborted: {abort_text(e.code)}") from e
        assert self._io is not None
        return self._sample(ch, data, self._io.now_us())

    def _sample(self, ch: ObjectChannel, data: bytes, ts: int) -> Sample:
        raw = ch.var.decode_raw(data)
        if isinstance(raw, int | float):
            self._last_raw[ch.key] = raw
        return Sample(ch.address, ch.convert(ch.var.decode_phys(cast(int, raw))), ts, self._quality())

    def background(self, io: AdapterIO) -> None:
        self._io = io
        self._bus.io = io
        try:
            while not io.stop.is_set():
                self._wake.wait(0.1)
                self._wake.clear()
                if io.stop.is_set():
                    break
                self._work(io)
        finally:
            self._bus.io = None
            self._io = None

    def _work(self, io: AdapterIO) -> None:
        now = io.now_us()
        reachable = self.state is not CommState.LOST or self.last_hb_us == 0
        if now < self._next_config_us or not reachable:
            return
        if self._need_config:
            if not self._configure(io):
                self._back_off(now)
                return
            self._need_config = False
        mapping_readable = self.nmt in (NmtState.OPERATIONAL, NmtState.UNKNOWN)
        if self._need_mapping and mapping_readable and not self._read_mappings():
            self._back_off(now)
            return
        self._retry_us = RETRY_US
        if self._mapping_valid and self._polled and now >= self._next_poll_us and self.state is not CommState.LOST:
            self._next_poll_us = now + int(self.options.sdo_poll_ms * 1000)
            self._poll(io)

    def _back_off(self, now: int) -> None:
        """Wait before the next attempt (a heartbeat or boot-up cuts the wait short)."""
        self._next_config_us = now + self._retry_us
        self._retry_us = min(2 * self._retry_us, MAX_RETRY_US)

    def _upload(self, index: int, sub: int) -> bytes | None:
        """One SDO upload; None if the device aborts it (the object is optional)."""
        try:
            with self._sdo_session(self.sdo_timeout) as sdo:
                data: bytes = sdo.upload(index, sub)
                return data
        except SdoAbortedError as e:
            log.info("%s: 0x%04X sub %d: %s", self.device.name, index, sub, abort_text(e.code))
            return None

    def _configure(self, io: AdapterIO) -> bool:
        """Identity check and heartbeat set-up; False if the device did not answer (retried later)."""
        try:
            self._check_identity(io)
            self._setup_heartbeat()
        except (SdoCommunicationError, ReadTimeout, can.CanError, EmsbmsError) as e:
            log.info("%s: configuring node %d failed (%s); retrying", self.device.name, self.node_id, e)
            return False
        return True

    def _u32(self, index: int, sub: int) -> int | None:
        data = self._upload(index, sub)
        return int.from_bytes(data[:4], "little") if data else None

    def _check_identity(self, io: AdapterIO) -> None:
        p = self.prefix
        found: dict[str, int | None] = {"device_type": self._u32(0x1000, 0)}
        for _, sub, key in IDENTITY_SUBS:
            found[key] = self._u32(0x1018, sub)
        now = io.now_us()
        samples = [Sample(p + "DeviceType", found["device_type"], now)]
        samples += [Sample(p + name, found[key], now) for name, _, key in IDENTITY_SUBS]
        problems = identity_problems(self.options.identity, found)
        self.identity_ok = not problems
        if problems:
            log.warning("%s: node %d is not the device profile %s expects: %s; its values are marked invalid",
                        self.device.name, self.node_id, self.profile.name, "; ".join(problems))
        samples.append(Sample(p + "Alarm/Identity", AlarmLevel.ALARM if problems else AlarmLevel.OK, now))
        io.publish(samples)

    def _setup_heartbeat(self) -> None:
        wanted = self.options.heartbeat_producer_ms
        if wanted is not None:
            with self._sdo_session(self.sdo_timeout) as sdo:
                sdo.download(0x1017, 0, wanted.to_bytes(2, "little"))
        data = self._upload(0x1017, 0)
        producer = int.from_bytes(data[:2], "little") if data else None
        self.consumer_us = self._consumer_us(producer)
        log.info("%s: node %d heartbeat %s ms, consumer time %.0f ms", self.device.name, self.node_id,
                 producer, self.consumer_us / 1000)

    def _read_mappings(self) -> bool:
        """Read the TPDO and RPDO mapping from the device (PdoMap.read over SDO) and decode by it.

        False if the device did not answer (retried later).
        """
        generation = self._mapping_gen
        try:
            tpdo = self._read_pdo(TPDO)
            rpdo = self._read_pdo(RPDO)
        except SdoAbortedError as e:
            log.warning("%s: node %d refuses to give its PDO mapping (%s); decoding by the EDS default mapping",
                        self.device.name, self.node_id, abort_text(e.code))
            tpdo, rpdo = self._pdo_from_eds(TPDO), self._pdo_from_eds(RPDO)
        except (SdoCommunicationError, ReadTimeout, can.CanError, EmsbmsError) as e:
            log.info("%s: reading the PDO mapping of node %d failed (%s); retrying", self.device.name,
                     self.node_id, e)
            return False
        if generation != self._mapping_gen:
            return True  # the device changed state while we read: read again
        self._install(tpdo)
        self._rpdo = rpdo
        self._need_mapping = False
        log.info("%s: node %d TPDOs: %s", self.device.name, self.node_id, "; ".join(
            f"{r.name} 0x{r.cob:X} [{', '.join(f'{v.od.index:04X}sub{v.od.subindex}/{v.length}' for v in r.pdo.map)}]"
            for r in self._routes.values()))
        return True

    def _read_pdo(self, kind: type[PdoBase]) -> PdoBase:
        pdo = self._new_pdo(kind)
        with self._sdo_session(self.sdo_timeout, wait=10 * self.sdo_timeout):
            cast(Any, pdo).read(from_od=False)
        self._unsubscribe(pdo)
        return pdo

    def _poll(self, io: AdapterIO) -> None:
        """SDO-read the channels that no TPDO carries (e.g. 0x6020sub2 capacity)."""
        samples = []
        for ch in list(self._polled):
            try:
                data = self._upload(ch.var.index, ch.var.subindex)
            except (SdoCommunicationError, ReadTimeout, can.CanError, EmsbmsError) as e:
                log.info("%s: polling %s failed: %s", self.device.name, ch.address, e)
                break
            if data:
                samples.append(self._sample(ch, data, io.now_us()))
        if samples:
            io.publish(samples)
