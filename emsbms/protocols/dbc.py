"""The DBC adapter: devices described by a DBC file or an inline JSON byte map."""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import can

from emsbms.errors import CommandRejected, ProfileError
from emsbms.profile.codec import (
    AlarmOutput,
    ChannelOutput,
    CompiledMessage,
    Sampler,
    compile_message,
    compile_partial_sampler,
    compile_sampler,
)
from emsbms.profile.models import encodable_range
from emsbms.protocols.base import (
    EMPTY,
    EXTENDED,
    Adapter,
    CommandPlan,
    DeviceConfig,
    Output,
    SentFrame,
    frame_key,
)
from emsbms.protocols.cyclic import CyclicSetpoints
from emsbms.protocols.supervision import Supervisor
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

_new = tuple.__new__  # builds an Output without its Python-level constructor


def _known(names: Iterable[str]) -> str:
    return ", ".join(sorted(names))


def check_signal_refs(
    profile: Profile,
    ack_types: tuple[str, ...] = ("echo", "none"),
    extended_only: bool = False,
    first_invalid: Callable[[int], int] | None = None,
) -> None:
    """Check that every message and signal a profile names exists in its database, and its numbers.

    `ack_types` are the acknowledgements the protocol knows; with `extended_only` every message
    must have a 29-bit ID (J1939). A command that only requests a PGN names no message.
    `first_invalid(length)`, if given, is the lowest raw value of an unsigned signal that does not
    carry a value (J1939: error and not-available codes); command limits stay below it.
    """
    _check_refs(profile, ack_types, extended_only)
    check_signal_numbers(profile, first_invalid)


def _check_refs(profile: Profile, ack_types: tuple[str, ...], extended_only: bool) -> None:
    m = profile.model
    db = profile.db
    label = f"profile {m.name}"
    src = m.source.dbc or "inline messages"
    if db is None:
        raise ProfileError(f"{label}: source: protocol {m.protocol!r} needs a dbc or messages")
    messages = {msg.name: msg for msg in db.messages}

    def need(path: str, message: str | None, signal: str | None = None) -> None:
        if message is None:
            raise ProfileError(f"{label}: {path}: protocol {m.protocol} maps signals, not od")
        msg = messages.get(message)
        if msg is None:
            raise ProfileError(
                f"{label}: {path}.message {message!r} not in {src}; known: {_known(messages)}"
            )
        if signal is not None and signal not in {s.name for s in msg.signals}:
            raise ProfileError(
                f"{label}: {path}.signal {signal!r} not in message {message} of {src};"
                f" known: {_known(s.name for s in msg.signals)}"
            )
        if msg.is_multiplexed():
            raise ProfileError(f"{label}: {path}: multiplexed message {message} is not supported")
        if extended_only and not msg.is_extended_frame:
            raise ProfileError(f"{label}: {path}: message {message} must have a 29-bit {m.protocol} ID")

    for name, settings in m.messages.items():
        need(f"messages.{name}", name)
        length = messages[name].length
        for key, bad in (("min_dlc", settings.min_dlc is not None and settings.min_dlc > length),
                         ("max_dlc", settings.max_dlc is not None and settings.max_dlc < length)):
            if bad:
                raise ProfileError(
                    f"{label}: messages.{name}.{key}: expected {'at most' if key == 'min_dlc' else 'at least'}"
                    f" {length} (the length of {name} in {src}); found {getattr(settings, key)}"
                )
    for name, ch in m.channels.items():
        need(f"channels.{name}", ch.message, ch.signal)
    for name, al in m.alarms.items():
        for i, s in enumerate(al.sources):
            need(f"alarms.{name}.sources.{i}", s.message, s.signal)
    for i, t in enumerate(m.transmit):
        need(f"transmit.{i}", t.message)
        for sig in t.signals:
            need(f"transmit.{i}.signals", t.message, sig)
    for name, cmd in m.commands.items():
        if cmd.request is None:
            need(f"commands.{name}", cmd.message, cmd.signal)
        if cmd.ack.type == "echo":
            need(f"commands.{name}.ack", cmd.ack.message, cmd.ack.signal)
        elif cmd.ack.type not in ack_types:
            raise ProfileError(
                f"{label}: commands.{name}.ack.type {cmd.ack.type!r} is not for protocol"
                f" {m.protocol}; expected {', '.join(ack_types)}"
            )


