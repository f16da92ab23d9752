"""The command path: validate, encode, send, and wait for the acknowledgement the profile defines."""

from __future__ import annotations

import logging
import math
import numbers
import threading

from emsbms.edge.dispatch import AckWaiter, Dispatcher, now_us
from emsbms.errors import BusError, CommandRejected
from emsbms.protocols.base import Adapter, CommandPlan
from emsbms.types import CommandResult, CommandStatus, CommState

log = logging.getLogger(__name__)

WHY = {
    CommState.WAITING: "never heard since start",
    CommState.STALE: "its data is not fresh: a supervised message is overdue",
    CommState.LOST: "silent past its timeout",
}
"""Why a device in each state takes no command (the detail of the refusal)."""


def shown(value: object) -> str:
    """A value for a refusal message, short even for a huge integer."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**20:
        bits = value.bit_length()
        size = f"{len(str(abs(value)))} digits" if bits < 10_000 else f"{bits} bits"
        return f"{'a negative' if value < 0 else 'an'} integer of {size}"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def as_number(address: str, value: object) -> tuple[float, str | None]:
    """(the value as a float, None) or (a float stand-in, why the value is refused).

    A command value must be a finite number that a float holds: 10**400 (float() raises
    OverflowError), NaN, infinities, strings and None are refused before anything else.
    """
    if isinstance(value, numbers.Real):
        try:
            number = float(value)
        except OverflowError:
            negative = isinstance(value, int) and value < 0  # ints are what floats cannot hold
            big = -math.inf if negative else math.inf  # a float stand-in for the result
            return big, f"{address}: expected a finite number, found {shown(value)}"
        if math.isfinite(number):
            return number, None
        return number, f"{address}: expected a finite number, found {shown(value)}"
    return math.nan, f"{address}: expected a number, found {shown(value)}"


class CommandChannel:
    """Serialises the commands of one device and carries each through to its outcome.

    A command goes only to a device whose CommState is OK (heard since start, every supervised
    message fresh); any other state is refused with nothing sent.
    """

    def __init__(self, adapter: Adapter, dispatcher: Dispatcher) -> None:
        self.adapter = adapter
        self.dispatcher = dispatcher
        self._serial = threading.Lock()

    def refusal(self) -> str | None:
        """Why the device takes no command now (None: it is OK). Call under the dispatcher's lock."""
        state = self.adapter.comm_state
        if state is CommState.OK:
            return None
        return (f"{self.adapter.device.name} is {state.value} ({WHY.get(state, 'not OK')}):"
                f" commands need CommState OK; nothing sent")

    def write(self, name: str, value: float, timeout: float) -> CommandResult:
        address = self.adapter.prefix + name
        number, bad = as_number(address, value)
        if bad is not None:
            return CommandResult(address, number, CommandStatus.REJECTED, bad + "; nothing sent")
        with self._serial:
            d = self.dispatcher
            started = now_us()
            with d.lock:
                refused = self.refusal()
                if refused is not None:
                    return CommandResult(address, number, CommandStatus.REJECTED, refused)
                try:
                    plan = self.adapter.plan_command(name, number, started)
                except CommandRejected as e:
                    return CommandResult(address, number, CommandStatus.REJECTED, str(e))
                waiter = AckWaiter(plan.ack) if plan.ack is not None else None
                if waiter is not None:
                    d.waiters.append(waiter)
            try:
                result = self._carry_out(address, plan, waiter, timeout)
            finally:
                if waiter is not None:
                    with d.lock:
                        d.waiters.remove(waiter)
            with d.lock:
                out = self.adapter.command_done(plan, result, now_us())
            d._emit(out)
            log.info("command %s = %s: %s %s", address, plan.value, result.status.value, result.detail)
            return result

    def _carry_out(
        self, address: str, plan: CommandPlan, waiter: AckWaiter | None, timeout: float
    ) -> CommandResult:
        if plan.execute is not None:
            try:
                status, detail = plan.execute(timeout)
            except Exception as e:
                status, detail = CommandStatus.REJECTED, f"{type(e).__name__}: {e}"
            return CommandResult(address, plan.value, status, detail)
        sent = []
        for frame in plan.frames:
            try:
                self.dispatcher.runner.send(frame)
            except BusError as e:
                return CommandResult(address, plan.value, CommandStatus.REJECTED, f"not sent: {e}")
            sent.append(f"{frame.arbitration_id:X}#{bytes(frame.data).hex().upper()}")
        frames = tuple(sent)
        if waiter is None:
            detail = plan.detail or "sent; the profile defines no acknowledgement"
            return CommandResult(address, plan.value, CommandStatus.SENT, detail, frames)
        if not waiter.done.wait(timeout):
            return CommandResult(address, plan.value, CommandStatus.TIMEOUT,
                                 f"no acknowledgement within {timeout:g} s", frames)
        assert waiter.result is not None
        status, detail = waiter.result
        return CommandResult(address, plan.value, status, detail, frames)
