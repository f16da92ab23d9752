"""The adapter contract suite: behaviours every protocol adapter must show, run for each adapter.

As python-can's back2back tests do for bus backends, `AdapterContract` holds the tests and a
subclass per adapter supplies the factory methods: how to build the adapter, a few frames its
device sends, malformed frames of that device, frames of some other device, and an
out-of-range command. Another protocol (e.g. J1939) joins by adding one subclass::

    class TestMyAdapterContract(AdapterContract):
        def make_adapter(self, id_offset=0): ...
        def device_frames(self, id_offset=0): ...
        ...
"""

from __future__ import annotations

import random
from typing import ClassVar

import can
import pytest

from emsbms import CommandRejected, load_profile
from emsbms.protocols.base import Adapter, DeviceConfig, Output, frame_key
from emsbms.protocols.canopen import CanopenAdapter
from emsbms.protocols.dbc import DbcAdapter
from emsbms.types import ChannelKind, CommState

T0 = 1_800_000_000_000_000  # µs

NORMALIZED_UNITS = {
    "Soc": "%", "Soh": "%", "Voltage": "V", "Current": "A", "Power": "W", "Temperature": "°C",
    "ChargeMaxVoltage": "V", "DischargeMinVoltage": "V", "ChargeMaxCurrent": "A", "DischargeMaxCurrent": "A",
    "MinCellVoltage": "V", "MaxCellVoltage": "V", "MinCellTemperature": "°C", "MaxCellTemperature": "°C",
    "Capacity": "Ah",
}
"""The unit of every normalized channel (PROTOCOLS.md): units live in metadata, SI, never mV."""


def msg(can_id: int, data: bytes, extended: bool = False, t_us: int = T0) -> can.Message:
    return can.Message(arbitration_id=can_id, data=data, is_extended_id=extended, timestamp=t_us / 1e6)


