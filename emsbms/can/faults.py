"""A fault-injecting python-can bus: drop, duplicate, delay and corrupt frames, fail, go bus-off.

Wrap any bus for your own tests::

    inner = can.Bus(interface="virtual", channel="x")
    bus = FaultyBus(inner_bus=inner, drop=0.1, seed=1)
    bus.go_bus_off()        # recv yields a bus-off error frame, send raises, state is ERROR
    bus.recover()

It is also a python-can interface named ``emsbms_faulty`` (an entry point), so a site file can use it::

    [[bus]]
    name = "can0"
    interface = "emsbms_faulty"
    channel = "test0"
    inner_interface = "virtual"
    drop = 0.05
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from typing import Any

import can

from emsbms.can.health import CAN_ERR_BUSOFF, CAN_ERR_CRTL, CAN_ERR_CRTL_ACTIVE, CAN_ERR_RESTARTED


class FaultyBus(can.BusABC):
    """Wraps another bus and injects faults. Every knob can be changed while it runs."""

    def __init__(
        self,
        channel: Any = None,
        *,
        inner_bus: can.BusABC | None = None,
        inner_interface: str = "virtual",
        drop: float = 0.0,
        duplicate: float = 0.0,
        delay_s: float = 0.0,
        corrupt: float = 0.0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        self.inner = inner_bus if inner_bus is not None else can.Bus(
            interface=inner_interface, channel=channel, **kwargs
        )
        self.channel_info = f"faulty({getattr(self.inner, 'channel_info', channel)})"
        self.drop = drop
        self.duplicate = duplicate
        self.delay_s = delay_s
        self.corrupt = corrupt
        self.raise_on_recv: Exception | None = None
        self.raise_on_send: Exception | None = None
        self.dropped = 0
        self.duplicated = 0
        self.corrupted = 0
        self._bus_off = False
        self._pending: deque[can.Message] = deque()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        super().__init__(channel=channel)

    # -- faults -----------------------------------------------------------------------------

    def go_bus_off(self) -> None:
        """Simulate bus-off: an error frame announces it, sending fails, state is ERROR."""
        with self._lock:
            self._bus_off = True
            self._pending.append(self._error_frame(CAN_ERR_BUSOFF, bytes(8)))

    def recover(self) -> None:
        """Leave bus-off: a 'restarted' error frame, then normal operation."""
        with self._lock:
            self._bus_off = False
            data = bytes([0, CAN_ERR_CRTL_ACTIVE, 0, 0, 0, 0, 0, 0])
            self._pending.append(self._error_frame(CAN_ERR_RESTARTED | CAN_ERR_CRTL, data))

    def inject_error_frame(self, class_bits: int, data: bytes) -> None:
        """Deliver a hand-built SocketCAN-style error frame on the next recv."""
        with self._lock:
            self._pending.append(self._error_frame(class_bits, data))

    @staticmethod
    def _error_frame(class_bits: int, data: bytes) -> can.Message:
        return can.Message(arbitration_id=class_bits, data=data, is_error_frame=True, timestamp=time.time(),
                           is_extended_id=False)

    @property
    def state(self) -> can.BusState:
        return can.BusState.ERROR if self._bus_off else can.BusState.ACTIVE

    @state.setter
    def state(self, new_state: can.BusState) -> None:
        raise can.CanOperationError(f"FaultyBus: state is simulated; use go_bus_off()/recover(), not {new_state}")

    # -- python-can contract ----------------------------------------------------------------

    def _recv_internal(self, timeout: float | None) -> tuple[can.Message | None, bool]:
        with self._lock:
            if self._pending:
                return self._pending.popleft(), False
        if self.raise_on_recv is not None:
            raise self.raise_on_recv
        msg = self.inner.recv(timeout)
        if msg is None or self._bus_off:
            return None, False
        rng = self._rng
        if self.drop and rng.random() < self.drop:
            self.dropped += 1
            return None, False
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.corrupt and msg.dlc and rng.random() < self.corrupt:
            data = bytearray(msg.data)
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
            msg.data = data
            self.corrupted += 1
        if self.duplicate and rng.random() < self.duplicate:
            copy = can.Message(arbitration_id=msg.arbitration_id, data=bytes(msg.data), timestamp=msg.timestamp,
                               is_extended_id=msg.is_extended_id, channel=msg.channel)
            with self._lock:
                self._pending.append(copy)
            self.duplicated += 1
        return msg, False

    def send(self, msg: can.Message, timeout: float | None = None) -> None:
        if self._bus_off:
            raise can.CanOperationError("bus-off: cannot send")
        if self.raise_on_send is not None:
            raise self.raise_on_send
        self.inner.send(msg, timeout)

    def shutdown(self) -> None:
        super().shutdown()
        self.inner.shutdown()
