"""Compiled signal decoders: each message's signals become one generated Python function.

cantools' ``decode_message`` is general and slow on the hot path (it builds dicts and goes
through bitstruct). A profile's messages are compiled once into a function that reads the
byte-aligned 8/16/32/64-bit signals with one precompiled ``struct`` unpack and every other signal
from one ``int.from_bytes`` with shifts and masks, and applies exactly the same scaling expression
cantools uses (``raw * scale + offset``), so the values are identical.

``compile_sampler`` goes one step further for an adapter: one generated function turns a
full-length payload straight into the channel samples of a device (the profile's corrections
applied, each ``Sample`` built without the NamedTuple constructor's Python-level call).

Frames shorter than their message: ``compile_message(message, n)`` compiles the decoders of an
``n``-byte payload, holding only the signals that lie wholly inside it (cantools'
``allow_truncated``), and ``compile_partial_sampler`` the sampler over them. Adapters compile one
per length when it is first seen. A float signal's NaN or ±Infinity gives a sample with quality
invalid and no value, never an exception.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from cantools.database.conversion import IdentityConversion

from emsbms.types import AlarmLevel, Quality, Sample

Decoder = Callable[[bytes | bytearray], tuple[Any, ...]]
Sampler = Callable[[bytes | bytearray, int], list[Sample]]
"""sample(data, timestamp_us) -> the channel samples of one full-length payload."""

ChannelOutput = tuple[int, str, float, float, bool, str]
"""(signal index, channel address, scale, offset, take abs, type "number" | "bool" | "int")."""

_INT_CODES = {8: "B", 16: "H", 32: "I", 64: "Q"}
_FLOAT_CODES = {32: "f", 64: "d"}


def _f32(raw: int) -> float:
    value: float = struct.unpack("<f", raw.to_bytes(4, "little"))[0]
    return value


def _f64(raw: int) -> float:
    value: float = struct.unpack("<d", raw.to_bytes(8, "little"))[0]
    return value


def _shift_expr(signal: Any, total_bits: int) -> str:
    """Python expression that yields the signal's raw value from `le` or `be`."""
    n = signal.length
    mask = (1 << n) - 1
    if signal.byte_order == "little_endian":
        expr = f"((le >> {signal.start}) & {mask:#x})"
    else:
        msb_seq = 8 * (signal.start // 8) + (7 - signal.start % 8)
        shift = total_bits - (msb_seq + n)
        expr = f"((be >> {shift}) & {mask:#x})"
    if signal.is_float:
        return f"_f32({expr})" if n == 32 else f"_f64({expr})"
    if signal.is_signed:
        sign = 1 << (n - 1)
        expr = f"(({expr} ^ {sign:#x}) - {sign:#x})"
    return expr


def _aligned(signal: Any, length: int) -> tuple[int, str] | None:
    """(byte offset, struct code) of a signal struct can read whole, else None."""
    n = signal.length
    code = _FLOAT_CODES.get(n) if signal.is_float else _INT_CODES.get(n)
    if code is None:
        return None
    if not signal.is_float and signal.is_signed:
        code = code.lower()
    bit = 0 if signal.byte_order == "little_endian" else 7  # LSB (little) or MSB (big) at a byte edge
    if signal.start % 8 != bit:
        return None
    offset = int(signal.start // 8)
    if offset + n // 8 > length:
        return None
    return offset, code


@dataclass(frozen=True)
class _Layout:
    """How a message's raw values are read: head statements, then one raw expression per signal."""

    head: tuple[str, ...]
    raws: tuple[str, ...]
    namespace: dict[str, Any] = field(default_factory=dict)


def _layout(signals: list[Any], length: int) -> _Layout:
    found = {i: _aligned(s, length) for i, s in enumerate(signals)}
    little = [i for i, a in found.items() if a and signals[i].byte_order == "little_endian"]
    big = [i for i, a in found.items() if a and signals[i].byte_order == "big_endian"]
    chosen, prefix = (little, "<") if len(little) >= len(big) else (big, ">")
    fields: list[tuple[int, int, str]] = []  # (offset, signal index, code), no overlaps
    end = 0
    for i in sorted(chosen, key=lambda i: found[i][0]):  # type: ignore[index]
        offset, code = found[i]  # type: ignore[misc]
        if offset >= end:
            fields.append((offset, i, code))
            end = offset + struct.calcsize(code)
    raws: dict[int, str] = {}
    head: list[str] = []
    namespace: dict[str, Any] = {"_f32": _f32, "_f64": _f64, "_fb": int.from_bytes}
    if fields:
        fmt, pos = prefix, 0
        for offset, i, code in fields:
            fmt += "x" * (offset - pos) + code
            pos = offset + struct.calcsize(code)
            raws[i] = f"_s{i}"
        namespace["_unpack"] = struct.Struct(fmt).unpack_from
        head.append("    " + ", ".join(f"_s{i}" for _, i, _ in fields) + ", = _unpack(data)")
    rest = [i for i in range(len(signals)) if i not in raws]
    for i in rest:
        raws[i] = _shift_expr(signals[i], 8 * length)
    if any(signals[i].byte_order == "little_endian" for i in rest):
        head.append("    le = _fb(data, 'little')")
    if any(signals[i].byte_order == "big_endian" for i in rest):
        head.append("    be = _fb(data, 'big')")
    return _Layout(tuple(head), tuple(raws[i] for i in range(len(signals))), namespace)


def _scaled(signal: Any, raw: str) -> str:
    conv = signal.conversion
    if isinstance(conv, IdentityConversion):
        return raw
    if conv.offset == 0 and conv.scale > 0 and not signal.is_float:
        return f"{raw} * {conv.scale!r}"  # + 0 changes nothing here: an int times a positive scale is never -0.0
    return f"{raw} * {conv.scale!r} + {conv.offset!r}"


def _bytes_needed(signal: Any) -> int:
    """How many leading bytes of the payload the signal needs (cantools' truncation rule)."""
    if signal.byte_order == "little_endian":
        seq_start = signal.start
    else:
        seq_start = 8 * (signal.start // 8) + (7 - signal.start % 8)
    return int((seq_start + signal.length + 7) // 8)


@dataclass(frozen=True)
class CompiledMessage:
    """A message's fast decoders and the layout facts the adapters need.

    Compiled for one payload length (`length`): the message's own, or a shorter one, whose
    decoders hold only the signals that lie wholly inside that many bytes (`compile_message`).
    """

    name: str
    frame_id: int
    is_extended: bool
    length: int
    signal_names: tuple[str, ...]
    bytes_needed: tuple[int, ...]
    decode: Decoder  # scaled values, in signal_names order
    decode_raw: Decoder  # raw integers, in signal_names order
    source: str  # the generated code, for inspection
    layout: _Layout = field(repr=False, default=_Layout((), ()))
    scaled: tuple[str, ...] = field(repr=False, default=())
    is_float: tuple[bool, ...] = field(repr=False, default=())
    message: Any = field(repr=False, default=None)  # the cantools Message


def _build(name: str, source: str, namespace: dict[str, Any]) -> dict[str, Any]:
    ns = dict(namespace)
    exec(compile(source, f"<emsbms codec {name}>", "exec"), ns)
    return ns


def compile_message(message: Any, length: int | None = None) -> CompiledMessage:
    """Compile a cantools Message into fast decoders (plain signals; multiplexing unsupported).

    With a `length` shorter than the message's, the decoders take a payload of exactly `length`
    bytes and give only the signals that lie wholly inside it (cantools' ``allow_truncated``).
    """
    if message.is_multiplexed():
        raise ValueError(f"message {message.name}: multiplexed messages are not supported")
    full = message.length
    length = full if length is None or length >= full else max(0, length)
    signals = [s for s in message.signals if _bytes_needed(s) <= length]
    layout = _layout(signals, length)
    scaled = tuple(_scaled(s, raw) for s, raw in zip(signals, layout.raws, strict=True))
    lines = []
    for fname, exprs in (("decode", scaled), ("decode_raw", layout.raws)):
        body = ", ".join(exprs) + ("," if len(exprs) == 1 else "")
        lines.append(f"def {fname}(data):")
        lines.extend(layout.head)
        lines.append(f"    return ({body})")
    source = "\n".join(lines) + "\n"
    namespace = _build(message.name, source, layout.namespace)
    return CompiledMessage(
        name=message.name,
        frame_id=message.frame_id,
        is_extended=message.is_extended_frame,
        length=length,
        signal_names=tuple(s.name for s in signals),
        bytes_needed=tuple(_bytes_needed(s) for s in signals),
        decode=namespace["decode"],
        decode_raw=namespace["decode_raw"],
        source=source,
        layout=layout,
        scaled=scaled,
        is_float=tuple(bool(s.is_float) for s in signals),
        message=message,
    )


def _corrected(var: str, scale: float, offset: float, take_abs: bool, kind: str) -> str:
    """The channel value from a decoded signal value, as DbcAdapter defines the corrections."""
    expr = var
    if scale != 1.0 or offset != 0.0:
        expr = f"{expr} * {scale!r} + {offset!r}"
    if take_abs:
        expr = f"abs({expr})"
    if kind == "bool":
        expr = f"bool({expr})"
    elif kind == "int":
        expr = f"int({expr})"
    return expr


AlarmInput = tuple[int, int, int, int | None, int | None]
"""(signal index, slot, level, raw value that means active or None for any non-zero, raw value that
means OK or None: with it, any other inactive value carries no information)."""

AlarmOutput = tuple[list[int], str, Sequence[AlarmInput]]
"""(the alarm's slot list, owned by the adapter; its channel address; its inputs in this message).

A slot holds its input's level when active, 0 when OK, and -1 while it carries no information
(nothing received yet, a value the device calls unsupported, a non-finite number)."""

_LEVELS = (AlarmLevel.OK, AlarmLevel.WARNING, AlarmLevel.ALARM)


def _finite(expr: str) -> str:
    """A test that a float expression is finite: NaN and ±Infinity give x - x != 0."""
    return f"{expr} - {expr} == 0"


def compile_sampler(compiled: CompiledMessage, outputs: Sequence[ChannelOutput],
                    alarms: Sequence[AlarmOutput] = (), bad: list[int] | None = None) -> tuple[Sampler, str]:
    """One function from a payload of `compiled.length` bytes and a timestamp to the channel samples;
    returns it and its source.

    Each output becomes ``Sample(address, corrected value, timestamp_us, Quality.OK)``; the value
    is the decoded signal value ``* scale + offset`` (when not 1 and 0), then ``abs``, then
    ``bool``/``int``, exactly as the adapter's generic path computes it. A float signal whose value
    (or corrected value) is NaN or ±Infinity gives ``Sample(address, None, ts, Quality.INVALID)``
    instead, and counts one in ``bad[0]``. Each alarm sets the slots of its inputs (``level`` when
    active, 0 when OK, -1 when the value carries no information) and yields
    ``Sample(address, AlarmLevel(max(slots)))``, or nothing while no slot carries information.
    """
    floats = compiled.is_float or (False,) * len(compiled.signal_names)
    used = sorted({o[0] for o in outputs} | {inp[0] for _, _, inputs in alarms for inp in inputs})
    lines = ["def sample(data, ts, _new=_new, _S=_Sample, _OK=_OK, _L=_LEVELS):", *compiled.layout.head]
    lines += [f"    v{i} = {compiled.scaled[i]}" for i in used]
    items: list[str] = []
    for j, (i, address, scale, offset, take_abs, kind) in enumerate(outputs):
        if not floats[i]:
            items.append(f"_new(_S, ({address!r}, {_corrected(f'v{i}', scale, offset, take_abs, kind)}, ts, _OK))")
            continue
        lines.append(f"    c{j} = {_corrected(f'v{i}', scale, offset, take_abs, 'number')}")
        value = f"bool(c{j})" if kind == "bool" else f"int(c{j})" if kind == "int" else f"c{j}"
        lines += [f"    if {_finite(f'c{j}')}:",
                  f"        s{j} = _new(_S, ({address!r}, {value}, ts, _OK))",
                  "    else:",
                  f"        s{j} = _new(_S, ({address!r}, None, ts, _INVALID))",
                  "        _bad[0] += 1"]
        items.append(f"s{j}")
    namespace = {**compiled.layout.namespace, "_new": tuple.__new__, "_Sample": Sample, "_OK": Quality.OK,
                 "_INVALID": Quality.INVALID, "_LEVELS": _LEVELS, "_bad": bad if bad is not None else [0]}
    for k, (slots, address, inputs) in enumerate(alarms):
        namespace[f"_a{k}"] = slots
        unknown = False
        for i, slot, level, active_value, ok_value in inputs:
            active = f"v{i}" if active_value is None else f"v{i} == {active_value!r}"
            inactive = "0" if ok_value is None else f"0 if v{i} == {ok_value!r} else -1"
            if floats[i]:
                unknown = True
                lines += [f"    if {_finite(f'v{i}')}:",
                          f"        _a{k}[{slot}] = {level} if {active} else {inactive}",
                          "    else:",
                          f"        _a{k}[{slot}] = -1",
                          "        _bad[0] += 1"]
                continue
            unknown = unknown or ok_value is not None
            lines.append(f"    _a{k}[{slot}] = {level} if {active} else {inactive}")
        if unknown:
            lines.append(f"    m{k} = max(_a{k})")
            items.append(f"*((_new(_S, ({address!r}, _L[m{k}], ts, _OK)),) if m{k} >= 0 else ())")
        else:
            items.append(f"_new(_S, ({address!r}, _L[max(_a{k})], ts, _OK))")
    lines.append(f"    return [{', '.join(items)}]")
    source = "\n".join(lines) + "\n"
    sampler: Sampler = _build(compiled.name, source, namespace)["sample"]
    return sampler, source


def compile_partial_sampler(compiled: CompiledMessage, length: int, outputs: Sequence[ChannelOutput],
                            alarms: Sequence[AlarmOutput] = (), bad: list[int] | None = None) -> tuple[Sampler, str]:
    """`compile_sampler` for a payload of `length` bytes, shorter than the message's.

    `outputs` and `alarms` index the signals of `compiled` (the full message). Only the outputs and
    alarm inputs whose signals lie wholly inside `length` bytes are kept: the others give no
    sample (absent, never zero), and an alarm none of whose inputs fit gives none either.
    """
    part = compile_message(compiled.message, length)
    index = {name: k for k, name in enumerate(part.signal_names)}
    names = compiled.signal_names
    kept: list[ChannelOutput] = [(index[names[i]], a, sc, off, ab, kind)
                                 for i, a, sc, off, ab, kind in outputs if names[i] in index]
    kept_alarms: list[AlarmOutput] = []
    for slots, address, inputs in alarms:
        fit = [(index[names[i]], slot, level, active, ok) for i, slot, level, active, ok in inputs
               if names[i] in index]
        if fit:
            kept_alarms.append((slots, address, fit))
    return compile_sampler(part, kept, kept_alarms, bad)