class AdapterContract:
    """The shared tests. Subclasses implement the factory methods below (and may tune the numbers)."""

    device = "dev"
    offset: ClassVar[int] = 0x10
    """An id_offset for the bridge test; choose one that keeps the shifted frames apart from the others."""

    # -- factory methods ------------------------------------------------------------------

    def make_adapter(self, id_offset: int = 0) -> Adapter:
        """A fresh adapter for device `self.device` (not started)."""
        raise NotImplementedError

    def device_frames(self, id_offset: int = 0) -> list[can.Message]:
        """Valid frames the device sends, with its IDs shifted by id_offset."""
        raise NotImplementedError

    def malformed_frames(self) -> list[can.Message]:
        """Frames with the device's IDs that it could never send (wrong length, bad content)."""
        raise NotImplementedError

    def foreign_frames(self) -> list[can.Message]:
        """Frames some other device on the bus sends."""
        raise NotImplementedError

    def out_of_range_command(self) -> tuple[str, float] | None:
        """A command name and a value outside its profile limits (None: the profile has no commands)."""
        raise NotImplementedError

    def lost_after_us(self, adapter: Adapter) -> int:
        """The longest a started device may stay silent before it must be LOST."""
        return int(adapter.profile.model.timeout_ms * 1000)

    # -- helpers -----------------------------------------------------------------------------

    def started(self, id_offset: int = 0) -> Adapter:
        adapter = self.make_adapter(id_offset)
        adapter.start(T0)
        return adapter

    # -- the contract --------------------------------------------------------------------------

    def test_channels_are_declared_once_under_the_device_with_normalized_units(self) -> None:
        infos = self.make_adapter().channels()
        addresses = [i.address for i in infos]
        assert len(addresses) == len(set(addresses)), "a channel is declared twice"
        assert all(a.startswith(self.device + "/") for a in addresses)
        for info in infos:
            name = info.address.split("/", 1)[1]
            if info.kind is ChannelKind.MEASUREMENT and name in NORMALIZED_UNITS:
                assert info.unit == NORMALIZED_UNITS[name], f"{info.address} unit {info.unit!r}"
        assert f"{self.device}/CommState" in addresses

    def test_device_frames_decode_to_declared_channels(self) -> None:
        adapter = self.started()
        declared = {i.address for i in adapter.channels()}
        produced = 0
        for frame in self.device_frames():
            out = adapter.on_frame(frame, T0)
            assert out is not None, f"0x{frame.arbitration_id:X} is the device's but was not claimed"
            assert out.error is None, out.error
            assert {s.address for s in out.samples} <= declared
            produced += len(out.samples)
        assert produced > 0

    def test_frames_of_another_device_return_none(self) -> None:
        adapter = self.started()
        for frame in self.foreign_frames():
            assert adapter.on_frame(frame, T0) is None, f"0x{frame.arbitration_id:X} claimed"

    def test_malformed_frame_gives_an_error_and_never_raises(self) -> None:
        adapter = self.started()
        for frame in self.malformed_frames():
            out = adapter.on_frame(frame, T0)
            assert isinstance(out, Output), f"0x{frame.arbitration_id:X}: malformed frame not claimed"
            assert out.error, f"0x{frame.arbitration_id:X}: no error for {frame.data.hex()}"
            assert not out.samples

    def test_random_payloads_on_device_ids_never_raise(self) -> None:
        adapter = self.started()
        rng = random.Random(7)
        for frame in self.device_frames():
            for _ in range(40):
                data = bytes(rng.randrange(256) for _ in range(rng.randrange(9)))
                out = adapter.on_frame(msg(frame.arbitration_id, data, frame.is_extended_id), T0)
                assert out is None or isinstance(out, Output)

    def test_tick_without_traffic_eventually_reports_lost(self) -> None:
        adapter = self.started()
        limit = self.lost_after_us(adapter)
        states = []
        for t in range(T0, T0 + limit + 200_000, 100_000):
            out = adapter.tick(t)
            states += [s.value for s in out.samples if s.address == f"{self.device}/CommState"]
        assert adapter.comm_state is CommState.LOST
        assert states and states[-1] is CommState.LOST

    def test_out_of_range_command_is_rejected_before_any_frame(self) -> None:
        command = self.out_of_range_command()
        if command is None:
            pytest.skip("the profile has no commands")
        adapter = self.started()
        name, value = command
        with pytest.raises(CommandRejected, match=name):
            adapter.plan_command(name, value, T0)
        with pytest.raises(CommandRejected, match="no command"):
            adapter.plan_command("NoSuchCommand", 1.0, T0)
        assert not [f for f in adapter.tick(T0 + 1000).frames if f.arbitration_id in self._command_ids(adapter)]

    def _command_ids(self, adapter: Adapter) -> set[int]:
        return set()  # overridden where commands go in known frames

    def test_frame_keys_cover_the_device_frames(self) -> None:
        keys = set(self.make_adapter().frame_keys())
        for frame in self.device_frames():
            assert frame_key(frame.arbitration_id, frame.is_extended_id) in keys

    def test_id_offset_shifts_every_frame(self) -> None:
        plain = self.make_adapter()
        shifted = self.started(self.offset)
        plain_keys = set(plain.frame_keys())
        shifted_keys = set(shifted.frame_keys())
        assert len(shifted_keys) == len(plain_keys)
        produced = 0
        for frame in self.device_frames(self.offset):
            out = shifted.on_frame(frame, T0)
            assert out is not None and out.error is None, f"shifted 0x{frame.arbitration_id:X} not decoded"
            produced += len(out.samples)
        assert produced > 0
        for frame in self.device_frames():
            key = frame_key(frame.arbitration_id, frame.is_extended_id)
            if key not in shifted_keys:
                assert shifted.on_frame(frame, T0) is None


# -- the DBC adapter ----------------------------------------------------------------------------


