"""A real Mosquitto broker in a folder of its own, for tests and benchmarks.

`Broker` writes a config, a password file (`mosquitto_passwd -b`) and an ACL file into its folder,
binds 127.0.0.1 on a free port with `set_tcp_nodelay true`, and starts, stops (SIGTERM, saving its
persistence file) or kills (SIGKILL) the `mosquitto` process. Each user gets `topic readwrite` lines
for its own topic filters only, so the broker refuses every other topic.

With `dynsec_admin=(username, password)` the listener uses Mosquitto's dynamic security plugin
instead of the password and ACL files: `mosquitto_ctrl dynsec init` writes its JSON with that one
admin client, and clients, roles and ACLs are then managed live over `$CONTROL/dynamic-security/v1`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from emsbms.errors import EmsbmsError


class BrokerError(EmsbmsError):
    """Mosquitto is missing, or did not start."""


@dataclass(frozen=True)
class BrokerUser:
    """One login: its password and the topic filters it may read and write."""

    name: str
    password: str
    topics: tuple[str, ...]


def mosquitto_path() -> str | None:
    """The `mosquitto` executable: $EMSBMS_MOSQUITTO when set, else on PATH or in /usr/sbin (Debian), or None."""
    if override := os.environ.get("EMSBMS_MOSQUITTO"):
        return override if os.path.isfile(override) and os.access(override, os.X_OK) else None
    return shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")


DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib",
            "/usr/lib/x86_64-linux-gnu/mosquitto", "/usr/lib/mosquitto")


def dynsec_plugin_path() -> Path | None:
    """The dynamic security plugin that ships with Mosquitto 2.0, or None."""
    return next((Path(d) / DYNSEC_PLUGIN for d in LIB_DIRS if (Path(d) / DYNSEC_PLUGIN).is_file()), None)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Broker:
    """A Mosquitto on 127.0.0.1:`port`, with password authentication and per-user ACLs (or dynsec)."""

    folder: Path
    users: list[BrokerUser] = field(default_factory=list)
    port: int = field(default_factory=free_port)
    persistence: bool = True
    tls: tuple[Path, Path, Path] | None = None  # (CA file, certificate, key): the listener speaks mqtts://
    dynsec_admin: tuple[str, str] | None = None  # (username, password): the dynamic security plugin, no files
    process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)

    @property
    def url(self) -> str:
        return f"{'mqtts' if self.tls else 'mqtt'}://127.0.0.1:{self.port}"

    def write_files(self) -> Path:
        exe = mosquitto_path()
        passwd = shutil.which("mosquitto_passwd")
        if exe is None or passwd is None:
            raise BrokerError("mosquitto and mosquitto_passwd are not installed (Debian packages mosquitto and"
                              " mosquitto-clients)")
        self.folder.mkdir(parents=True, exist_ok=True)
        auth = self._dynsec_lines() if self.dynsec_admin is not None else self._file_lines(passwd)
        config = self.folder / "mosquitto.conf"
        lines = [
            "user root" if os.geteuid() == 0 else "",  # root would drop to `mosquitto`, who cannot read these files
            f"listener {self.port} 127.0.0.1",
            "set_tcp_nodelay true",
            *([f"cafile {self.tls[0]}", f"certfile {self.tls[1]}", f"keyfile {self.tls[2]}"] if self.tls else []),
            "allow_anonymous false",
            "max_queued_messages 0",  # an offline persistent subscriber keeps every QoS 1 message (tests count them)
            "max_inflight_messages 0",  # ... and an online one gets each at once, not from a queue in memory
            *auth,
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {self.folder}/",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
        ]
        config.write_text("\n".join(line for line in lines if line) + "\n", encoding="utf-8")
        return config

    def _file_lines(self, passwd: str) -> list[str]:
        passwords = self.folder / "passwords"
        passwords.write_text("", encoding="utf-8")
        for user in self.users:
            subprocess.run([passwd, "-b", str(passwords), user.name, user.password], check=True,
                           capture_output=True)
        acl = self.folder / "acl"
        acl.write_text("".join(
            f"user {u.name}\n" + "".join(f"topic readwrite {t}\n" for t in u.topics) + "\n" for u in self.users
        ), encoding="utf-8")
        return [f"password_file {passwords}", f"acl_file {acl}"]

    def _dynsec_lines(self) -> list[str]:
        assert self.dynsec_admin is not None
        if self.users:
            raise BrokerError("Broker: give either users (password and ACL files) or dynsec_admin, not both")
        plugin = dynsec_plugin_path()
        ctrl = shutil.which("mosquitto_ctrl")
        if plugin is None or ctrl is None:
            raise BrokerError(f"the dynamic security plugin ({DYNSEC_PLUGIN}) or mosquitto_ctrl is not installed"
                              " (Debian packages mosquitto and mosquitto-clients)")
        state = self.folder / "dynamic-security.json"  # the plugin rewrites it on every change
        state.unlink(missing_ok=True)
        user, password = self.dynsec_admin
        done = subprocess.run([ctrl, "dynsec", "init", str(state), user, password], capture_output=True, text=True)
        if done.returncode != 0:
            raise BrokerError(f"mosquitto_ctrl dynsec init {state} failed: {done.stderr.strip() or done.stdout}")
        return [f"plugin {plugin}", f"plugin_opt_config_file {state}"]

    def start(self, timeout: float = 20.0) -> None:
        """Start the broker (writing its files the first time) and wait until it accepts connections."""
        config = self.folder / "mosquitto.conf"
        if not config.exists():
            config = self.write_files()
        exe = mosquitto_path()
        assert exe is not None
        log = (self.folder / "mosquitto.log").open("ab")
        self.process = subprocess.Popen([exe, "-c", str(config)], stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = (self.folder / "mosquitto.log").read_text(encoding="utf-8", errors="replace")
                raise BrokerError(f"mosquitto exited with {self.process.returncode}: {text[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise BrokerError(f"mosquitto did not accept connections on 127.0.0.1:{self.port} within {timeout:g} s")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        """Stop the broker with `sig` (SIGTERM: a clean stop; SIGKILL: a crash) and wait for it."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
