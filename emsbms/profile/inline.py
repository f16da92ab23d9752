"""Compile inline JSON byte-map messages into the same cantools model a DBC gives."""

from __future__ import annotations

import cantools
from cantools.database.can import Message, Signal
from cantools.database.conversion import BaseConversion

from emsbms.profile.models import InlineMessage, InlineSignal


def _signal(sig: InlineSignal) -> Signal:
    bit = sig.start_bit if sig.start_bit is not None else (0 if sig.byte_order == "little" else 7)
    return Signal(
        name=sig.name,
        start=sig.start_byte * 8 + bit,
        length=sig.length,
        byte_order="little_endian" if sig.byte_order == "little" else "big_endian",
        is_signed=sig.signed,
        conversion=BaseConversion.factory(scale=sig.scale, offset=sig.offset),
        minimum=sig.minimum,
        maximum=sig.maximum,
        unit=sig.unit or None,
    )


def build_database(messages: list[InlineMessage]) -> cantools.database.can.Database:
    """Return a cantools Database holding the inline messages (raises ValueError on overlap)."""
    built = [
        Message(
            frame_id=m.id,
            name=m.name,
            length=m.dlc,
            signals=[_signal(s) for s in m.signals],
            is_extended_frame=m.extended,
            strict=True,
        )
        for m in messages
    ]
    return cantools.database.can.Database(messages=built, strict=True)
