"""Commands from the cloud: parsed, deduplicated in a SQLite ledger, refused when late, run through Edge.write.

The transport hands `CommandHandler.handle` the raw payload of ``ems/{org}/{site}/cmd`` and publishes
what it returns on ``cmd/result`` (None: nothing to publish now). The edge is the safety authority:
execution goes through `Edge.write`, which validates against the active profile as a local write does.

At most once: the id is committed to the ledger as ``running`` *before* the command executes. A
repeated id is answered with the first result; an id still running in this process returns None
(its result follows); an id left ``running`` by an earlier process (the edge stopped between
executing and recording) is answered ``unknown`` and never executed again.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from emsbms.alarms.engine import AlarmError, Transition, ack_target
from emsbms.errors import EmsbmsError
from emsbms.types import CommandResult

MAX_TIMEOUT_S = 2.0
"""The longest an edge waits for a device's acknowledgement (less when the deadline is nearer)."""

RETENTION_US = 24 * 3600 * 1_000_000
"""How long after its deadline a command's ledger row is kept (then a repeat is `expired` anyway)."""

MAX_HORIZON_US = 3600 * 1_000_000
"""A deadline further ahead than this is refused: the ledger must outlive every deadline it answers for."""


class ResultStatus(StrEnum):
    """What `cmd/result` reports."""

    ACKED = "acked"
    SENT = "sent"
    REJECTED = "rejected"
    TIMEOUT = "timeout"
    EXPIRED = "expired"
    UNKNOWN = "unknown"  # the edge restarted while this id ran: it may have been sent; not run again


class Writer(Protocol):
    """What the handler needs of an Edge."""

    def write(self, address: str, value: float, timeout: float = 2.0) -> CommandResult: ...


class Acker(Protocol):
    """What the handler needs of the alarm runner (`emsbms.alarms.runner.AlarmRunner`)."""

    def ack(self, rule: str, device: str, now_us: int) -> Transition: ...


@dataclass(frozen=True)
class Command:
    """One valid command message: ``{"id", "address", "value", "deadline_us"}``."""

    id: str
    address: str
    value: float
    deadline_us: int


@dataclass(frozen=True)
class Outcome:
    """The body of one `cmd/result` message."""

    id: str | None
    status: ResultStatus
    detail: str
    took_us: int
    address: str | None = None
    value: float | None = None

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"id": self.id, "status": self.status.value, "detail": self.detail,
                                "took_us": self.took_us, "address": self.address, "value": self.value}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Malformed(EmsbmsError):
    """A command payload that is not a valid command; `id` is set when it was readable."""

    def __init__(self, message: str, id: str | None = None) -> None:
        super().__init__(message)
        self.id = id


def _found(value: object) -> str:
    text = repr(value) if not isinstance(value, bool) else str(value).lower()
    return f"{type(value).__name__} {text[:40]}"