def _signal_text(msg: Any, sig: Any) -> str:
    kind = "float" if sig.is_float else ("signed" if sig.is_signed else "unsigned")
    return f"{msg.name}.{sig.name} ({sig.length}-bit {kind}, scale {sig.scale:g}, offset {sig.offset:g})"


def signal_limits(sig: Any, first_invalid: Callable[[int], int] | None = None) -> tuple[float, float]:
    """The physical values a cantools signal can be sent with: its raw range scaled, within its min/max."""
    low, high = encodable_range(sig.length, sig.is_signed, sig.scale, sig.offset, sig.is_float)
    if first_invalid is not None and not sig.is_signed and not sig.is_float:
        top = min((1 << sig.length) - 1, first_invalid(sig.length) - 1) * sig.scale + sig.offset
        low, high = min(sig.offset, top), max(sig.offset, top)
    if sig.minimum is not None:
        low = max(low, sig.minimum)
    if sig.maximum is not None:
        high = min(high, sig.maximum)
    return low, high


def _raw_fits(sig: Any, value: float) -> bool:
    """Whether `value` becomes a raw value the signal's bits hold, computed as cantools encodes it."""
    if sig.is_float:
        return True
    try:
        raw = sig.conversion.numeric_scaled_to_raw(value)
    except (OverflowError, ValueError):
        return False
    low = -(1 << (sig.length - 1)) if sig.is_signed else 0
    return bool(low <= raw <= low + (1 << sig.length) - 1)


def check_signal_numbers(profile: Profile, first_invalid: Callable[[int], int] | None = None) -> None:
    """Check the numbers of every signal the profile uses, and its limits against what the signal carries.

    A used signal has a finite non-zero scale, a finite offset and a finite range; a channel's
    correction keeps its values finite; a command's min, max and idle and a transmitted value lie
    within what the signal can carry (raw bits, signedness, scale and offset, its DBC min/max).
    """
    m = profile.model
    label = f"profile {m.name}"
    src = f"source.dbc {m.source.dbc}" if m.source.dbc else "source.messages"
    checked: set[tuple[str, str]] = set()

    def signal(path: str, message: str, name: str) -> tuple[Any, Any]:
        msg = profile.message(message)
        sig = msg.get_signal_by_name(name)
        if (message, name) in checked:
            return msg, sig
        checked.add((message, name))
        bad = [f"{key} {value!r}" for key, value, ok in (
            ("scale", sig.scale, math.isfinite(sig.scale) and sig.scale != 0),
            ("offset", sig.offset, math.isfinite(sig.offset)),
            ("minimum", sig.minimum, sig.minimum is None or math.isfinite(sig.minimum)),
            ("maximum", sig.maximum, sig.maximum is None or math.isfinite(sig.maximum)),
        ) if not ok]
        if bad:
            raise ProfileError(f"{label}: {path}: signal {message}.{name} of {src} has {', '.join(bad)};"
                               " expected a finite non-zero scale and finite offset, minimum and maximum")
        low, high = encodable_range(sig.length, sig.is_signed, sig.scale, sig.offset, sig.is_float)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ProfileError(f"{label}: {path}: signal {_signal_text(msg, sig)} of {src} overflows;"
                               " expected its raw values times its scale plus its offset to be finite")
        return msg, sig

    def within(path: str, msg: Any, sig: Any, value: float, unit: str = "") -> None:
        low, high = signal_limits(sig, first_invalid)
        eps = abs(sig.scale) * 1e-6
        if not low - eps <= value <= high + eps or not _raw_fits(sig, value):
            u = f" {unit}" if unit else ""
            raise ProfileError(f"{label}: {path}: expected a number from {low:g} to {high:g}{u} (what"
                               f" {_signal_text(msg, sig)} can carry); found {value:g}")

    for name, ch in m.channels.items():
        if ch.message is None or ch.signal is None:
            continue
        msg, sig = signal(f"channels.{name}", ch.message, ch.signal)
        low, high = encodable_range(sig.length, sig.is_signed, sig.scale, sig.offset, sig.is_float)
        ends = (low * ch.scale + ch.offset, high * ch.scale + ch.offset)
        if not all(math.isfinite(v) for v in ends):
            raise ProfileError(f"{label}: channels.{name}: scale {ch.scale:g} and offset {ch.offset:g} overflow"
                               f" on {_signal_text(msg, sig)} ({low:g} to {high:g}); expected finite values")
    for name, cmd in m.commands.items():
        if cmd.message is None or cmd.signal is None:
            continue
        msg, sig = signal(f"commands.{name}", cmd.message, cmd.signal)
        within(f"commands.{name}.min", msg, sig, cmd.min, cmd.unit)
        within(f"commands.{name}.max", msg, sig, cmd.max, cmd.unit)
        if cmd.idle is not None:
            within(f"commands.{name}.idle", msg, sig, cmd.idle, cmd.unit)
        if cmd.ack.message is not None and cmd.ack.signal is not None:
            signal(f"commands.{name}.ack", cmd.ack.message, cmd.ack.signal)
    for i, t in enumerate(m.transmit):
        for sig_name, value in t.signals.items():
            msg, sig = signal(f"transmit.{i}.signals.{sig_name}", t.message, sig_name)
            within(f"transmit.{i}.signals.{sig_name}", msg, sig, value)


