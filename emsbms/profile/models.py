"""The profile file format: pydantic models, from which docs/profile.schema.json is generated."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, model_validator
from pydantic_core import PydanticCustomError


def _int_or_hex(value: object) -> object:
    """Accept 0x-prefixed strings for CAN IDs and indexes (JSON has no hex literals)."""
    if isinstance(value, str):
        text = value.strip().lower()
        try:
            return int(text, 16) if text.startswith("0x") else int(text)
        except ValueError:
            return value
    return value


HexInt = Annotated[int, BeforeValidator(_int_or_hex)]

DAY_MS = 86_400_000
"""The longest period or timeout a profile may give: one day, in milliseconds."""


def _number_check(
    expected: str, low: float | None = None, high: float | None = None, nonzero: bool = False
) -> Callable[[float], float]:
    """A validator refusing NaN, ±Infinity, zero (if `nonzero`) and numbers outside low..high."""

    def check(value: float) -> float:
        bad = not math.isfinite(value) or (nonzero and value == 0)
        if bad or (low is not None and value < low) or (high is not None and value > high):
            raise PydanticCustomError("number_range", "expected {expected}", {"expected": expected})
        return value

    return check


def _schema(low: float | None = None, high: float | None = None, nonzero: bool = False) -> WithJsonSchema:
    schema: dict[str, Any] = {"type": "number"}
    if low is not None:
        schema["minimum"] = low
    if high is not None:
        schema["maximum"] = high
    if nonzero:
        schema["not"] = {"const": 0}
    return WithJsonSchema(schema)


_MS = f"a number of milliseconds from 1 to {DAY_MS} (1 day)"
_S = "a number of seconds from 0.001 to 86400 (1 day)"

Finite = Annotated[float, AfterValidator(_number_check("a finite number")), _schema()]
"""Any number but NaN and ±Infinity (which Python's JSON parser accepts)."""
Scale = Annotated[float, AfterValidator(_number_check("a finite non-zero number", nonzero=True)), _schema(nonzero=True)]
Millis = Annotated[float, AfterValidator(_number_check(_MS, 1, DAY_MS)), _schema(1, DAY_MS)]
"""A period or timeout: 1 ms to 1 day."""
Seconds = Annotated[float, AfterValidator(_number_check(_S, 0.001, DAY_MS / 1000)), _schema(0.001, DAY_MS / 1000)]
Tolerance = Annotated[float, AfterValidator(_number_check("a finite number from 0", 0)), _schema(0)]


def encodable_range(
    length: int, signed: bool, scale: float, offset: float, is_float: bool = False
) -> tuple[float, float]:
    """The physical values a signal can carry: its raw range (bits, signedness) times scale, plus offset.

    Float signals carry any finite single or double. The result may hold ±Infinity when the scale
    is so large that the products overflow: callers refuse such a signal.
    """
    if is_float:
        top = 3.4028234663852886e38 if length == 32 else 1.7976931348623157e308
        low, high = -top, top
    elif signed:
        low, high = -float(1 << (length - 1)), float((1 << (length - 1)) - 1)
    else:
        low, high = 0.0, float((1 << length) - 1)
    a, b = low * scale + offset, high * scale + offset
    return (a, b) if a <= b else (b, a)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InlineSignal(_Strict):
    """A signal of an inline byte-map message: where its bits are and how to scale them."""

    name: str
    start_byte: int = Field(ge=0, le=63, description="byte holding the least (little) or most (big) significant bit")
    start_bit: int | None = Field(None, ge=0, le=7, description="bit in that byte (0 = LSB); default 0 little, 7 big")
    length: int = Field(ge=1, le=64, description="length in bits")
    signed: bool = False
    byte_order: Literal["little", "big"] = "little"
    scale: Scale = 1.0
    offset: Finite = 0.0
    unit: str = ""
    minimum: Finite | None = None
    maximum: Finite | None = None

    @model_validator(mode="after")
    def _limits(self) -> InlineSignal:
        low, high = encodable_range(self.length, self.signed, self.scale, self.offset)
        if not (math.isfinite(low) and math.isfinite(high)):
            raise ValueError(
                f"scale {self.scale!r} and offset {self.offset!r} overflow: {self.length}-bit values times the"
                " scale plus the offset must be finite"
            )
        for key in ("minimum", "maximum"):
            value = getattr(self, key)
            if value is not None and not low <= value <= high:
                raise ValueError(
                    f"{key}: expected a number from {low:g} to {high:g} (what {self.length} bits"
                    f" {'signed' if self.signed else 'unsigned'}, scale {self.scale:g}, offset {self.offset:g}"
                    f" can carry); found {value!r}"
                )
        if self.minimum is not None and self.maximum is not None and self.minimum > self.maximum:
            raise ValueError(f"minimum {self.minimum:g} is above maximum {self.maximum:g}")
        return self


class InlineMessage(_Strict):
    """A message described inline by its CAN ID, length and byte map (no DBC)."""

    name: str
    id: HexInt = Field(ge=0, le=0x1FFFFFFF)
    extended: bool = False
    dlc: int = Field(8, ge=0, le=64)
    signals: list[InlineSignal]


class Source(_Strict):
    """Where the messages come from: a DBC file, an EDS file, or inline messages."""

    dbc: str | None = Field(None, description="DBC file name in dbc/ or a path relative to the profile")
    eds: str | None = Field(None, description="EDS file name in eds/ (CANopen)")
    messages: list[InlineMessage] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> Source:
        given = [k for k in ("dbc", "eds", "messages") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of dbc, eds, messages; found {given or 'none'}")
        return self


class MessageSettings(_Strict):
    """Supervision and length settings of one message, keyed by message name."""

    period_ms: Millis | None = Field(None, description="expected period; stale after 2.5x")
    timeout_ms: Millis | None = Field(None, description="no frame for this long: device lost")
    min_dlc: int | None = Field(
        None, ge=0, le=64,
        description="strict: shorter frames are refused (bad frames). Unset: a shorter frame gives the signals it"
        " holds, counted as a short frame",
    )
    max_dlc: int | None = Field(
        None, ge=0, le=64, description="strict: longer frames are refused (bad frames). Unset: excess bytes are ignored"
    )
    on_request: bool = Field(False, description="J1939: sent only when requested (the edge requests it)")
    request_interval_s: Seconds | None = Field(None, description="J1939: re-request it this often")
    optional: bool = Field(
        False,
        description="not every genuine device sends it: the passive scan scores on the required messages only",
    )

    @model_validator(mode="after")
    def _dlc_bounds(self) -> MessageSettings:
        if self.min_dlc is not None and self.max_dlc is not None and self.min_dlc > self.max_dlc:
            raise ValueError(f"min_dlc {self.min_dlc} is above max_dlc {self.max_dlc}")
        return self


class ChannelMap(_Strict):
    """A normalized channel and the signal (or object) it is read from."""

    message: str | None = None
    signal: str | None = None
    od: str | None = Field(None, description="CANopen object: '0x6060', '0x2010sub1' or a name")
    unit: str = ""
    type: Literal["number", "bool", "int"] = "number"
    scale: Scale = Field(1.0, description="correction: value = signal * scale + offset")
    offset: Finite = 0.0
    abs: bool = Field(False, description="take the magnitude (e.g. a DCL sent as a negative number)")
    description: str = ""

    @model_validator(mode="after")
    def _one_target(self) -> ChannelMap:
        if (self.message is None) != (self.signal is None):
            raise ValueError("message and signal go together")
        if (self.signal is None) == (self.od is None):
            raise ValueError("give either message+signal or od")
        return self


class AlarmSource(_Strict):
    """A signal that, when non-zero, raises its alarm to `level`."""

    message: str
    signal: str
    level: int = Field(2, ge=1, le=2)
    value: int | None = Field(None, description="the raw value that means active (default: any non-zero)")
    ok: int | None = Field(
        None,
        description="the raw value that means OK; any other inactive value then carries no alarm information"
        " (e.g. 0x35A: 1 active, 2 OK, 0 unsupported). Default: every inactive value is OK",
    )

    @model_validator(mode="after")
    def _distinct(self) -> AlarmSource:
        if self.ok is not None and self.value is None:
            raise ValueError(f"ok {self.ok} needs value, the raw value that means active")
        if self.ok is not None and self.ok == self.value:
            raise ValueError(f"ok {self.ok} is also the active value; expected two different raw values")
        return self


class AlarmMap(_Strict):
    """An `Alarm/<name>` channel: its level is the highest level among active sources."""

    sources: list[AlarmSource] = Field(min_length=1)
    description: str = ""


class AckSpec(_Strict):
    """How a command is acknowledged."""

    type: Literal["echo", "none", "sdo", "j1939_ack"] = "echo"
    message: str | None = None
    signal: str | None = None
    tolerance: Tolerance | None = Field(None, description="echo match tolerance (default: half a scale step)")

    @model_validator(mode="after")
    def _echo_target(self) -> AckSpec:
        if self.type == "echo" and (self.message is None or self.signal is None):
            raise ValueError("an echo acknowledgement names its message and signal")
        return self


class CommandMap(_Strict):
    """A command channel: where the value is written, its limits and its acknowledgement."""

    message: str | None = None
    signal: str | None = None
    od: str | None = None
    request: HexInt | None = Field(None, ge=0, le=0x3FFFF, description="J1939: request this PGN (0xFED3: DM11)")
    via: Literal["sdo", "rpdo"] | None = Field(
        None, description="CANopen: SDO download (default) or the RPDO that maps `od` (cyclic setpoints)"
    )
    unit: str = ""
    type: Literal["number", "bool"] = "number"
    min: Finite
    max: Finite
    idle: Finite | None = Field(None, description="value sent in this signal while the command is not active")
    ttl_s: Seconds | None = Field(None, description="repeat cyclically until this many seconds pass")
    period_ms: Millis | None = Field(None, description="repeat period while active (with ttl_s)")
    ack: AckSpec = Field(default_factory=lambda: AckSpec(type="none", tolerance=None))
    description: str = ""

    @model_validator(mode="after")
    def _consistent(self) -> CommandMap:
        if self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        if (self.ttl_s is None) != (self.period_ms is None):
            raise ValueError("ttl_s and period_ms go together (a cyclic command needs both)")
        if self.request is not None:
            if self.signal is not None or self.od is not None:
                raise ValueError("a request command names no message, signal or od")
        elif (self.signal is None) == (self.od is None):
            raise ValueError("give either message+signal or od")
        return self


class TransmitSpec(_Strict):
    """A frame the edge sends periodically, e.g. a keepalive."""

    message: str
    period_ms: Millis
    signals: dict[str, Finite] = Field(default_factory=dict)


class ProfileModel(_Strict):
    """A device profile (JSON)."""

    model_config = ConfigDict(extra="forbid", frozen=True, title="emsbms device profile")

    schema_: str | None = Field(None, alias="$schema")
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    version: str = Field(pattern=r"^\d+(\.\d+){0,2}$")
    protocol: Literal["dbc", "canopen", "j1939"]
    description: str = ""
    vendor: str = ""
    source: Source
    messages: dict[str, MessageSettings] = Field(default_factory=dict)
    timeout_ms: Millis = Field(5000, description="device lost after this long without any frame")
    channels: dict[str, ChannelMap] = Field(default_factory=dict)
    alarms: dict[str, AlarmMap] = Field(default_factory=dict)
    transmit: list[TransmitSpec] = Field(default_factory=list)
    commands: dict[str, CommandMap] = Field(default_factory=dict)
    allow_shared_ids: bool = Field(False, description="devices with this profile may share IDs on one bus")
    options: dict[str, object] = Field(default_factory=dict, description="protocol-specific settings")
    rules: list[dict[str, object]] | None = Field(
        None, description="default alarm rules for each device with this profile, in the [[rule]] schema of"
        " docs/alarms.md; `*/` in an expression is the device itself, and the rule is named `<name>-<device>`")


@dataclass(frozen=True)
class Profile:
    """A validated profile with its message database resolved."""

    model: ProfileModel
    path: Path | None = None
    db: Any = None  # cantools Database for dbc, j1939 and inline profiles
    source_path: Path | None = None  # the DBC or EDS file, when there is one
    source_text: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def protocol(self) -> str:
        return self.model.protocol

    def message(self, name: str) -> Any:
        """The cantools Message called `name`."""
        return self.db.get_message_by_name(name)
