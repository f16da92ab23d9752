"""A small battery model shared by every simulator: SoC integrates current, voltage follows SoC."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass
class BatteryModel:
    """A pack of `cells` series cells. Values are in SI units; current is positive when charging.

    Call `step(dt)` to advance time. Simulators read the normalized channel values from
    `channels()` and apply commands through the `set_*` methods.

    By default the current follows a slow sine load clamped by the current limits. With
    `follow_commands` the pack takes the current it is commanded: its charge limit when that is
    above 0, else minus its discharge limit (a converter per string, as the balancer assumes).
    `time_scale` fast-forwards the SoC: each `step(dt)` integrates `dt * time_scale` seconds of
    current (tests see SoC move in seconds instead of hours).
    """

    capacity_ah: float = 100.0
    cells: int = 16
    soc: float = 60.0  # %
    soh: float = 98.0  # %
    temperature: float = 25.0  # °C
    current: float = 0.0  # A, positive = charging
    charge_max_current: float = 50.0
    discharge_max_current: float = 80.0
    charge_max_voltage: float = 56.8
    discharge_min_voltage: float = 44.8
    balancing: bool = False
    over_temperature: bool = False
    faults: set[str] = field(default_factory=set)
    seed: int = 0
    follow_commands: bool = False
    time_scale: float = 1.0
    _t: float = 0.0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        self._rng.seed(self.seed)
        self.default_charge_max_current = self.charge_max_current
        self.default_discharge_max_current = self.discharge_max_current

    # -- physics ---------------------------------------------------------------------------

    @property
    def cell_voltage(self) -> float:
        """Open-circuit cell voltage of an LFP-like cell from SoC, plus the IR drop."""
        s = max(0.0, min(100.0, self.soc)) / 100.0
        ocv = 3.0 + 0.35 * s + 0.05 * math.tanh((s - 0.5) * 6)
        return ocv + self.current * 0.0005

    @property
    def voltage(self) -> float:
        return self.cell_voltage * self.cells

    def step(self, dt: float) -> None:
        """Advance the model by dt seconds."""
        self._t += dt
        if self.follow_commands:
            self.current = self.charge_max_current if self.charge_max_current > 0 else -self.discharge_max_current
        else:  # a slow sine load profile, clamped to the limits
            demand = 30.0 * math.sin(self._t / 20.0 + self.seed)
            self.current = max(-self.discharge_max_current, min(self.charge_max_current, demand))
        if (self.soc >= 100.0 and self.current > 0) or (self.soc <= 0.0 and self.current < 0):
            self.current = 0.0
        charged = self.current * dt * self.time_scale / 3600.0
        self.soc = max(0.0, min(100.0, self.soc + charged / self.capacity_ah * 100.0))
        target = 25.0 + abs(self.current) * 0.1 + (40.0 if self.over_temperature else 0.0)
        self.temperature += (target - self.temperature) * min(1.0, dt / 30.0)
        self.temperature += self._rng.uniform(-0.02, 0.02)
        if self.temperature >= 55.0:
            self.faults.add("OverTemperature")

    # -- commands --------------------------------------------------------------------------

    def set_charge_current(self, amps: float) -> None:
        self.charge_max_current = amps

    def set_discharge_current(self, amps: float) -> None:
        self.discharge_max_current = amps

    def set_charge_voltage(self, volts: float) -> None:
        self.charge_max_voltage = volts

    def set_balancing(self, enabled: bool) -> None:
        self.balancing = enabled

    def reset_faults(self) -> None:
        """Clear latched faults (an over-temperature that persists latches again)."""
        self.faults.clear()

    def restore_default_limits(self) -> None:
        """Fall back to the default current limits (e.g. when setpoints stop arriving)."""
        self.charge_max_current = self.default_charge_max_current
        self.discharge_max_current = self.default_discharge_max_current

    # -- readout ---------------------------------------------------------------------------

    def alarm_level(self, name: str) -> int:
        """0 ok, 1 warning, 2 alarm for the named alarm."""
        if name == "OverTemperature":
            if "OverTemperature" in self.faults or self.temperature >= 55.0:
                return 2
            return 1 if self.temperature >= 45.0 else 0
        return 2 if name in self.faults else 0

    def channels(self) -> dict[str, float]:
        """The normalized channel values of the pack (the same names profiles map to)."""
        spread = 0.004 + (0.0 if self.balancing else 0.006)
        cell = self.cell_voltage
        return {
            "Soc": self.soc,
            "Soh": self.soh,
            "Voltage": self.voltage,
            "Current": self.current,
            "Power": self.voltage * self.current,
            "Temperature": self.temperature,
            "ChargeMaxVoltage": self.charge_max_voltage,
            "DischargeMinVoltage": self.discharge_min_voltage,
            "ChargeMaxCurrent": self.charge_max_current,
            "DischargeMaxCurrent": self.discharge_max_current,
            "MinCellVoltage": cell - spread,
            "MaxCellVoltage": cell + spread,
            "MinCellTemperature": self.temperature - 1.5,
            "MaxCellTemperature": self.temperature + 1.5,
            "Capacity": self.capacity_ah,
            "AllowCharge": float(self.soc < 100.0 and "OverTemperature" not in self.faults),
            "AllowDischarge": float(self.soc > 0.0 and "OverTemperature" not in self.faults),
            "BalancingActive": float(self.balancing),
        }
