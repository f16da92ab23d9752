"""The command path: validate, encode, send, and wait for the acknowledgement the profile defines."""

from __future__ import annotations

import logging
import threading

from emsbms.edge.dispatch import AckWaiter, Dispatcher, now_us
from emsbms.errors import BusError, CommandRejected
from emsbms.protocols.base import Adapter, CommandPlan
from emsbms.types import CommandResult, CommandStatus, CommState

log = logging.getLogger(__name__)


class CommandChannel:
    """Serialises the commands of one device and carries each through to its outcome."""

    def __init__(self, adapter: Adapter, dispatcher: Dispatcher) -> None:
        self.adapter = adapter
        self.dispatcher = dispatcher
        self._serial = threading.Lock()

    def write(self, name: str, value: float, timeout: float) -> CommandResult:
        address = self.adapter.prefix + name
        with self._serial:
            d = self.dispatcher
            started = now_us()
            with d.lock:
                if self.adapter.comm_state is CommState.LOST:
                    return CommandResult(address, value, CommandStatus.REJECTED,
                                         f"{self.adapter.device.name} is LOST: nothing sent")
                try:
                    plan = self.adapter.plan_command(name, value, started)
                except CommandRejected as e:
                    return CommandResult(address, value, CommandStatus.REJECTED, str(e))
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