@dataclass(slots=True)
class _Route:
    """One received message of the device: its decoders and where each value goes."""

    compiled: CompiledMessage
    key: int
    min_dlc: int | None  # strict bounds from the profile (None: no bound)
    max_dlc: int | None
    declared: int  # frames shorter than this are short frames: the profile's min_dlc, else the message length
    outputs: tuple[ChannelOutput, ...]
    # (signal index, alarm name, source slot, level, active raw value or None, OK raw value or None)
    alarm_inputs: tuple[tuple[int, str, int, int, int | None, int | None], ...]
    alarms: tuple[AlarmOutput, ...]
    sample: Sampler  # full-length payload -> the samples of its channels and alarms
    by_length: dict[int, Sampler]  # shorter payloads: one sampler per length, compiled when first seen


def dlc_text(min_dlc: int | None, max_dlc: int | None) -> str:
    """The lengths a message's bounds accept, as a refusal names them: "6..8", "at least 6"."""
    if min_dlc is not None and max_dlc is not None:
        return str(min_dlc) if min_dlc == max_dlc else f"{min_dlc}..{max_dlc}"
    return f"at least {min_dlc}" if min_dlc is not None else f"at most {max_dlc}"


class DbcAdapter(Adapter):
    """Decodes a DBC or inline-message device and encodes its commands.

    Frames are taken as devices send them: excess bytes are ignored, and a shorter frame gives
    every signal that lies wholly inside the bytes received (the others stay absent) and counts as
    a short frame. A profile's per-message ``min_dlc``/``max_dlc`` are strict: frames outside are
    refused with the expected and found length.
    """

    protocol = "dbc"

    def __init__(self, device: DeviceConfig, profile: Profile) -> None:
        super().__init__(device, profile)
        m = profile.model
        self.offset = device.id_offset
        self.supervisor = Supervisor(device.name, int(m.timeout_ms * 1000))
        sent_by_edge = {c.message for c in m.commands.values()} | {t.message for t in m.transmit}
        self._alarm_slots: dict[str, list[int]] = {
            name: [-1] * len(al.sources) for name, al in m.alarms.items()
        }
        self._bad_values = [0]  # non-finite numbers decoded (the generated samplers count here)
        self._short_frames = 0
        self._routes: dict[int, _Route] = {}
        self._by_name: dict[str, _Route] = {}
        for msg in profile.db.messages:
            if msg.name in sent_by_edge:
                continue
            route = self._make_route(msg)
            self._routes[route.key] = route
            self._by_name[msg.name] = route
            settings = m.messages.get(msg.name)
            period = settings.period_ms if settings else None
            self.supervisor.watch(
                route.key,
                int(period * 1000) if period else None,
                [o[1] for o in route.outputs]
                + [self.prefix + "Alarm/" + a[1] for a in route.alarm_inputs],
            )
        self._active = CyclicSetpoints()
        self._in_flight: dict[str, float] = {}  # command -> value sent, its result not in yet
        self._transmit_next: list[int] = [0] * len(m.transmit)

    def _make_route(self, msg: Any) -> _Route:
        m = self.profile.model
        compiled = compile_message(msg)
        index = {n: i for i, n in enumerate(compiled.signal_names)}
        outputs = tuple(
            (index[ch.signal], self.prefix + name, ch.scale, ch.offset, ch.abs, ch.type)
            for name, ch in m.channels.items()
            if ch.message == msg.name and ch.signal is not None
        )
        alarm_inputs = tuple(
            (index[s.signal], name, slot, s.level, s.value, s.ok)
            for name, al in m.alarms.items()
            for slot, s in enumerate(al.sources)
            if s.message == msg.name
        )
        settings = m.messages.get(msg.name)
        min_dlc = settings.min_dlc if settings else None
        max_dlc = settings.max_dlc if settings else None
        alarms = tuple(
            (self._alarm_slots[name], self.prefix + "Alarm/" + name,
             [(i, slot, level, value, ok) for i, n, slot, level, value, ok in alarm_inputs if n == name])
            for name in dict.fromkeys(a[1] for a in alarm_inputs)
        )
        sampler, _ = compile_sampler(compiled, outputs, alarms, self._bad_values)
        return _Route(
            compiled=compiled,
            key=frame_key(msg.frame_id + self.offset, msg.is_extended_frame),
            min_dlc=min_dlc,
            max_dlc=max_dlc,
            declared=min(msg.length, min_dlc) if min_dlc is not None else msg.length,
            outputs=outputs,
            alarm_inputs=alarm_inputs,
            alarms=alarms,
            sample=sampler,
            by_length={},
        )

    @classmethod
    def check_profile(cls, profile: Profile) -> None:
        check_signal_refs(profile)

    # -- contract ---------------------------------------------------------------------------

    def channels(self) -> list[ChannelInfo]:
        m = self.profile.model
        out = [
            ChannelInfo(self.prefix + n, c.unit, ChannelKind.MEASUREMENT, c.description)
            for n, c in m.channels.items()
        ]
        out += [
            ChannelInfo(self.prefix + "Alarm/" + n, "", ChannelKind.ALARM, a.description)
            for n, a in m.alarms.items()
        ]
        out += [
            ChannelInfo(self.prefix + n, c.unit, ChannelKind.COMMAND, c.description, c.min, c.max)
            for n, c in m.commands.items()
        ]
        return out + self.supervisor.channels()

    def frame_keys(self) -> Iterable[int]:
        return self._routes.keys()

    def sent_frames(self) -> Iterable[SentFrame]:
        m = self.profile.model
        commands = {c.message for c in m.commands.values()}
        for name in dict.fromkeys([*commands, *(t.message for t in m.transmit)]):
            if name is not None:
                msg = self.profile.message(name)
                yield SentFrame(frame_key(msg.frame_id + self.offset, msg.is_extended_frame), name, name in commands)

    @property
    def comm_state(self) -> CommState:
        return self.supervisor.state

    def start(self, now_us: int) -> Output:
        return Output(samples=self.supervisor.begin(now_us))

    def counters(self) -> tuple[int, int]:
        return self._short_frames, self._bad_values[0]

    def on_frame(self, msg: can.Message, now_us: int) -> Output | None:
        aid = msg.arbitration_id
        route = self._routes.get(aid | EXTENDED if msg.is_extended_id else aid)
        if route is None:
            return None
        if msg.is_remote_frame:
            return Output(error=f"{self.device.name}: remote frame for {route.compiled.name}")
        data: bytes | bytearray = msg.data
        if len(data) != route.compiled.length:
            return self._other_length(route, msg)
        # the hot path: one generated function decodes, sets the alarm slots and builds the samples
        ts = round(msg.timestamp * 1_000_000)
        samples = route.sample(data, ts)
        transition = self.supervisor.seen(route.key, ts)
        if transition:
            samples += transition
        return _new(Output, (samples, (), (), None))  # type: ignore[no-any-return]

    def _refusal(self, route: _Route, msg: can.Message) -> str | None:
        """Why a frame's length is refused (the profile's strict bounds), or None."""
        n = len(msg.data)
        low, high = route.min_dlc, route.max_dlc
        if (low is None or n >= low) and (high is None or n <= high):
            return None
        return (f"{self.device.name}: {route.compiled.name} (0x{msg.arbitration_id:X}) DLC {n},"
                f" expected {dlc_text(low, high)}")

    def _other_length(self, route: _Route, msg: can.Message) -> Output:
        """A frame longer or shorter than its message: excess bytes ignored, a short one gives what it holds."""
        refused = self._refusal(route, msg)
        if refused is not None:
            return Output(error=refused)
        data: bytes | bytearray = msg.data
        n = len(data)
        ts = round(msg.timestamp * 1_000_000)
        length = route.compiled.length
        if n > length:
            samples = route.sample(data[:length], ts)
        else:
            sampler = route.by_length.get(n)
            if sampler is None:
                sampler = route.by_length[n] = compile_partial_sampler(
                    route.compiled, n, route.outputs, route.alarms, self._bad_values)[0]
            samples = sampler(data, ts)
            if n < route.declared:
                self._short_frames += 1
        transition = self.supervisor.seen(route.key, ts)
        if transition:
            samples.extend(transition)
        return Output(samples=samples)

    def _short_frame(self, route: _Route, msg: can.Message) -> Output:
        """The generic decoder, without generated code: what the compiled samplers must give, for any length.

        Kept as the reference the tests hold the samplers to (it counts no short frame).
        """
        refused = self._refusal(route, msg)
        if refused is not None:
            return Output(error=refused)
        data: bytes | bytearray = msg.data
        length = route.compiled.length
        n = len(data)
        data = bytes(data[:length]) + bytes(max(0, length - n))
        values = route.compiled.decode(data)
        ts = round(msg.timestamp * 1_000_000)
        samples: list[Sample] = []
        needed = route.compiled.bytes_needed
        for idx, address, scale, offset, take_abs, kind in route.outputs:
            if needed[idx] > n:
                continue
            v = values[idx] * scale + offset if (scale != 1.0 or offset != 0.0) else values[idx]
            if take_abs:
                v = abs(v)
            if not math.isfinite(v):
                self._bad_values[0] += 1
                samples.append(Sample(address, None, ts, Quality.INVALID))
                continue
            if kind == "bool":
                v = bool(v)
            elif kind == "int":
                v = int(v)
            samples.append(Sample(address, v, ts))
        if route.alarm_inputs:
            samples.extend(self._alarms(route, values, n, ts))
        transition = self.supervisor.seen(route.key, ts)
        if transition:
            samples.extend(transition)
        return Output(samples=samples)

    def _alarms(self, route: _Route, values: tuple[Any, ...], n: int, ts: int) -> list[Sample]:
        touched: dict[str, None] = {}
        needed = route.compiled.bytes_needed
        for idx, name, slot, level, active_value, ok_value in route.alarm_inputs:
            if needed[idx] > n:
                continue
            v = values[idx]
            slots = self._alarm_slots[name]
            touched[name] = None
            if not math.isfinite(v):
                self._bad_values[0] += 1
                slots[slot] = -1
                continue
            active = (v != 0) if active_value is None else (v == active_value)
            slots[slot] = level if active else 0 if ok_value is None or v == ok_value else -1
        return [
            Sample(self.prefix + "Alarm/" + name, AlarmLevel(max(self._alarm_slots[name])), ts)
            for name in touched if max(self._alarm_slots[name]) >= 0
        ]

    # -- transmission -----------------------------------------------------------------------

    def _frame(self, message_name: str, values: dict[str, float]) -> can.Message:
        msg = self.profile.message(message_name)
        data = msg.encode(values, strict=True)
        return can.Message(
            arbitration_id=msg.frame_id + self.offset,
            data=data,
            is_extended_id=msg.is_extended_frame,
        )

    def _message_values(self, message_name: str, overrides: dict[str, float]) -> dict[str, float]:
        """Signal values of an edge-sent message: active setpoints, else idle/initial values."""
        msg = self.profile.message(message_name)
        values: dict[str, float] = {}
        for sig in msg.signals:
            initial = sig.initial if sig.initial is not None else 0
            if sig.minimum is not None and initial < sig.minimum:
                initial = sig.minimum
            values[sig.name] = initial
        for name, cmd in self.profile.model.commands.items():
            if cmd.message != message_name or cmd.signal is None:
                continue
            active = self._active.get(name)
            if name in self._in_flight:  # a repetition must not put the old value back before the result
                values[cmd.signal] = self._in_flight[name]
            elif active is not None:
                values[cmd.signal] = active.value
            elif cmd.idle is not None:
                values[cmd.signal] = cmd.idle
        values.update(overrides)
        return values

    def tick(self, now_us: int) -> Output:
        transmit_next = self._transmit_next
        if not self._active and (not transmit_next or now_us < min(transmit_next)):
            # the usual tick: nothing to send, only supervision to check
            samples, went_stale = self.supervisor.tick(now_us)
            if not samples and not went_stale:
                return EMPTY
            return _new(Output, (samples, (), went_stale, None))  # type: ignore[no-any-return]
        samples, went_stale = self.supervisor.tick(now_us)  # first: a LOST device gets no setpoint from this tick
        due, expired = self._active.due(now_us, self.supervisor.state)
        if expired and self.supervisor.state is CommState.LOST:
            log.warning("%s is LOST: cyclic setpoints %s stopped (write them again once it is back)",
                        self.device.name, ", ".join(expired))
        frames: list[can.Message] = []
        m = self.profile.model
        for i, spec in enumerate(m.transmit):
            if now_us >= self._transmit_next[i]:
                self._transmit_next[i] = now_us + int(spec.period_ms * 1000)
                frames.append(self._frame(spec.message, self._message_values(spec.message, dict(spec.signals))))
        stale = [self.prefix + name for name in expired]
        due_messages = dict.fromkeys(m.commands[name].message or "" for name in due)
        for msg_name in due_messages:
            frames.append(self._frame(msg_name, self._message_values(msg_name, {})))
        return Output(samples=samples, frames=frames, stale=stale + went_stale)

    # -- commands ---------------------------------------------------------------------------

    def plan_command(self, name: str, value: float, now_us: int) -> CommandPlan:
        cmd = self.profile.model.commands.get(name)
        if cmd is None:
            raise CommandRejected(
                f"{self.device.name} has no command {name!r}; known: {_known(self.command_names)}"
            )
        value = validate_command_value(self.device.name, name, cmd, value)
        assert cmd.message is not None and cmd.signal is not None
        try:
            frame = self._frame(cmd.message, self._message_values(cmd.message, {cmd.signal: value}))
        except Exception as e:  # cantools strict encoding: value outside the signal's range
            raise CommandRejected(f"{self.device.name}/{name} = {value}: cannot encode: {e}") from e
        ack = None
        if cmd.ack.type == "echo":
            ack = self._echo_check(cmd.ack.message or "", cmd.ack.signal or "", value, cmd.ack.tolerance)
        if cmd.ttl_s is not None and cmd.period_ms is not None:
            self._in_flight[name] = value
        return CommandPlan(command=name, value=value, frames=[frame], ack=ack)

    def _echo_check(self, message: str, signal: str, value: float, tolerance: float | None) -> Any:
        route = self._by_name[message]
        idx = route.compiled.signal_names.index(signal)
        sig = self.profile.message(message).get_signal_by_name(signal)
        tol = tolerance if tolerance is not None else abs(sig.conversion.scale) / 2
        key = route.key
        length = route.compiled.length
        need = route.compiled.bytes_needed[idx]
        decode = route.compiled.decode

        def check(msg: can.Message) -> tuple[CommandStatus, str] | None:
            if frame_key(msg.arbitration_id, msg.is_extended_id) != key or len(msg.data) < need:
                return None
            got = decode(bytes(msg.data).ljust(length, b"\0"))[idx]
            if abs(got - value) <= tol:
                return CommandStatus.ACKED, f"echo {message}.{signal} = {got}"
            return None

        return check

    def command_done(self, plan: CommandPlan, result: CommandResult, now_us: int) -> Output:
        cmd = self.profile.model.commands[plan.command]
        if self._in_flight.get(plan.command) == plan.value:
            del self._in_flight[plan.command]
        if result.status not in (CommandStatus.ACKED, CommandStatus.SENT):
            return EMPTY
        if cmd.ttl_s is not None and cmd.period_ms is not None:
            self._active.start(plan.command, plan.value, now_us, cmd.ttl_s, cmd.period_ms)
        return Output(samples=[Sample(self.prefix + plan.command, plan.value, now_us)])


