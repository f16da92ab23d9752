"""The edge's own J1939 ECU on one bus: can-j1939 driven by the caller's frames and clock.

One ``J1939Stack`` per bus is shared by every J1939 device adapter on that bus. It holds a
can-j1939 ``ElectronicControlUnit`` whose job thread is stopped at once and whose sends are
captured into an outbox: the adapters feed it frames (``receive``), drive its timers and
transport-protocol deadlines from ``tick(now)``, and return the outbox frames as their output.
So the library does address claiming, requests and TP/BAM reassembly while the adapters keep
the contract: no thread, no bus, no sleep.

Two guards wrap the library (can-j1939 2.0.12):

* it answers every address claim for its own address, including the echo of its own claim on a
  bus that echoes frames, which turns into a claim storm: claims carrying our own NAME and
  other frames from our own address are dropped before they reach it;
* an arbitrary-address-capable ECU that loses a conflict takes address + 1 without a range
  check (254 is null, 255 global): past 253 the edge gives up and sends "cannot claim".
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import can
import j1939

from emsbms.errors import ConfigError
from emsbms.protocols.base import Output
from emsbms.protocols.j1939_names import (
    ADDRESS_GLOBAL,
    ADDRESS_NULL,
    MAX_CLAIMABLE,
    PGN_ADDRESS_CLAIMED,
    make_name,
)

log = logging.getLogger(__name__)

CLAIM_REQUEST_FIRST_US = 1_000_000
CLAIM_REQUEST_MAX_US = 30_000_000

DEFAULT_EDGE_NAME = make_name(
    arbitrary_address_capable=1, industry_group=0, function=130, manufacturer_code=0x7FF, identity_number=0xE05,
)
"""The edge's NAME unless the site's ``[j1939]`` table sets ``edge_name`` (arbitrary-address capable)."""
DEFAULT_EDGE_ADDRESS = 0xE0

_CLAIM_PF = PGN_ADDRESS_CLAIMED >> 8
_PROTOCOL_PF = frozenset({0xE8, 0xEA, 0xEB, 0xEC, 0xEE})  # ACK, request, TP.DT, TP.CM, address claim
_State = j1939.ControllerApplication.State


class DrivenEcu(j1939.ElectronicControlUnit):  # type: ignore[misc]
    """A can-j1939 ECU whose clock and I/O belong to the caller: no job thread, sends captured."""

    def __init__(self, send: Callable[[can.Message], None]) -> None:
        self._driven = False
        self._capture_to = send
        super().__init__(send_message=self._capture)
        super().stop()  # end the library's job thread: run_jobs() does its work instead
        self._driven = True

    def _capture(self, can_id: int, extended_id: bool, data: Any, fd_format: bool = False) -> None:
        self._capture_to(can.Message(arbitration_id=can_id, is_extended_id=extended_id, data=bytes(data)))

    def _job_thread_wakeup(self) -> None:
        if not self._driven:  # only while the library's thread still exists
            super()._job_thread_wakeup()

    def stop(self) -> None:
        """Nothing to stop: the job thread ended in the constructor."""

    def run_jobs(self, now_s: float) -> None:
        """One pass of can-j1939's job loop at `now_s`: TP deadlines, BAM pacing, CA timers."""
        self.j1939_dll.async_job_thread(now_s)
        for event in list(self._timer_events):
            if event["deadline"] > now_s:
                continue
            if event["callback"](event["cookie"]) is True:
                while event["deadline"] <= now_s:
                    event["deadline"] += event["delta_time"]
            elif event in self._timer_events:
                self._timer_events.remove(event)


class GuardedCA(j1939.ControllerApplication):  # type: ignore[misc]
    """A controller application that reports every claim, ignores its own and stays in range."""

    def __init__(self, name: int, address: int | None, on_claim: Callable[[int, int], None]) -> None:
        super().__init__(j1939.Name(value=name), address)
        self.name_value = name
        self._on_claim = on_claim
        self.own_claims_dropped = 0

    def _process_addressclaim(self, mid: Any, data: Any, timestamp: float) -> None:
        name = int.from_bytes(bytes(data[:8]), "little")
        if name == self.name_value:  # our own claim, echoed: can-j1939 would answer it forever
            self.own_claims_dropped += 1
            return
        self._on_claim(mid.source_address, name)
        if self._loses_to(mid.source_address, name) and self._device_address_announced >= MAX_CLAIMABLE:
            log.warning("J1939: lost address %d to NAME 0x%016X and no address is left: cannot claim",
                        mid.source_address, name)
            self._device_address_state = _State.CANNOT_CLAIM
            self._device_address = ADDRESS_NULL
            self._send_address_claimed(ADDRESS_NULL)
            return
        super()._process_addressclaim(mid, data, timestamp)

    def _loses_to(self, address: int, name: int) -> bool:
        state = self._device_address_state
        contested = (state == _State.NORMAL and address == self._device_address) or (
            state == _State.WAIT_VETO and address == self._device_address_announced
        )
        return bool(contested and self.name_value > name and self._name.arbitrary_address_capable)

    @property
    def address(self) -> int | None:
        """The claimed address, or None while claiming or after losing it for good."""
        return int(self._device_address) if self._device_address_state == _State.NORMAL else None

    @property
    def claiming(self) -> bool:
        """True while a claim is under way (not yet sent, or in its veto time)."""
        return self._device_address_state in (_State.NONE, _State.WAIT_VETO)

    @property
    def claiming_address(self) -> int | None:
        """The address announced or held (frames from it are ours)."""
        if self._device_address_state in (_State.NORMAL, _State.WAIT_VETO):
            return int(self._device_address_announced)
        return None


