"""CANopen profile checks: object references into the EDS, the `options` of a canopen profile, and their validation."""

from __future__ import annotations

import configparser
import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import canopen
from canopen.objectdictionary import ObjectDictionary, ODArray, ODRecord, ODVariable
from canopen.objectdictionary import datatypes as dt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from emsbms.errors import ConfigError, ProfileError
from emsbms.profile.models import HexInt, Millis

if TYPE_CHECKING:
    from emsbms.profile.models import Profile
    from emsbms.protocols.base import DeviceConfig

_REF = re.compile(r"^0x([0-9a-f]{1,4})(?:sub(0x[0-9a-f]{1,2}|\d{1,3}))?$", re.IGNORECASE)
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")
_RANGE = re.compile(r"^(0x[0-9a-f]{1,4})(?:-(0x[0-9a-f]{1,4}))?$", re.IGNORECASE)


class _Opt(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class IdentitySpec(_Opt):
    """What 0x1000 and 0x1018 must hold; a mismatch raises `Alarm/Identity` and marks values invalid."""

    device_profile: int | None = Field(None, ge=0, le=0xFFFF, description="low 16 bits of 0x1000, e.g. 418")
    vendor_id: HexInt | None = Field(None, ge=0, le=0xFFFFFFFF)
    product_code: HexInt | None = Field(None, ge=0, le=0xFFFFFFFF)
    revision: HexInt | None = Field(None, ge=0, le=0xFFFFFFFF)
    serial: HexInt | None = Field(None, ge=0, le=0xFFFFFFFF)


class EmcyAlarm(_Opt):
    """A normalized alarm raised while an EMCY code (or code range) is active."""

    alarm: str = Field(pattern=r"^[A-Za-z][A-Za-z0-9_]*$")
    level: int = Field(2, ge=1, le=2)


class CanopenOptions(_Opt):
    """The `options` of a canopen profile; a device's `options` (and the site's [canopen]) override them."""

    identity: IdentitySpec | None = None
    nmt_master: bool | None = Field(None, description="default for devices: send NMT start")
    heartbeat_consumer_ms: Millis | None = Field(None, description="default: 1.5 x the device's 0x1017")
    heartbeat_producer_ms: int | None = Field(None, ge=0, le=0xFFFF, description="write 0x1017 when configuring")
    sdo_timeout_ms: Millis = Field(1000.0, description="wait this long for each SDO response")
    sdo_poll_ms: Millis = Field(10_000.0, description="SDO-read channels that no TPDO carries this often")
    pdo_mapping: Literal["device", "eds"] = Field("device", description="read the TPDO mapping from the device")
    emcy_alarms: dict[str, EmcyAlarm] = Field(default_factory=dict, description="'0x4210' or '0x4000-0x4FFF'")
    emcy_level: int = Field(2, ge=1, le=2, description="Alarm/Emcy level of codes emcy_alarms does not name")
    demo_device: dict[str, object] | None = None
    simulator: dict[str, object] | None = None


Ranges = tuple[tuple[int, int, EmcyAlarm], ...]


def emcy_ranges(options: CanopenOptions) -> Ranges:
    """The emcy_alarms keys as (low, high, alarm) code ranges; raises ValueError on a bad key."""
    out = []
    for key, alarm in options.emcy_alarms.items():
        m = _RANGE.match(key.strip())
        if m is None:
            raise ValueError(f"emcy_alarms key {key!r}: expected '0x4210' or '0x4000-0x4FFF'")
        lo = int(m.group(1), 16)
        hi = int(m.group(2), 16) if m.group(2) else lo
        if hi < lo:
            raise ValueError(f"emcy_alarms key {key!r}: range end below its start")
        out.append((lo, hi, alarm))
    return tuple(out)


def _pydantic_path(err: ValidationError) -> str:
    parts = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        found = e.get("input")
        found_text = "" if isinstance(found, dict | list) else f"; found {found!r}"
        parts.append(f"{loc}: {e['msg']}{found_text}")
    return "; ".join(parts)


def parse_options(data: dict[str, object], where: str) -> CanopenOptions:
    """Validate canopen options; errors name `where` (e.g. 'profile x: options') and the key."""
    try:
        options = CanopenOptions.model_validate(data)
        emcy_ranges(options)
    except ValidationError as e:
        raise ProfileError(f"{where}.{_pydantic_path(e)}") from e
    except ValueError as e:
        raise ProfileError(f"{where}.{e}") from e
    return options


def device_options(device: DeviceConfig, profile: Profile) -> CanopenOptions:
    """The profile's options overridden by the device's (which carry the site's [canopen] table)."""
    merged = {**profile.model.options, **device.options}
    try:
        return parse_options(merged, f"device {device.name}: options")
    except ProfileError as e:
        raise ConfigError(str(e)) from e


def is_nmt_master(device: DeviceConfig, options: CanopenOptions) -> bool:
    """Whether the edge starts this device (NMT start): the site's nmt_master, else the options' default."""
    return device.nmt_master or bool(options.nmt_master)


def eds_label(profile: Profile) -> str:
    """How error messages name the EDS of a profile, e.g. 'eds/cia418_bms.eds'."""
    ref = profile.model.source.eds or "?"
    return ref if "/" in ref else f"eds/{ref}"


def load_od(path: Path, node_id: int | None) -> ObjectDictionary:
    """Parse an EDS with the canopen library ($NODEID resolved when node_id is given)."""
    od: ObjectDictionary = canopen.import_od(str(path), node_id)
    return od


def resolve(od: ObjectDictionary, ref: str, label: str) -> ODVariable:
    """The variable an `od` reference names: '0x6060', '0x6020sub2', or an OD name ('Rec.Member').

    Raises KeyError with a message naming the reference and the EDS.
    """
    m = _REF.match(ref.strip())
    if m is None:
        try:
            obj = od[ref]
        except KeyError:
            raise KeyError(f"{ref!r} not in {label}") from None
        if isinstance(obj, ODVariable):
            return obj
        subs = ", ".join(f"{ref}.{v.name}" for v in obj.values())
        raise KeyError(f"{ref!r} in {label} is a record; name one of its entries: {subs}")
    index = int(m.group(1), 16)
    sub = int(m.group(2), 0) if m.group(2) else None
    if index not in od:
        raise KeyError(f"{ref!r} not in {label}")
    entry = od[index]
    if isinstance(entry, ODVariable):
        if sub not in (None, 0):
            raise KeyError(f"{ref!r}: 0x{index:04X} in {label} is a plain variable; it has no sub-index {sub}")
        return entry
    if sub is None:
        known = ", ".join(f"0x{index:04X}sub{s}" for s in entry)
        raise KeyError(f"{ref!r} in {label} is a record; name a sub-index: {known}")
    if isinstance(entry, ODRecord | ODArray) and sub in entry.subindices:
        var: ODVariable = entry[sub]
        return var
    raise KeyError(f"{ref!r}: sub-index {sub} of 0x{index:04X} not in {label}")


def ref_text(var: ODVariable) -> str:
    """'0x6060' or '0x6020sub2'."""
    if isinstance(var.parent, ODRecord | ODArray):
        return f"0x{var.index:04X}sub{var.subindex}"
    return f"0x{var.index:04X}"


def raw_range(var: ODVariable) -> tuple[float, float] | None:
    """The raw integer range of a variable's data type (None for non-integers)."""
    size = len(var)
    if var.data_type in dt.SIGNED_TYPES:
        return -(1 << (size - 1)), (1 << (size - 1)) - 1
    if var.data_type in dt.UNSIGNED_TYPES:
        return 0, (1 << size) - 1
    if var.data_type == dt.BOOLEAN:
        return 0, 1
    return None


REAL_LIMITS = {dt.REAL32: 3.4028234663852886e38, dt.REAL64: 1.7976931348623157e308}
"""The largest finite value of each IEEE 754 type (REAL32 single, REAL64 double precision)."""


def real_limits(var: ODVariable) -> tuple[float, float] | None:
    """The finite range a REAL32/REAL64 object accepts, narrowed by LowLimit/HighLimit (None for other types).

    canopen sends floats as they are: the EDS Factor applies to integers only.
    """
    top = REAL_LIMITS.get(var.data_type or 0)
    if top is None:
        return None
    lo, hi = -top, top
    if var.min is not None:
        lo = max(lo, float(var.min))
    if var.max is not None:
        hi = min(hi, float(var.max))
    return lo, hi


Raw = int | float
"""What an object carries: an integer (before Factor), or a float for REAL32/REAL64."""


def raw_value(var: ODVariable, value: float) -> Raw:
    """The raw value of `var` for a physical `value`: a float as it is for REAL32/REAL64, else round(value / Factor)."""
    if var.data_type in REAL_LIMITS:
        return float(value)
    return int(var.encode_phys(value))


def raw_kind(var: ODVariable, raw: float) -> Raw:
    """A stored raw value in the form `var` carries: float for REAL32/REAL64, else int."""
    return float(raw) if var.data_type in REAL_LIMITS else int(raw)


def command_limits(var: ODVariable) -> tuple[float, float] | None:
    """The physical range a command may write to `var`: an integer's (times Factor) or a float's."""
    return physical_limits(var) or real_limits(var)


def physical_limits(var: ODVariable) -> tuple[float, float] | None:
    """The physical range a variable accepts: its type, narrowed by LowLimit/HighLimit, times Factor."""
    rng = raw_range(var)
    if rng is None:
        return None
    lo, hi = rng
    if var.min is not None:
        lo = max(lo, var.min)
    if var.max is not None:
        hi = min(hi, var.max)
    a, b = lo * var.factor, hi * var.factor
    return min(a, b), max(a, b)


def rpdo_objects(od: ObjectDictionary) -> set[tuple[int, int]]:
    """(index, subindex) of every object the EDS maps into an RPDO by default (0x1600-0x17FF)."""
    found: set[tuple[int, int]] = set()
    for index in range(0x1600, 0x1800):
        if index not in od:
            continue
        rec = od[index]
        if not isinstance(rec, ODRecord | ODArray) or 0 not in rec.subindices:
            continue
        count = int(rec[0].default or 0)
        for sub in range(1, count + 1):
            value = rec[sub].default if sub in rec.subindices else None
            if value:
                found.add((int(value) >> 16, (int(value) >> 8) & 0xFF))
    return found


def check_canopen_profile(profile: Profile) -> None:
    """Check a canopen profile against its EDS; raises ProfileError naming the JSON path."""
    m = profile.model
    label = f"profile {m.name}"
    if profile.source_path is None:
        raise ProfileError(f"{label}: source: protocol canopen needs source.eds; found {m.source.model_dump()}")
    parse_options(dict(m.options), f"{label}: options")
    eds = eds_label(profile)
    try:
        od = load_od(profile.source_path, None)
    except Exception as e:  # configparser and canopen raise many types for a broken EDS
        raise ProfileError(f"{label}: source.eds {eds}: cannot parse: {eds_error(e)}") from e
    for key in ("messages", "alarms", "transmit"):
        if getattr(m, key):
            hint = "; use options.emcy_alarms for alarms" if key == "alarms" else ""
            raise ProfileError(f"{label}: {key}: not used by protocol canopen (it maps od entries){hint}")
    for name, ch in m.channels.items():
        path = f"{label}: channels.{name}"
        if ch.od is None:
            raise ProfileError(f"{path}: protocol canopen maps od entries; found message/signal")
        var = _resolve(od, ch.od, eds, f"{path}.od")
        if not var.readable:
            raise ProfileError(f"{path}.od {ch.od!r}: {ref_text(var)} is {var.access_type} in {eds}; expected readable")
        _check_factor(var, eds, f"{path}.od")
        rng = physical_limits(var)
        if rng is not None and not all(math.isfinite(v * ch.scale + ch.offset) for v in rng):
            raise ProfileError(f"{path}: scale {ch.scale:g} and offset {ch.offset:g} overflow on {ref_text(var)}"
                               f" ({rng[0]:g} to {rng[1]:g}) in {eds}; expected finite values")
    rpdo = rpdo_objects(od)
    for name, cmd in m.commands.items():
        _check_command(od, eds, rpdo, f"{label}: commands.{name}", cmd)


def eds_error(e: Exception) -> str:
    """Why an EDS did not parse, without its content: configparser quotes the offending line, keep its number."""
    if isinstance(e, configparser.Error):
        lines = [n for n, _ in getattr(e, "errors", ())] or [getattr(e, "lineno", None)]
        where = ", ".join(str(n) for n in lines if n is not None)
        return f"{type(e).__name__}" + (f" at line {where}" if where else "")
    return f"{type(e).__name__}: {_QUOTED.sub('...', str(e))}"


def _check_factor(var: ODVariable, eds: str, path: str) -> None:
    factor = getattr(var, "factor", 1)
    if not math.isfinite(factor) or factor == 0:
        raise ProfileError(f"{path}: {ref_text(var)} in {eds} has Factor {factor!r}; expected a finite non-zero number")
    for key in ("min", "max"):
        value = getattr(var, key)
        if value is not None and not math.isfinite(value):
            raise ProfileError(f"{path}: {ref_text(var)} in {eds} has {key} {value!r}; expected a finite number")


def _resolve(od: ObjectDictionary, ref: str, eds: str, path: str) -> ODVariable:
    try:
        return resolve(od, ref, eds)
    except KeyError as e:
        raise ProfileError(f"{path} {e.args[0]}") from None


def _check_command(od: ObjectDictionary, eds: str, rpdo: set[tuple[int, int]], path: str, cmd: object) -> None:
    from emsbms.profile.models import CommandMap

    assert isinstance(cmd, CommandMap)
    if cmd.od is None:
        raise ProfileError(f"{path}: protocol canopen writes od entries; found message/signal/request")
    var = _resolve(od, cmd.od, eds, f"{path}.od")
    if not var.writable:
        raise ProfileError(f"{path}.od {cmd.od!r}: {ref_text(var)} is {var.access_type} in {eds}; expected writable")
    via = cmd.via or "sdo"
    if cmd.ack.type not in ("sdo", "none"):
        raise ProfileError(f"{path}.ack.type {cmd.ack.type!r}: expected 'sdo' or 'none' for protocol canopen")
    if via == "sdo" and cmd.ack.type != "sdo":
        raise ProfileError(f"{path}.ack.type: an SDO download is acknowledged by its response; expected 'sdo'")
    if via == "sdo" and cmd.ttl_s is not None:
        raise ProfileError(f"{path}.ttl_s: cyclic commands go by RPDO; set via 'rpdo' or drop ttl_s")
    if via == "rpdo" and (var.index, var.subindex) not in rpdo:
        raise ProfileError(f"{path}.via 'rpdo': {ref_text(var)} is in no RPDO mapping of {eds}")
    _check_factor(var, eds, f"{path}.od")
    real = var.data_type in REAL_LIMITS
    if real and var.factor != 1:
        raise ProfileError(f"{path}.od {cmd.od!r}: {ref_text(var)} is {_type_name(var)} with Factor {var.factor:g}"
                           f" in {eds}; expected no Factor (a float is sent as it is)")
    limits = command_limits(var)
    if limits is None:
        raise ProfileError(f"{path}.od {cmd.od!r}: {ref_text(var)} is not a number in {eds}"
                           f" (data type 0x{var.data_type or 0:04X}); expected an integer, BOOLEAN, REAL32 or REAL64")
    lo, hi = limits
    eps = 0.0 if real else abs(var.factor) * 1e-6
    unit = f" {var.unit}" if var.unit else ""
    if cmd.min < lo - eps:
        raise ProfileError(f"{path}.min {cmd.min:g} is below {ref_text(var)}'s lowest value {lo:g}{unit} in {eds}")
    if cmd.max > hi + eps:
        raise ProfileError(f"{path}.max {cmd.max:g} is above {ref_text(var)}'s highest value {hi:g}{unit} in {eds}")


def _type_name(var: ODVariable) -> str:
    return "REAL32" if var.data_type == dt.REAL32 else "REAL64" if var.data_type == dt.REAL64 else "a number"