def validate_command_value(device: str, name: str, cmd: Any, value: float) -> float:
    """Check a command value against the profile's limits; raises CommandRejected naming expected and found.

    Anything that is not a finite number within min..max is refused here, for every protocol:
    NaN, ±Infinity, strings, and integers too large for a float (10**400).
    """
    unit = f" {cmd.unit}" if cmd.unit else ""
    expected = f"expected a finite number from {cmd.min:g} to {cmd.max:g}{unit}"
    try:
        if not isinstance(value, numbers.Real):
            raise TypeError(value)
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        raise CommandRejected(f"{device}/{name}: {expected}, found {_found(value)}") from None
    if not math.isfinite(number):
        raise CommandRejected(f"{device}/{name}: {expected}, found {_found(value)}")
    if cmd.type == "bool" and number not in (0.0, 1.0):
        raise CommandRejected(f"{device}/{name}: expected 0 or 1, found {value!r}")
    if number < cmd.min:
        raise CommandRejected(f"{device}/{name} = {value}{unit} is below the minimum {cmd.min}{unit}")
    if number > cmd.max:
        raise CommandRejected(f"{device}/{name} = {value}{unit} is above the maximum {cmd.max}{unit}")
    return number


def _found(value: object) -> str:
    """A refused value, short: huge integers by their digits."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        return f"an integer of {value.bit_length()} bits (about 10**{int(value.bit_length() * 0.30103)})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
