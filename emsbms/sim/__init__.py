"""Simulated BMS units: a battery model and one simulator per protocol, looked up by name."""

from __future__ import annotations

import importlib

from emsbms.sim.base import DeviceSimulator

SIMULATORS: dict[str, tuple[str, str]] = {
    "dbc": ("emsbms.sim.dbc_sim", "DbcSimulator"),
    "canopen": ("emsbms.sim.canopen_sim", "CanopenSimulator"),
    "j1939": ("emsbms.sim.j1939_sim", "J1939Simulator"),
}


def simulator_class(protocol: str) -> type[DeviceSimulator]:
    """The simulator class of a protocol name."""
    module_name, class_name = SIMULATORS[protocol]
    cls: type[DeviceSimulator] = getattr(importlib.import_module(module_name), class_name)
    return cls


__all__ = ["SIMULATORS", "DeviceSimulator", "simulator_class"]