class StackClient(Protocol):
    """What the stack needs from a device adapter."""

    device_name: str
    address: int | None

    def decode(self, pgn: int, data: bytes, timestamp_us: int) -> Output | None:
        """Decode a complete parameter group from the device's address (None: not the device's)."""

    def claims_changed(self) -> None:
        """The NAME table changed: re-resolve the device's address."""


class J1939Stack:
    """The edge ECU of one bus and the NAME/address table everyone on it has claimed."""

    def __init__(self, bus: str, name: int = DEFAULT_EDGE_NAME, address: int = DEFAULT_EDGE_ADDRESS) -> None:
        self.bus = bus
        self.outbox: list[can.Message] = []
        self.ecu = DrivenEcu(self.outbox.append)
        self.ca = GuardedCA(name, address, self._claimed)
        self.ecu.add_ca(controller_application=self.ca)
        self.ecu.subscribe(self._on_pgn)
        self.address_of: dict[int, int] = {}  # NAME -> address
        self.name_at: dict[int, int] = {}  # address -> NAME
        self.clients: list[StackClient] = []
        self.started = False
        self.own_frames_dropped = 0
        self.errors = 0
        self.last_error = ""
        self._last_msg: can.Message | None = None
        self._last_used = False
        self._results: dict[int, Output] = {}
        self._last_tick = -1
        self.clock_us = 0  # time of the last frame or tick (for samples the library triggers)
        self._claim_request_next_us = 0  # when a NAME is unresolved: ask all ECUs again (backoff)
        self._claim_request_gap_us = CLAIM_REQUEST_FIRST_US

    # -- wiring ------------------------------------------------------------------------------

    def attach(self, client: StackClient) -> None:
        self.clients.append(client)

    def has_device(self, device_name: str) -> bool:
        return any(c.device_name == device_name for c in self.clients)

    def replace(self, old: StackClient, new: StackClient, built_on: J1939Stack | None = None) -> None:
        """Give `old`'s place among the clients to `new` (hot profile activation).

        The ECU, its claimed address and the NAME/address table stay as they are: nothing is
        claimed again. `new` leaves `built_on`, the stack it was built on (which never started),
        and this stack becomes the bus's stack again. The caller holds the dispatcher's lock.
        Raises ConfigError if `old` is not a client or `built_on` serves another bus.
        """
        if old not in self.clients:
            raise ConfigError(f"bus {self.bus}: device {old.device_name!r} is not on this J1939 stack;"
                              f" found {', '.join(c.device_name for c in self.clients) or 'no device'}")
        if built_on is not None and built_on is not self:
            if built_on.bus != self.bus or built_on.started:
                raise ConfigError(f"device {new.device_name!r}: built on the stack of bus {built_on.bus!r}"
                                  f" (started: {built_on.started}), expected an unstarted one of bus {self.bus!r}")
            if new in built_on.clients:
                built_on.clients.remove(new)
            _reinstate(built_on, self)
        self.clients[self.clients.index(old)] = new
        self._results.pop(id(old), None)

    @property
    def edge_address(self) -> int | None:
        """The edge's claimed address on this bus (None while claiming or after losing it)."""
        return self.ca.address

    def start(self) -> None:
        """Start claiming our address and ask every ECU for its NAME (once per stack)."""
        if self.started:
            return
        self.started = True
        self.ca.start()
        self.ca.send_request(0, PGN_ADDRESS_CLAIMED, ADDRESS_GLOBAL)  # from 254: allowed before claiming

    def request_claims_again(self, now_us: int) -> None:
        """A device's NAME holds no known address: request Address Claimed again (1 s, 2 s ... 30 s).

        Covers a BMS that claimed before the edge listened, or whose claim was lost. Shared by every
        device of the bus, so one request serves them all.
        """
        if not self.started or now_us < self._claim_request_next_us:
            return
        if self._claim_request_next_us:
            self.ca.send_request(0, PGN_ADDRESS_CLAIMED, ADDRESS_GLOBAL)
        self._claim_request_next_us = now_us + self._claim_request_gap_us
        self._claim_request_gap_us = min(2 * self._claim_request_gap_us, CLAIM_REQUEST_MAX_US)

    # -- receive -----------------------------------------------------------------------------

    def receive(self, msg: can.Message) -> bool:
        """Feed one frame once, however many devices pass it on; True if the stack used it."""
        if msg is self._last_msg:
            return self._last_used
        self._last_msg = msg
        self._results = {}
        self._last_used = self._feed(msg)
        return self._last_used

    def _feed(self, msg: can.Message) -> bool:
        if not msg.is_extended_id or msg.is_remote_frame or msg.is_error_frame:
            return False
        can_id = msg.arbitration_id
        pf = (can_id >> 16) & 0xFF
        if pf != _CLAIM_PF and (can_id & 0xFF) == self.ca.claiming_address:
            self.own_frames_dropped += 1  # our own frame echoed by the bus
            return True
        self.clock_us = round(msg.timestamp * 1_000_000)
        try:
            self.ecu.notify(can_id, msg.data, msg.timestamp)
        except Exception as e:  # the library raises on malformed TP frames; never let it out
            self.errors += 1
            self.last_error = f"J1939 frame 0x{can_id:08X}: {e}"
            log.debug("%s", self.last_error)
            return True
        return pf in _PROTOCOL_PF or bool(self._results)

    def take(self, client: StackClient) -> Output | None:
        """What the last frame produced for `client` (None: nothing of its own)."""
        return self._results.pop(id(client), None)

    def _on_pgn(self, priority: int, pgn: int, sa: int, timestamp: float, data: Any) -> None:
        payload = bytes(data)
        ts = round(timestamp * 1_000_000)
        for c in self.clients:
            if c.address == sa:
                out = c.decode(pgn, payload, ts)
                if out is not None:
                    self._results[id(c)] = out

    def _claimed(self, address: int, name: int) -> None:
        old = self.address_of.pop(name, None)
        if old is not None and self.name_at.get(old) == name:
            del self.name_at[old]
        if address <= MAX_CLAIMABLE:
            previous = self.name_at.get(address)
            if previous is not None:
                self.address_of.pop(previous, None)  # it lost the address; it will claim another
            self.name_at[address] = name
            self.address_of[name] = address
        for c in self.clients:
            c.claims_changed()

    # -- time and output ---------------------------------------------------------------------

    def tick(self, now_us: int) -> None:
        """Run the library's timers and TP deadlines (once per dispatcher tick)."""
        if now_us == self._last_tick:
            return
        self._last_tick = now_us
        self.clock_us = now_us
        try:
            self.ecu.run_jobs(now_us / 1_000_000)
        except Exception as e:
            self.errors += 1
            self.last_error = f"J1939 jobs: {e}"
            log.exception("J1939 stack of bus %s", self.bus)

    def drain(self) -> list[can.Message]:
        """Frames the ECU wants sent; each is handed out once."""
        if not self.outbox:
            return []
        frames = self.outbox[:]
        self.outbox.clear()
        return frames

    def capture(self, action: Callable[[], object]) -> list[can.Message]:
        """Run a library call and return (and keep out of the outbox) the frames it sends."""
        start = len(self.outbox)
        action()
        frames = self.outbox[start:]
        del self.outbox[start:]
        return frames


# -- one stack per bus -------------------------------------------------------------------------

_LOCK = threading.Lock()
_OPEN: dict[str, weakref.ref[J1939Stack]] = {}


def stack_for(bus: str, device_name: str, name: int, address: int) -> J1939Stack:
    """The stack the devices of bus `bus` share.

    A stack stops taking devices once it has started (or when a device name repeats, which means
    another site): a new edge on a bus of the same name gets its own ECU.
    """
    with _LOCK:
        ref = _OPEN.get(bus)
        stack = ref() if ref is not None else None
        if stack is None or stack.started or stack.has_device(device_name):
            stack = J1939Stack(bus, name, address)
            _OPEN[bus] = weakref.ref(stack)
        elif stack.ca.name_value != name:
            log.warning("bus %s: device %s asks for edge NAME 0x%016X; the bus already uses 0x%016X",
                        bus, device_name, name, stack.ca.name_value)
        return stack


def _reinstate(spare: J1939Stack, stack: J1939Stack) -> None:
    """Make `stack` the bus's stack again where building a replacement adapter registered `spare`."""
    with _LOCK:
        ref = _OPEN.get(stack.bus)
        if ref is not None and ref() is spare:
            _OPEN[stack.bus] = weakref.ref(stack)
