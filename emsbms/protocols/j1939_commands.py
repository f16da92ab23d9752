"""J1939 command helpers: acknowledgement matching and commands that wait for an address claim.

A J1939 ECU may send nothing but its claim until the claim holds, and a device known by NAME has
no address until its claim is seen. A command written in those first moments (``emsbms write``
starts an edge and writes at once) is not refused: `PendingCommands` hands it to the dispatcher,
which plans and sends it on the first tick with both addresses, and checks the answer on the
frames it receives; the writer's thread only waits for the outcome.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import can

from emsbms.errors import CommandRejected
from emsbms.protocols.base import AckCheck, CommandPlan
from emsbms.protocols.j1939_dm import AckControl, parse_ack
from emsbms.protocols.j1939_names import ADDRESS_GLOBAL, PGN_ACKNOWLEDGEMENT, pgn_and_destination
from emsbms.types import CommandStatus

Outcome = tuple[CommandStatus, str]


def ack_check(pgn: int, bms: int, edge: int) -> AckCheck:
    """Recognise the device's acknowledgement (PGN 0xE800) of `pgn`: ACK acks, anything else rejects."""

    def check(msg: can.Message) -> Outcome | None:
        if not msg.is_extended_id:
            return None
        got_pgn, da, sa = pgn_and_destination(msg.arbitration_id)
        if got_pgn != PGN_ACKNOWLEDGEMENT or sa != bms or da not in (edge, ADDRESS_GLOBAL):
            return None
        ack = parse_ack(msg.data)
        if ack is None or ack.pgn != pgn or ack.address not in (edge, ADDRESS_GLOBAL):
            return None
        if ack.control == AckControl.ACK:
            return CommandStatus.ACKED, f"ACK of PGN 0x{pgn:04X} from address 0x{bms:02X}"
        reason = ack.control.name if isinstance(ack.control, AckControl) else f"control byte {ack.control}"
        return CommandStatus.REJECTED, f"{reason} of PGN 0x{pgn:04X} from address 0x{bms:02X}"

    return check


@dataclass(eq=False)
class _Pending:
    plan_now: Callable[[], CommandPlan]
    done: threading.Event = field(default_factory=threading.Event)
    result: Outcome | None = None
    sent: bool = False
    ack: AckCheck | None = None


class PendingCommands:
    """Commands waiting for addresses; `run` and `offer` are called on the dispatcher thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._items: list[_Pending] = []

    def __bool__(self) -> bool:
        return bool(self._items)

    def execute_later(self, plan_now: Callable[[], CommandPlan]) -> Callable[[float], Outcome]:
        """A CommandPlan.execute that waits until the dispatcher has sent and settled the command."""

        def execute(timeout: float) -> Outcome:
            item = _Pending(plan_now)
            with self._lock:
                self._items.append(item)
            if item.done.wait(timeout) and item.result is not None:
                return item.result
            with self._lock:
                if item in self._items:
                    self._items.remove(item)
            if item.result is not None:  # settled just now
                return item.result
            if item.sent:
                return CommandStatus.TIMEOUT, f"no acknowledgement within {timeout:g} s"
            return CommandStatus.TIMEOUT, f"no J1939 address for the edge or the device within {timeout:g} s"

        return execute

    def run(self) -> list[can.Message]:
        """Plan and send every waiting command (the addresses are known); returns the frames."""
        with self._lock:
            waiting = [p for p in self._items if not p.sent]
        frames: list[can.Message] = []
        for item in waiting:
            try:
                plan = item.plan_now()
            except CommandRejected as e:
                self._finish(item, (CommandStatus.REJECTED, str(e)))
                continue
            frames.extend(plan.frames)
            item.sent = True
            if plan.ack is None:
                self._finish(item, (CommandStatus.SENT, "sent once the addresses were claimed; the profile"
                                                        " defines no acknowledgement"))
            else:
                item.ack = plan.ack
        return frames

    def offer(self, msg: can.Message) -> None:
        """Look for the acknowledgement of every sent command in a received frame."""
        with self._lock:
            sent = [p for p in self._items if p.ack is not None]
        for item in sent:
            assert item.ack is not None
            try:
                answer = item.ack(msg)
            except Exception as e:
                answer = CommandStatus.REJECTED, f"acknowledgement check failed: {e}"
            if answer is not None:
                self._finish(item, answer)

    def _finish(self, item: _Pending, outcome: Outcome) -> None:
        with self._lock:
            if item in self._items:
                self._items.remove(item)
        item.result = outcome
        item.done.set()
