"""Helpers of the SocketCAN tier: vcan interfaces, can-utils processes, site files and the emsbms CLI."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CLI_TIMEOUT_S = 240.0  # an emsbms process under TCG takes ~10-20 s just to import
_names = itertools.count()


def socketcan_unavailable() -> str | None:
    """Why this machine cannot run the tier, or None."""
    if not sys.platform.startswith("linux"):
        return f"SocketCAN needs Linux, found {sys.platform}"
    try:
        socket.socket(socket.AF_CAN, socket.SOCK_RAW, socket.CAN_RAW).close()
    except (OSError, AttributeError) as e:
        return (f"no SocketCAN in this kernel (socket(AF_CAN) failed: {getattr(e, 'strerror', None) or e}); "
                "tests/test_socketcan_tier.py runs these tests in a VM (tools/vm/run.py)")
    if os.geteuid() != 0:
        return "creating vcan interfaces needs root"
    missing = [t for t in ("ip", "cansend", "candump") if shutil.which(t) is None]
    if missing:
        return f"not found: {', '.join(missing)} (install can-utils and iproute2)"
    return None


def sh(*argv: str) -> None:
    """Run a short host command; fail the test with its stderr if it fails."""
    done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr.strip()}")


class Vcans:
    """vcan interfaces made for a test (names unique in this process), deleted afterwards."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def add(self, count: int = 1) -> list[str]:
        made = []
        for _ in range(count):
            name = f"emsvcan{next(_names)}"
            sh("ip", "link", "add", "dev", name, "type", "vcan")
            self.names.append(name)
            sh("ip", "link", "set", name, "up")
            made.append(name)
        return made

    def remove_all(self) -> None:
        for name in self.names:
            subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)
        self.names.clear()


# -- can-utils ---------------------------------------------------------------------------------


class CansendLoop:
    """`cansend` of a fixed set of frames, again and again, from a shell loop (cheap under TCG)."""

    def __init__(self, frames: list[tuple[str, str]], period_s: float = 0.1) -> None:
        sends = "; ".join(f"cansend {iface} {frame}" for iface, frame in frames)
        script = f"while :; do {sends}; sleep {period_s}; done"
        self.proc = subprocess.Popen(["sh", "-c", script], start_new_session=True,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(30)


@dataclass(frozen=True)
class DumpedFrame:
    """One line of `candump -L`: kernel timestamp (µs), interface, identifier, data."""

    timestamp_us: int
    iface: str
    can_id: int
    extended: bool
    data: bytes


def parse_candump_line(line: str) -> DumpedFrame:
    """`(1700000000.123456) vcan0 356#6F1483FFEA00` -> DumpedFrame."""
    stamp, iface, frame = line.split()
    seconds, micros = stamp.strip("()").split(".")
    ident, data = frame.split("#", 1)
    return DumpedFrame(int(seconds) * 1_000_000 + int(micros.ljust(6, "0")[:6]), iface, int(ident, 16),
                       len(ident) == 8, bytes.fromhex(data))


class Candump:
    """`candump -L` on some interfaces into a file; `stop()` returns the frames (kernel timestamps)."""

    def __init__(self, path: Path, ifaces: list[str]) -> None:
        self.path = path
        self._out = path.open("w")
        self.proc = subprocess.Popen(["candump", "-L", *ifaces], stdout=self._out, stderr=subprocess.PIPE)
        time.sleep(0.3)  # let it bind before anything is sent
        if self.proc.poll() is not None:
            _, err = self.proc.communicate()
            raise AssertionError(f"candump exited {self.proc.returncode}: {err.decode()}")

    def stop(self) -> list[DumpedFrame]:
        self.proc.send_signal(signal.SIGINT)  # candump flushes and exits on SIGINT
        self.proc.wait(30)
        self._out.close()
        return [parse_candump_line(x) for x in self.path.read_text().splitlines() if x.strip()]


# -- site files and the CLI ----------------------------------------------------------------------


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def write_site(path: Path, buses: dict[str, str], devices: list[dict[str, Any]]) -> Path:
    """A site file on socketcan buses: bus name -> vcan interface; devices as site-file tables."""
    lines = ['[site]', 'org = "test"', f'name = "{path.stem}"', ""]
    for name, iface in buses.items():
        lines += ["[[bus]]", f'name = "{name}"', 'interface = "socketcan"', f'channel = "{iface}"', ""]
    for d in devices:
        lines += ["[[device]]", *(f"{k} = {_toml_value(v)}" for k, v in d.items()), ""]
    path.write_text("\n".join(lines))
    return path


def emsbms_argv() -> list[str]:
    """The emsbms command of the running interpreter's environment."""
    script = Path(sys.executable).with_name("emsbms")
    if script.is_file():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from emsbms.cli import main; sys.exit(main())"]


def emsbms(*args: str, timeout: float = CLI_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    """Run `emsbms ARGS...` to completion."""
    return subprocess.run([*emsbms_argv(), *args], capture_output=True, text=True, timeout=timeout)


class Background:
    """A long-running emsbms command (simulate) whose stderr is collected on a thread."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen([*emsbms_argv(), *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        self.stderr: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr.append(line.rstrip("\n"))

    def wait_for_line(self, prefix: str, timeout: float = CLI_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(x.startswith(prefix) for x in self.stderr):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise AssertionError(f"no {prefix!r} line from emsbms (exit {self.proc.poll()}): {self.stderr}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


PYLON_NAMES = ["pylon_a", "pylon_b", "pylon_c"]


@dataclass
class Simulation:
    """One `emsbms simulate` process serving an acme-hv device and three identical pylon-lv units.

    The simulator seeds each unit's model (and starting SoC) from its device name: these names start
    far apart (90, 68 and 58 %), so the three buses carry different values under the same IDs.
    """

    hv_iface: str
    pylon_ifaces: list[str]
    pylon_names: list[str]
    process: Background