def parse_command(payload: bytes) -> Command:
    """The command in `payload`, or Malformed naming the key, what was expected and what was found."""
    try:
        data = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise Malformed(f"cmd: expected a JSON object, found text that is not JSON ({e})") from None
    if not isinstance(data, dict):
        raise Malformed(f"cmd: expected a JSON object, found {_found(data)}")
    raw_id = data.get("id")
    if not isinstance(raw_id, str) or not raw_id:
        found = "nothing" if "id" not in data else _found(raw_id)
        raise Malformed(f"cmd: key 'id': expected a non-empty string, found {found}")
    address = data.get("address")
    if not isinstance(address, str) or "/" not in address:
        found = "nothing" if "address" not in data else _found(address)
        raise Malformed(f"cmd {raw_id}: key 'address': expected 'device/Channel', found {found}", raw_id)
    value = data.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float):
        found = "nothing" if "value" not in data else _found(value)
        raise Malformed(f"cmd {raw_id}: key 'value': expected a number, found {found}", raw_id)
    try:
        number = float(value)
    except OverflowError:
        raise Malformed(f"cmd {raw_id}: key 'value': expected a finite number, found an integer too large",
                        raw_id) from None
    if not math.isfinite(number):
        raise Malformed(f"cmd {raw_id}: key 'value': expected a finite number, found {value!r}", raw_id)
    deadline = data.get("deadline_us")
    if isinstance(deadline, bool) or not isinstance(deadline, int):
        found = "nothing" if "deadline_us" not in data else _found(deadline)
        raise Malformed(f"cmd {raw_id}: key 'deadline_us': expected an integer (µs since the epoch), found {found}",
                        raw_id)
    unknown = sorted(set(data) - {"id", "address", "value", "deadline_us"})
    if unknown:
        raise Malformed(f"cmd {raw_id}: unknown key {unknown[0]!r}; known: id, address, value, deadline_us", raw_id)
    return Command(raw_id, address, number, deadline)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS uplink_commands (
    id TEXT PRIMARY KEY,
    session TEXT NOT NULL,
    state TEXT NOT NULL,          -- running | done
    received_us INTEGER NOT NULL,
    deadline_us INTEGER NOT NULL,
    result TEXT                   -- the cmd/result JSON once done
)
"""


class Ledger:
    """The ids seen and their results, in SQLite (table ``uplink_commands``), committed at each step."""

    def __init__(self, path: str | Path, retention_us: int = RETENTION_US) -> None:
        self.session = uuid.uuid4().hex
        self.retention_us = retention_us
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
        # WAL, as the run log keeps the edge database: a commit is one append, not a journal and two fsyncs.
        # NORMAL: a commit survives the process's death (SIGKILL included); a power cut may lose the last
        # ones, and a command redelivered after the reboot is refused by its deadline, long past by then.
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(_SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def claim(self, cmd: Command, now_us: int) -> tuple[str, str | None, bool] | None:
        """Record `cmd` as running in this session (None), or the existing (state, result, ours) row."""
        with self._lock:
            c = self._conn
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM uplink_commands WHERE deadline_us < ? AND state = 'done'",
                          [now_us - self.retention_us])
                row = c.execute("SELECT state, result, session FROM uplink_commands WHERE id = ?", [cmd.id]).fetchone()
                if row is None:
                    c.execute("INSERT INTO uplink_commands (id, session, state, received_us, deadline_us)"
                              " VALUES (?, ?, 'running', ?, ?)", [cmd.id, self.session, now_us, cmd.deadline_us])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return None if row is None else (str(row[0]), row[1], row[2] == self.session)

    def finish(self, id: str, result: bytes) -> None:
        """Record the result of `id` (committed before it is published)."""
        with self._lock:
            self._conn.execute("UPDATE uplink_commands SET state = 'done', result = ? WHERE id = ?",
                               [result.decode("utf-8"), id])

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM uplink_commands").fetchone()[0])


class CommandHandler:
    """``handle(payload, now_us) -> bytes | None``: the `cmd/result` to publish for one `cmd` message.

    `now_us` is the wall-clock time in µs when the message arrived (the clock of deadlines). Never
    raises for a bad payload: it is answered ``rejected``.
    """

    def __init__(self, edge: Writer, ledger_path: str | Path, max_timeout_s: float = MAX_TIMEOUT_S,
                 retention_us: int = RETENTION_US) -> None:
        self.edge = edge
        self.ledger = Ledger(ledger_path, retention_us)
        self.max_timeout_s = max_timeout_s
        self.alarms: Acker | None = None  # set when an alarm runner runs: `alarms/<rule>/<device>/Ack` goes there

    def close(self) -> None:
        self.ledger.close()

    def handle(self, payload: bytes, now_us: int, clock: Callable[[], int] | None = None) -> bytes | None:
        """Run one command message at most once; `clock()` (µs, default wall clock) times the edge's work."""
        tick = clock or _wall_us
        try:
            cmd = parse_command(payload)
        except Malformed as e:
            return Outcome(e.id, ResultStatus.REJECTED, f"{e}; nothing sent", 0).to_json()
        if cmd.deadline_us > now_us + MAX_HORIZON_US:
            return self._once(cmd, now_us, ResultStatus.REJECTED,
                              f"cmd {cmd.id}: key 'deadline_us': expected at most {MAX_HORIZON_US // 1_000_000} s"
                              f" ahead, found {(cmd.deadline_us - now_us) / 1e6:.0f} s; nothing sent")
        existing = self.ledger.claim(cmd, now_us)
        if existing is not None:
            state, result, ours = existing
            if state == "done" and result is not None:
                return result.encode("utf-8")
            if ours:
                return None  # still running here: its result follows
            out = Outcome(cmd.id, ResultStatus.UNKNOWN,
                          "the edge restarted while this command ran: it may or may not have reached the device;"
                          " not executed again", 0, cmd.address, cmd.value).to_json()
            self.ledger.finish(cmd.id, out)
            return out
        return self._execute(cmd, now_us, tick)

    def _once(self, cmd: Command, now_us: int, status: ResultStatus, detail: str) -> bytes | None:
        """A refusal recorded in the ledger like a result (a repeat is answered the same)."""
        existing = self.ledger.claim(cmd, now_us)
        if existing is not None:
            _state, result, _ = existing
            return result.encode("utf-8") if result is not None else None
        out = Outcome(cmd.id, status, detail, 0, cmd.address, cmd.value).to_json()
        self.ledger.finish(cmd.id, out)
        return out

    def _execute(self, cmd: Command, now_us: int, tick: Callable[[], int]) -> bytes:
        left_s = (cmd.deadline_us - now_us) / 1e6
        if left_s <= 0:
            out = Outcome(cmd.id, ResultStatus.EXPIRED,
                          f"cmd {cmd.id}: arrived {-left_s:.3f} s after its deadline; not executed",
                          0, cmd.address, cmd.value).to_json()
            self.ledger.finish(cmd.id, out)
            return out
        started = int(tick())
        try:
            if cmd.address.startswith("alarms/"):
                status, detail = self._ack(cmd, now_us)
            else:
                result = self.edge.write(cmd.address, cmd.value, timeout=min(self.max_timeout_s, left_s))
                status, detail = ResultStatus(result.status.value), result.detail
        except EmsbmsError as e:
            status, detail = ResultStatus.REJECTED, f"{e}; nothing sent"
        except Exception as e:  # never let one command take the transport down
            status, detail = ResultStatus.REJECTED, f"{type(e).__name__}: {e}"
        out = Outcome(cmd.id, status, detail, max(0, int(tick()) - started), cmd.address, cmd.value).to_json()
        self.ledger.finish(cmd.id, out)
        return out


    def _ack(self, cmd: Command, now_us: int) -> tuple[ResultStatus, str]:
        """An alarm acknowledgement: ``alarms/<rule>/<device>/Ack`` with value 1."""
        rule, device = ack_target(cmd.address)
        if cmd.value != 1:
            return ResultStatus.REJECTED, f"cmd {cmd.id}: key 'value': expected 1 (acknowledge), found {cmd.value:g}"
        if self.alarms is None:
            return ResultStatus.REJECTED, f"no alarm '{rule}/{device}': no alarm rules run on this edge"
        try:
            t = self.alarms.ack(rule, device, now_us)
        except AlarmError as e:
            return ResultStatus.REJECTED, str(e)
        return ResultStatus.ACKED, f"alarm '{t.id}' acknowledged: {t.state.value}"


def _wall_us() -> int:
    return time.time_ns() // 1000
