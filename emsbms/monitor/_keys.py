"""The monitor's keyboard: single keys read from a terminal without echo, and the page turner."""

from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any


class Key(Enum):
    """What a key press asks the monitor to do."""

    QUIT = "quit"
    PAUSE = "pause"
    NEXT = "next"
    PREVIOUS = "previous"


SEQUENCES = {
    b"\x1b[C": Key.NEXT, b"\x1b[6~": Key.NEXT, b"\x1b[B": Key.NEXT,  # right, page down, down
    b"\x1b[D": Key.PREVIOUS, b"\x1b[5~": Key.PREVIOUS, b"\x1b[A": Key.PREVIOUS,  # left, page up, up
}
SINGLE = {b"q": Key.QUIT, b"Q": Key.QUIT, b" ": Key.PAUSE, b"p": Key.PAUSE, b"n": Key.NEXT, b"\t": Key.NEXT,
          b"b": Key.PREVIOUS}

HINT = "q quit · space pause · ←→ page"


def parse_keys(data: bytes) -> list[Key]:
    """The keys in what the terminal sent (escape sequences for the arrows and page keys)."""
    keys: list[Key] = []
    i = 0
    while i < len(data):
        for seq, key in SEQUENCES.items():
            if data.startswith(seq, i):
                keys.append(key)
                i += len(seq)
                break
        else:
            key_or_none = SINGLE.get(data[i : i + 1])
            if key_or_none is not None:
                keys.append(key_or_none)
            i += 1
    return keys


class KeyReader:
    """Reads keys from stdin in cbreak mode (no echo, no line buffering; Ctrl-C still stops)
    while used as a context manager, if stdin is a terminal; otherwise `wait` only waits."""

    def __init__(self, stop: threading.Event, enabled: bool = True) -> None:
        self.stop = stop
        self._fd: int | None = None
        self._saved: list[Any] | None = None
        self._enabled = enabled

    @property
    def active(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> KeyReader:
        if not self._enabled or not sys.stdin.isatty() or os.name != "posix":
            return self
        import termios
        import tty

        fd = sys.stdin.fileno()
        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                return self  # in the background: changing the terminal would stop the process (SIGTTOU)
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        except (termios.error, OSError):
            return self
        self._fd = fd
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        if self._fd is not None and self._saved is not None:
            import termios

            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
        self._fd = None

    def wait(self, timeout: float) -> list[Key]:
        """Wait up to `timeout` seconds (less if a key comes or `stop` is set); the keys pressed."""
        if self._fd is None:
            self.stop.wait(max(0.0, timeout))
            return []
        try:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        except InterruptedError:  # a signal (Ctrl-C sets `stop`)
            return []
        if not ready:
            return []
        return parse_keys(os.read(self._fd, 64))


@dataclass
class Pager:
    """Which page of channels to show: the next one every `period_s`; a key turns it at once
    and holds the automatic turning for `hold_s`. Pages count modulo the page count, so -1 is
    the last."""

    started_s: float
    period_s: float = 5.0
    hold_s: float = 30.0
    page: int = 0
    _turned_s: float = field(default=0.0, init=False, repr=False)
    _by_key: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self._turned_s = self.started_s

    def at(self, now_s: float) -> int:
        """The page to show at `now_s` (monotonic seconds)."""
        if now_s - self._turned_s >= (self.hold_s if self._by_key else self.period_s):
            self.page += 1
            self._turned_s, self._by_key = now_s, False
        return self.page

    def turn(self, step: int, now_s: float) -> int:
        """Turn `step` pages (negative: back) by key."""
        self.page += step
        self._turned_s, self._by_key = now_s, True
        return self.page
