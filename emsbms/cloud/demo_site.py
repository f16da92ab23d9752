"""The cloud demo's pieces that need no running service: what is missing, and the edge's site files.

The cloud layer may not import the edge demo (`emsbms.demo`, a tool), so the demo site comes from
`emsbms demo --write-site FILE`, run as a child process, and is rewritten here: the organisation and
site of the cloud, its own multicast ports, and an [uplink] with the credentials of `POST /sites`.
"""

from __future__ import annotations

import os
import pwd
import random
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from emsbms.cloud.pgserver import postgres_path
from emsbms.errors import ConfigError
from emsbms.uplink.broker import DYNSEC_PLUGIN, dynsec_plugin_path, mosquitto_path


def missing() -> list[tuple[str, str]]:
    """(what is missing, the Debian package that has it) for each program the demo needs and lacks."""
    found: list[tuple[str, str]] = []
    if mosquitto_path() is None:
        found.append(("mosquitto (the MQTT broker; $EMSBMS_MOSQUITTO, PATH or /usr/sbin)", "mosquitto"))
    if dynsec_plugin_path() is None:
        found.append((f"Mosquitto's dynamic security plugin {DYNSEC_PLUGIN}", "mosquitto"))
    for tool in ("mosquitto_ctrl", "mosquitto_passwd"):
        if shutil.which(tool) is None:
            found.append((f"{tool} (on PATH)", "mosquitto-clients"))
    if postgres_path() is None:
        found.append(("PostgreSQL's initdb ($EMSBMS_POSTGRES_BIN or /usr/lib/postgresql/*/bin)", "postgresql-15"))
    elif os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            found.append(("the user postgres (initdb refuses root)", "postgresql-15"))
    return found


def missing_message(lacking: list[tuple[str, str]]) -> str:
    packages = " ".join(dict.fromkeys(package for _, package in lacking))
    return (f"the cloud demo needs what is not installed: {'; '.join(what for what, _ in lacking)}."
            f" Install it with: apt-get install {packages} (nothing was started)")


def emsbms_command() -> list[str]:
    """How to run `emsbms` as a child process: the script beside this Python, or the module."""
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


def demo_tables(folder: Path, org: str, site: str) -> dict[str, Any]:
    """The edge demo's site (`emsbms demo --write-site`) as `org`/`site`, on multicast ports of its own."""
    path = folder / "demo-site.toml"
    done = subprocess.run([*emsbms_command(), "demo", "--write-site", str(path)], capture_output=True, text=True,
                          timeout=120)
    if done.returncode != 0:
        raise ConfigError(f"emsbms demo --write-site {path} exited with {done.returncode}: {done.stderr.strip()}")
    tables = tomllib.loads(path.read_text(encoding="utf-8"))
    # one edge process: the demo's buses are light, and fewer processes are left to stop
    tables["site"] = {**tables.get("site", {}), "org": org, "name": site, "workers": "off"}
    base = random.SystemRandom().randrange(43000, 47900)
    for i, bus in enumerate(tables.get("bus", [])):
        if "port" in bus:
            bus["port"] = base + i  # two demos (or a demo and the tests) never share a bus
    return tables


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise ConfigError(f"demo site: cannot write {type(value).__name__} {value!r} as TOML")


def site_toml(tables: dict[str, Any]) -> str:
    """A site document as TOML: [site] and [uplink], then the arrays of tables ([[bus]], [[device]], ...)."""
    lines: list[str] = []
    for key, value in tables.items():
        if isinstance(value, dict):
            lines += [f"[{key}]", *(f"{k} = {_toml_value(v)}" for k, v in value.items()), ""]
    for key, value in tables.items():
        if isinstance(value, list):
            for table in value:
                lines += [f"[[{key}]]", *(f"{k} = {_toml_value(v)}" for k, v in table.items()), ""]
    return "\n".join(lines)
