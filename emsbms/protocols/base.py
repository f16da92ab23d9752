"""The adapter contract every protocol implements: frames and `now` in, samples and frames out.

An adapter serves one device. It never touches a bus, never sleeps and never reads the clock:
the edge hands it received frames with the current time, calls ``tick`` periodically, and
sends whatever frames it returns. That keeps protocol code testable without a bus.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, NamedTuple, Protocol

import can

from emsbms.types import ChannelInfo, CommandResult, CommandStatus, CommState, Sample

if TYPE_CHECKING:
    from emsbms.profile.models import Profile

EXTENDED = 1 << 29
"""Added to an arbitration ID to form the dispatch key of an extended (29-bit) frame."""


def frame_key(arbitration_id: int, is_extended: bool) -> int:
    """Dispatch key of a frame: the ID, with bit 29 set for extended IDs."""
    return arbitration_id | EXTENDED if is_extended else arbitration_id


class Output(NamedTuple):
    """What an adapter gives back: channel samples, frames to send, addresses gone stale."""

    samples: Sequence[Sample] = ()
    frames: Sequence[can.Message] = ()
    stale: Sequence[str] = ()
    error: str | None = None  # set when the frame was the device's but malformed (counted)


EMPTY = Output()


class SentFrame(NamedTuple):
    """A frame the edge sends to one device: its dispatch key (id_offset applied) and what it is."""

    key: int
    name: str  # the message, e.g. "EMS_Setpoints", or the service, e.g. "SDO request"
    command: bool  # carries a command for this device alone: its ID is never shared, whatever the profile says


AckCheck = Callable[[can.Message], "tuple[CommandStatus, str] | None"]
"""Looks at a received frame of the device's bus; returns (status, detail) once it decides."""


@dataclass
class CommandPlan:
    """How one command is carried out: the frames to send and how to recognise the answer."""

    command: str
    value: float
    frames: list[can.Message]
    ack: AckCheck | None = None  # None: the profile has no acknowledgement (status "sent")
    detail: str = ""
    execute: Callable[[float], tuple[CommandStatus, str]] | None = None
    """For protocols whose exchange is a conversation (e.g. an SDO download through the canopen
    library): called with the timeout on the writer's thread instead of sending `frames` and
    waiting for `ack`. Never called on a receive thread."""


class AdapterIO(Protocol):
    """What the edge offers an adapter's background worker (see Adapter.background)."""

    stop: threading.Event

    def send(self, msg: can.Message) -> None:
        """Send a frame on the device's bus (raises BusError)."""

    def publish(self, samples: Sequence[Sample], stale: Sequence[str] = ()) -> None:
        """Put samples into the registry."""

    def now_us(self) -> int:
        """Current wall-clock time in µs."""


@dataclass(frozen=True)
class DeviceConfig:
    """One `[[device]]` of a site file."""

    name: str
    bus: str
    profile: str
    id_offset: int = 0
    node_id: int | None = None
    source_address: int | None = None
    j1939_name: int | None = None
    nmt_master: bool = False
    options: dict[str, object] = field(default_factory=dict)


class Adapter(ABC):
    """Protocol adapter for one device. Subclass per protocol; register in emsbms.protocols."""

    protocol: ClassVar[str]
    wants_unmatched: ClassVar[bool] = False
    """True if the adapter must see frames that no exact dispatch key claimed (e.g. J1939)."""

    def __init__(self, device: DeviceConfig, profile: Profile) -> None:
        self.device = device
        self.profile = profile
        self.prefix = device.name + "/"

    @classmethod
    def check_profile(cls, profile: Profile) -> None:
        """Raise ProfileError if the profile does not fit this protocol (names the JSON path)."""

    @abstractmethod
    def channels(self) -> list[ChannelInfo]:
        """Every channel the device publishes, with metadata."""

    @abstractmethod
    def frame_keys(self) -> Iterable[int]:
        """Dispatch keys (see frame_key) of the frames this device sends."""

    def sent_frames(self) -> Iterable[SentFrame]:
        """The frames the edge sends to this device (commands, keepalives, cyclic setpoints), with
        `id_offset` applied, so that the site can check their IDs fit and no other device uses them.

        Frames addressed by their data rather than their ID (a CANopen NMT command, a J1939 PGN sent
        from the edge's own address) are left out. The default: the edge sends this device nothing.
        """
        return ()

    def start(self, now_us: int) -> Output:
        """Called once when the edge starts; may return frames (e.g. NMT start, requests)."""
        return EMPTY

    @abstractmethod
    def on_frame(self, msg: can.Message, now_us: int) -> Output | None:
        """Decode one received frame. Return None if it is not this device's. Never raise."""

    def counters(self) -> tuple[int, int]:
        """(short frames, non-finite values) decoded so far: frames shorter than their message
        declares, decoded in part, and numbers that gave no value. The dispatcher publishes them."""
        return 0, 0

    @abstractmethod
    def tick(self, now_us: int) -> Output:
        """Periodic work: cyclic frames, supervision. Called every few milliseconds."""

    @abstractmethod
    def plan_command(self, name: str, value: float, now_us: int) -> CommandPlan:
        """Validate and encode a command. Raise CommandRejected before anything is sent."""

    has_background: ClassVar[bool] = False
    """True if `background` must run: the edge then gives the device a worker thread."""

    def background(self, io: AdapterIO) -> None:
        """Blocking protocol conversations (SDO uploads, PDO mapping reads) on a worker thread.

        Runs until ``io.stop`` is set. Only adapters with ``has_background = True`` get one.
        Frames still arrive through `on_frame` on the dispatcher thread.
        """

    def fresh(self, name: str, timeout: float) -> Sample:
        """Read channel `name` from the device now (e.g. a CANopen SDO upload), on the caller's thread.

        Protocols without on-demand reads raise NotImplementedError (the default).
        """
        raise NotImplementedError(f"protocol {self.protocol} has no on-demand read")

    def command_done(self, plan: CommandPlan, result: CommandResult, now_us: int) -> Output:
        """Told the outcome of a command (e.g. to start or drop a cyclic setpoint)."""
        return EMPTY

    def take_over(self, old: Adapter) -> None:
        """Take over what `old`, the same device's adapter it replaces, holds (hot profile activation).

        Called by the edge under the dispatcher's lock once every check has passed, just before the
        swap (e.g. a J1939 adapter takes the bus's shared stack). The default does nothing.
        """

    @property
    @abstractmethod
    def comm_state(self) -> CommState:
        """The device's communication state."""

    @property
    def command_names(self) -> list[str]:
        """Names of the device's command channels."""
        return list(self.profile.model.commands)
