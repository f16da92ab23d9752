"""The CAN receiver: a python-can bus read on its own thread into a bounded queue.

The reader never blocks on consumers: when the queue is full the frame is dropped and counted.
If the bus fails (the adapter disappears, recv raises), the reader marks it DOWN and reopens it
with bounded exponential backoff; a bus that cannot be opened at start is DOWN from the start and
opened the same way. Data the interface received but could not turn into a frame (a datagram on a
udp_multicast group that is no packed CAN message) is counted and skipped: the bus stays up.

The edge's own frames coming back are recognised and counted (`own_frames`), never dispatched:
udp_multicast loops every datagram back to its sender, so each frame sent there carries a tag
unique to this runner in python-can's `channel` field (which udp_multicast carries to the
receivers) and a received frame with that tag is our own; on `virtual` (with
`receive_own_messages`) python-can marks an echo `is_rx=False`; SocketCAN does not echo unless
`receive_own_messages` is set, and then python-can marks every frame sent from this host
(`MSG_DONTROUTE`), ours or another process's, so there it cannot tell them apart.
"""

from __future__ import annotations

import copy
import logging
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import can

from emsbms.can.config import BusConfig
from emsbms.can.health import FrameTable, LoadMeter, frame_bits
from emsbms.errors import BusError

log = logging.getLogger(__name__)

BusFactory = Callable[[BusConfig], Any]


class BusState(StrEnum):
    """State of a CAN bus as the edge knows it."""

    UNKNOWN = "UNKNOWN"  # the interface reports no controller state
    ERROR_ACTIVE = "ERROR_ACTIVE"
    ERROR_WARNING = "ERROR_WARNING"
    ERROR_PASSIVE = "ERROR_PASSIVE"
    BUS_OFF = "BUS_OFF"
    DOWN = "DOWN"


def open_python_can(config: BusConfig) -> Any:
    """Open a python-can bus from a bus config (the default factory)."""
    try:
        return can.Bus(**config.can_kwargs())
    except Exception as e:
        raise BusError(f"bus {config.name}: cannot open {config.interface}:{config.channel}: {e}") from e