class DbcContract(AdapterContract):
    profile_name = ""

    def make_adapter(self, id_offset: int = 0) -> Adapter:
        profile = load_profile(self.profile_name)
        return DbcAdapter(DeviceConfig(self.device, "can0", self.profile_name, id_offset=id_offset), profile)

    def device_frames(self, id_offset: int = 0) -> list[can.Message]:
        """All-zero frames of every message the device sends (valid for any DBC layout)."""
        profile = load_profile(self.profile_name)
        sent_by_edge = {c.message for c in profile.model.commands.values()} | {
            t.message for t in profile.model.transmit}
        return [msg(m.frame_id + id_offset, bytes(m.length), m.is_extended_frame)
                for m in profile.db.messages if m.name not in sent_by_edge]

    def foreign_frames(self) -> list[can.Message]:
        return [msg(0x123, bytes(8)), msg(0x18FF50E5, bytes(8), extended=True)]


class TestPylonLvContract(DbcContract):
    profile_name = "pylon-lv"

    def malformed_frames(self) -> list[can.Message]:
        # the profile's strict bounds: 0x351 at least 6 bytes, 0x355 at least 4 (min_dlc); a remote frame
        return [msg(0x355, bytes(2)), msg(0x351, bytes(3)),
                can.Message(arbitration_id=0x356, is_extended_id=False, is_remote_frame=True, dlc=6)]

    def out_of_range_command(self) -> tuple[str, float] | None:
        return None


class TestAcmeHvContract(DbcContract):
    profile_name = "acme-hv"

    def malformed_frames(self) -> list[can.Message]:
        # no strict length bounds: a short frame gives the signals it holds; remote frames carry nothing
        return [can.Message(arbitration_id=i, is_extended_id=False, is_remote_frame=True, dlc=8)
                for i in (0x4A0, 0x4A5)]

    def out_of_range_command(self) -> tuple[str, float] | None:
        return "SetChargeCurrent", 201.0  # max 200 A

    def _command_ids(self, adapter: Adapter) -> set[int]:
        return {0x4B0, 0x4B1}


# -- the CANopen adapter ------------------------------------------------------------------------


class TestCanopenContract(AdapterContract):
    offset = 0x1000  # a bridge moving the node into the 29-bit space

    def make_adapter(self, id_offset: int = 0) -> Adapter:
        # decode by the EDS mapping: a bus-less test has no device to read the mapping from
        device = DeviceConfig(self.device, "can0", "cia418-bms", id_offset=id_offset, node_id=5,
                              options={"pdo_mapping": "eds"})
        return CanopenAdapter(device, load_profile("cia418-bms"))

    def device_frames(self, id_offset: int = 0) -> list[can.Message]:
        def f(cob: int, data: bytes) -> can.Message:
            return msg(cob + id_offset, data, extended=cob + id_offset > 0x7FF)

        return [
            f(0x185, bytes.fromhex("c800013c00008002")),  # TPDO1: 25 °C, status 1, SoC 60 %, 0 A, 40 A
            f(0x285, bytes.fromhex("00d500004c0d520d")),  # TPDO2: 53.25 V, 3404 mV, 3410 mV
            f(0x385, bytes.fromhex("f40120033802c001")),  # TPDO3: 50 A, 80 A, 56.8 V, 44.8 V
            f(0x485, bytes.fromhex("fa00040162000101")),  # TPDO4: 25 °C, 26 °C, SoH 98, no balancing, 1, 1
            f(0x705, b"\x05"),  # heartbeat: operational
            f(0x085, bytes.fromhex("1042080000000000")),  # EMCY 0x4210
        ]

    def malformed_frames(self) -> list[can.Message]:
        return [msg(0x185, bytes(5)), msg(0x705, b"\x05\x00"), msg(0x705, b"\x33"), msg(0x085, bytes(3))]

    def foreign_frames(self) -> list[can.Message]:
        return [msg(0x186, bytes(8)), msg(0x706, b"\x05"), msg(0x086, bytes(8)), msg(0x123, bytes(8)),
                msg(0x18FF50E5, bytes(8), extended=True)]

    def out_of_range_command(self) -> tuple[str, float] | None:
        return "SetChargeCurrent", 250.0  # max 200 A

    def _command_ids(self, adapter: Adapter) -> set[int]:
        return {0x205, 0x605}
