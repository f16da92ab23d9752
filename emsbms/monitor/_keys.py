"""The monitor's keyboard: single keys read from a terminal without echo, the page turner, and
`Controls`, the key handler: what each key does to the monitor's state (page shown, pause, the
`/` filter being typed, paging), without a terminal, so that tests drive it with bytes."""

from __future__ import annotations

import os
import select
import sys
import threading
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any

from emsbms.monitor._model import Show


class Key(Enum):
    """What a key press asks the monitor to do."""

    QUIT = "quit"
    PAUSE = "pause"
    NEXT = "next"
    PREVIOUS = "previous"
    FRAMES = "frames"
    EVENTS = "events"
    FILTER = "filter"
    BACK = "back"


SEQUENCES = {
    b"\x1b[C": Key.NEXT, b"\x1b[6~": Key.NEXT, b"\x1b[B": Key.NEXT,  # right, page down, down
    b"\x1b[D": Key.PREVIOUS, b"\x1b[5~": Key.PREVIOUS, b"\x1b[A": Key.PREVIOUS,  # left, page up, up
}
SINGLE = {b"q": Key.QUIT, b"Q": Key.QUIT, b" ": Key.PAUSE, b"p": Key.PAUSE, b"n": Key.NEXT, b"\t": Key.NEXT,
          b"b": Key.PREVIOUS, b"f": Key.FRAMES, b"e": Key.EVENTS, b"/": Key.FILTER, b"\x1b": Key.BACK,
          b"c": Key.BACK}

HINT = "q quit · space pause · f frames · e events · / filter · ←→ page"
"""Key hints, most important first: the header drops the last ones that do not fit."""

ENTER = (b"\r", b"\n")
ERASE = (b"\x7f", b"\x08")


def next_key(data: bytes, i: int) -> tuple[Key | None, int]:
    """The key at `data[i:]` (None for a byte no key uses) and how many bytes it took."""
    for seq, key in SEQUENCES.items():
        if data.startswith(seq, i):
            return key, len(seq)
    if data.startswith(b"\x1b[", i):  # another escape sequence (F keys, Home...): skip it whole
        end = i + 2
        while end < len(data) and not 0x40 <= data[end] <= 0x7E:
            end += 1
        return None, end + 1 - i
    return SINGLE.get(data[i : i + 1]), 1


def parse_keys(data: bytes) -> list[Key]:
    """The keys in what the terminal sent (escape sequences for the arrows and page keys)."""
    keys: list[Key] = []
    i = 0
    while i < len(data):
        key, n = next_key(data, i)
        if key is not None:
            keys.append(key)
        i += n
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

    def read(self, timeout: float) -> bytes:
        """Wait up to `timeout` seconds (less if a key comes or `stop` is set); what the terminal sent."""
        if self._fd is None:
            self.stop.wait(max(0.0, timeout))
            return b""
        try:
            ready, _, _ = select.select([self._fd], [], [], max(0.0, timeout))
        except InterruptedError:  # a signal (Ctrl-C sets `stop`)
            return b""
        if not ready:
            return b""
        return os.read(self._fd, 64)

    def wait(self, timeout: float) -> list[Key]:
        """`read`, as keys."""
        return parse_keys(self.read(timeout))


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


@dataclass
class Controls:
    """What the keys have set: the page shown, pause, the filter text, where the page is turned.

    `feed(data, now_s)` takes what the terminal sent. `f` and `e` show the frames and the event
    details (again, or Esc or `c`: back to the channels); `/` starts typing a filter (Enter keeps
    it, Esc clears it, Backspace erases); space pauses; the arrow and page keys turn the channel
    pages (holding the automatic turning), the frame pages, or scroll the events (← ↑ PgUp older).
    """

    pager: Pager
    show: Show = Show.CHANNELS
    paused: bool = False
    text: str = ""
    editing: bool = False
    scroll: int = 0
    quit: bool = False

    def feed(self, data: bytes, now_s: float) -> None:
        i = 0
        while i < len(data) and not self.quit:
            if self.editing:
                i += self._edit(data, i)
                continue
            key, n = next_key(data, i)
            i += n
            if key is not None:
                self.press(key, now_s)

    def _edit(self, data: bytes, i: int) -> int:
        """Type into the filter; how many bytes were used."""
        byte = data[i : i + 1]
        if byte in ENTER:
            self.editing = False
        elif byte == b"\x1b":
            key, n = next_key(data, i)
            if key is Key.BACK:  # Esc itself: clear and stop typing; an arrow key is ignored
                self.editing, self.text = False, ""
            return n
        elif byte in ERASE:
            self.text = self.text[:-1]
        elif 0x20 <= byte[0] < 0x7F:
            self.text += byte.decode("ascii")
        return 1

    def press(self, key: Key, now_s: float) -> None:
        if key is Key.QUIT:
            self.quit = True
        elif key is Key.PAUSE:
            self.paused = not self.paused
        elif key is Key.FILTER:
            self.editing, self.text = True, ""
        elif key in (Key.FRAMES, Key.EVENTS):
            wanted = Show.FRAMES if key is Key.FRAMES else Show.EVENTS
            self.show = Show.CHANNELS if self.show is wanted else wanted
            self.scroll = 0
        elif key is Key.BACK:
            if self.text:
                self.text = ""
            else:
                self.show, self.scroll = Show.CHANNELS, 0
        elif self.show is Show.CHANNELS:
            self.pager.turn(1 if key is Key.NEXT else -1, now_s)
        elif self.show is Show.FRAMES:
            self.scroll += 1 if key is Key.NEXT else -1
        else:  # the events: back in time with PREVIOUS, never past the newest
            self.scroll = max(0, self.scroll + (1 if key is Key.PREVIOUS else -1))

    def page(self, now_s: float) -> int:
        """The page of the shown page to draw at `now_s` (the channel pages turn by themselves)."""
        if self.show is not Show.CHANNELS:
            return self.scroll
        return self.pager.page if self.paused else self.pager.at(now_s)

    def status(self, hint: bool) -> str:
        """The header's right side: the filter being typed, PAUSED, or the key hints."""
        if self.editing:
            return f"filter /{self.text}▏ Enter keeps · Esc clears"
        if self.paused:
            return "PAUSED · space resumes"
        return HINT if hint else ""