class FrameQueue:
    """The bounded frame queue between one reader and one consumer; a full queue refuses, never blocks.

    Cheaper than ``queue.Queue`` on the hot path: a put is a deque append and a flag check, and the
    consumer takes whole batches. A consumer that finds the queue empty sleeps on a plain lock
    that the next put releases (``threading.Event`` costs a Condition round per wake-up).
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self._items: deque[can.Message] = deque()
        self._wake = threading.Lock()
        self._wake.acquire()  # held = no wake-up pending
        self._sleeping = False

    def put(self, msg: can.Message) -> bool:
        """Append a frame; False (frame not taken) when the queue is full."""
        items = self._items
        if len(items) >= self.maxsize:
            return False
        items.append(msg)
        if self._sleeping:
            self._sleeping = False
            try:  # noqa: SIM105 (hot path: a try costs nothing, contextlib.suppress is a context manager)
                self._wake.release()
            except RuntimeError:  # already released: a wake-up is pending anyway
                pass
        return True

    def get_batch(self, limit: int, timeout: float) -> list[can.Message]:
        """Up to `limit` frames, oldest first; waits up to `timeout` s when there are none."""
        items = self._items
        if not items:
            self._sleeping = True
            if not items:  # re-checked after raising the flag: a put in between has seen it
                self._wake.acquire(timeout=timeout)  # a spurious wake-up only means an empty batch
            self._sleeping = False
        n = min(len(items), limit)
        pop = items.popleft
        return [pop() for _ in range(n)]

    def qsize(self) -> int:
        return len(self._items)


TAGGED_INTERFACES = frozenset({"udp_multicast"})
"""Interfaces that deliver a node's own frames back to it and carry `Message.channel` to the
receivers: the runner tags what it sends there and recognises the tag when it comes back."""

RX_FLAGGED_INTERFACES = frozenset({"virtual"})
"""Interfaces whose `is_rx=False` means exactly "sent by this bus object"."""


def own_tag() -> str:
    """A tag no other runner, in this process or another, has."""
    return f"emsbms:{os.getpid()}:{uuid.uuid4().hex[:12]}"


MAX_BAD_IN_A_ROW = 1000
"""Undecodable receptions in a row (no frame, no timeout between them) taken as a failing bus."""


def is_bad_data(error: Exception) -> bool:
    """True if `recv` failed on one reception it could not decode, not on the bus.

    python-can's udp_multicast consumes a datagram, then raises ``CanOperationError("could not
    unpack received message")`` from the unpacking error (msgpack's, or can.Message's TypeError or
    ValueError): the socket is fine and the next recv works. A failure of the bus itself comes
    from an OSError (a socket or device gone) or has no cause.
    """
    cause = error.__cause__
    return (isinstance(error, can.CanOperationError) and cause is not None
            and not isinstance(cause, OSError | can.CanError))


class BusRunner:
    """Owns one bus: its reader thread, its receive queue, sending and counters."""

    def __init__(
        self,
        config: BusConfig,
        factory: BusFactory = open_python_can,
        queue_size: int = 50_000,
        max_backoff: float = 5.0,
    ) -> None:
        self.config = config
        self.name = config.name
        self._factory = factory
        self.queue = FrameQueue(queue_size)
        self._bus: Any = None
        self._send_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.max_backoff = max_backoff
        self.state = BusState.DOWN
        self.rx = 0
        self.tx = 0
        self.tx_errors = 0
        self.dropped = 0
        self.reopens = 0
        self.rx_errors = 0
        """Received data skipped because the interface could not make a frame of it (see is_bad_data)."""
        self.last_error = ""
        self.last_rx_error = ""
        self.tx_load = LoadMeter(config.bitrate)
        self.own_frames = 0
        """Frames this runner sent that the interface delivered back (not counted in `rx`)."""
        self.frames = FrameTable()
        """The IDs received (not our own), for the monitor's frames page."""
        self.tag = own_tag() if config.interface in TAGGED_INTERFACES else None
        self._rx_flagged = config.interface in RX_FLAGGED_INTERFACES
        self._error_state: BusState | None = None  # announced by error frames

    def open(self) -> None:
        """Open the bus and start the reader thread.

        A bus that fails to open is DOWN, with the reason in `last_error`, and the reader keeps
        opening it with the backoff. Only an interface python-can does not know (a configuration
        error no retry can mend) raises BusError.
        """
        try:
            self._bus = self._factory(self.config)
            self.state = self._state_of(self._bus)
        except Exception as e:
            if isinstance(e, can.CanInterfaceNotImplementedError) or isinstance(
                    e.__cause__, can.CanInterfaceNotImplementedError):
                raise e if isinstance(e, BusError) else BusError(
                    f"bus {self.name}: cannot open {self.config.interface}:{self.config.channel}: {e}") from e
            log.warning("bus %s cannot be opened (retrying): %s", self.name, e)
            self._bus = None
            self.state = BusState.DOWN
            self.last_error = f"{type(e).__name__}: {e}"
        self._thread = threading.Thread(target=self._read_loop, name=f"emsbms-rx-{self.name}", daemon=True)
        self._thread.start()

    def note_error_state(self, state: BusState) -> None:
        """An error frame announced a controller state (ERROR_ACTIVE ... BUS_OFF)."""
        if self._bus is not None:
            self._error_state = state
            self.state = state

    def poll_state(self) -> None:
        """Refresh the state from the interface, where it reports one."""
        bus = self._bus
        if bus is None:
            return
        reported = self._state_of(bus)
        if reported is BusState.UNKNOWN:
            if self._error_state is not None:
                self.state = self._error_state
            return
        if reported is BusState.ERROR_ACTIVE and self._error_state in (BusState.ERROR_WARNING,):
            return  # the interface has no warning level: keep what the error frames said
        self.state = reported

    @staticmethod
    def _state_of(bus: Any) -> BusState:
        try:
            state = bus.state
        except Exception:
            return BusState.UNKNOWN
        mapping = {
            can.BusState.ACTIVE: BusState.ERROR_ACTIVE,
            can.BusState.PASSIVE: BusState.ERROR_PASSIVE,
            can.BusState.ERROR: BusState.BUS_OFF,
        }
        # python-can's base class answers ACTIVE whatever the hardware: trust only overrides
        if type(bus).state is can.BusABC.state:
            return BusState.UNKNOWN
        return mapping.get(state, BusState.UNKNOWN)

    def _read_loop(self) -> None:
        backoff = 0.05
        bad_in_a_row = 0
        put = self.queue.put
        note = self.frames.note
        tag = self.tag
        rx_flagged = self._rx_flagged
        while not self._stop.is_set():
            bus = self._bus
            if bus is None:
                if self._stop.wait(backoff):
                    break
                backoff = min(backoff * 2, self.max_backoff)
                try:
                    self._bus = self._factory(self.config)
                    self._error_state = None
                    self.state = self._state_of(self._bus)
                    self.reopens += 1
                    log.info("bus %s reopened", self.name)
                except Exception as e:
                    self.last_error = str(e)
                continue
            try:
                msg = bus.recv(0.1)
            except Exception as e:
                if is_bad_data(e) and bad_in_a_row < MAX_BAD_IN_A_ROW:
                    bad_in_a_row += 1
                    self.rx_errors += 1
                    cause = f"{type(e.__cause__).__name__}: {e.__cause__}"
                    self.last_rx_error = f"received data skipped: {e} ({cause[:80]})"
                    continue
                bad_in_a_row = 0
                self._fail(e)
                continue
            bad_in_a_row = 0
            backoff = 0.05  # reset only once the bus works: a downed SocketCAN link opens fine, then fails
            if msg is None:
                continue
            if (tag is not None and msg.channel == tag) or (rx_flagged and not msg.is_rx):
                self.own_frames += 1
                continue
            if not msg.timestamp:
                msg.timestamp = time.time()
            self.rx += 1
            note(msg)
            if not put(msg):
                self.dropped += 1

    def _fail(self, error: Exception) -> None:
        log.warning("bus %s failed: %s", self.name, error)
        self.last_error = f"{type(error).__name__}: {error}"
        self.state = BusState.DOWN
        bus, self._bus = self._bus, None
        try:
            if bus is not None:
                bus.shutdown()
        except Exception:
            log.debug("shutdown of failed bus %s raised", self.name, exc_info=True)

    def send(self, msg: can.Message, timeout: float = 0.05) -> None:
        """Send a frame; raises BusError if the bus is down or refuses it."""
        bus = self._bus
        if bus is None:
            self.tx_errors += 1
            raise BusError(f"bus {self.name} is {self.state.value}: cannot send 0x{msg.arbitration_id:X}")
        if self.tag is not None:
            msg = copy.copy(msg)  # the caller's frame stays as it was
            msg.channel = self.tag
        try:
            with self._send_lock:
                bus.send(msg, timeout)
                self.tx_load.add(time.time(), frame_bits(msg.arbitration_id, msg.is_extended_id, msg.data,
                                                         msg.is_remote_frame, msg.dlc))
        except Exception as e:
            self.tx_errors += 1
            self.last_error = f"{type(e).__name__}: {e}"
            raise BusError(f"bus {self.name}: send of 0x{msg.arbitration_id:X} failed: {e}") from e
        self.tx += 1

    def close(self) -> None:
        """Stop the reader and shut the bus down."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
        bus, self._bus = self._bus, None
        if bus is not None:
            try:
                bus.shutdown()
            except Exception:
                log.debug("shutdown of bus %s raised", self.name, exc_info=True)
        self.state = BusState.DOWN
