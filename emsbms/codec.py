"""Compiled signal decoders: each message's signals become one generated Python function.

cantools' ``decode_message`` is general and slow on the hot path (it builds dicts and goes
through bitstruct). A profile's messages are compiled once into a function that extracts every
signal from one ``int.from_bytes`` with shifts and masks and applies exactly the same scaling
expression cantools uses (``raw * scale + offset``), so the values are identical.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cantools.database.conversion import IdentityConversion

Decoder = Callable[[bytes | bytearray], tuple[Any, ...]]


def _f32(raw: int) -> float:
    value: float = struct.unpack("<f", raw.to_bytes(4, "little"))[0]
    return value


def _f64(raw: int) -> float:
    value: float = struct.unpack("<d", raw.to_bytes(8, "little"))[0]
    return value


def _raw_expr(signal: Any, total_bits: int) -> str:
    """Python expression that yields the signal's raw integer from `le` or `be`."""
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


def _bytes_needed(signal: Any) -> int:
    """How many leading bytes of the payload the signal needs (cantools' truncation rule)."""
    if signal.byte_order == "little_endian":
        seq_start = signal.start
    else:
        seq_start = 8 * (signal.start // 8) + (7 - signal.start % 8)
    return int((seq_start + signal.length + 7) // 8)


@dataclass(frozen=True)
class CompiledMessage:
    """A message's fast decoders and the layout facts the adapters need."""

    name: str
    frame_id: int
    is_extended: bool
    length: int
    signal_names: tuple[str, ...]
    bytes_needed: tuple[int, ...]
    decode: Decoder  # scaled values, in signal_names order
    decode_raw: Decoder  # raw integers, in signal_names order
    source: str  # the generated code, for inspection


def compile_message(message: Any) -> CompiledMessage:
    """Compile a cantools Message into fast decoders (plain signals; multiplexing unsupported)."""
    if message.is_multiplexed():
        raise ValueError(f"message {message.name}: multiplexed messages are not supported")
    length = message.length
    total_bits = 8 * length
    signals = list(message.signals)
    raws = [_raw_expr(s, total_bits) for s in signals]
    scaled = []
    for s, raw in zip(signals, raws, strict=True):
        conv = s.conversion
        if isinstance(conv, IdentityConversion):
            scaled.append(raw)
        else:
            scaled.append(f"{raw} * {conv.scale!r} + {conv.offset!r}")
    needs_le = any(s.byte_order == "little_endian" for s in signals)
    needs_be = any(s.byte_order == "big_endian" for s in signals)
    head = []
    if needs_le:
        head.append("    le = _fb(data, 'little')")
    if needs_be:
        head.append("    be = _fb(data, 'big')")
    lines = []
    for fname, exprs in (("decode", scaled), ("decode_raw", raws)):
        body = ", ".join(exprs) + ("," if len(exprs) == 1 else "")
        lines.append(f"def {fname}(data, _fb=int.from_bytes, _f32=_f32, _f64=_f64):")
        lines.extend(head)
        lines.append(f"    return ({body})")
    source = "\n".join(lines) + "\n"
    namespace: dict[str, Any] = {"_f32": _f32, "_f64": _f64}
    exec(compile(source, f"<emsbms codec {message.name}>", "exec"), namespace)
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
    )
