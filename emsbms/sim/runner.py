"""Run a simulated BMS for every device of a site, each on its device's bus."""

from __future__ import annotations

import logging
import zlib

from emsbms.sim import simulator_class
from emsbms.sim.base import DeviceSimulator
from emsbms.sim.battery import BatteryModel
from emsbms.site import Site, load_profiles

log = logging.getLogger(__name__)


def initial_soc(device: str) -> float:
    """The SoC (%) a simulated device starts at: 30-90 %, from its name."""
    return 30.0 + zlib.crc32(device.encode()) % 61


class Simulation:
    """Simulators for the devices of a site (all, or the named ones). A context manager."""

    def __init__(self, site: Site, devices: list[str] | None = None, seed: int = 0) -> None:
        self.site = site
        profiles = load_profiles(site)
        self.simulators: dict[str, DeviceSimulator] = {}
        for d in site.devices:
            if devices is not None and d.name not in devices:
                continue
            profile = profiles[d.name]
            # seed and starting SoC from the device name: identical devices show different values,
            # however the devices are grouped into Simulations
            model = BatteryModel(seed=seed + zlib.crc32(d.name.encode()), soc=initial_soc(d.name))
            cls = simulator_class(profile.protocol)
            self.simulators[d.name] = cls(d, profile, site.bus(d.bus), model)

    def start(self) -> Simulation:
        started: list[DeviceSimulator] = []
        try:
            for sim in self.simulators.values():
                sim.start()
                started.append(sim)
        except Exception:
            for sim in started:
                sim.stop()
            raise
        return self

    def stop(self) -> None:
        for sim in self.simulators.values():
            try:
                sim.stop()
            except Exception:
                log.exception("simulator %s failed to stop", sim.device.name)

    def __enter__(self) -> Simulation:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def inject(self, device: str, fault: str) -> None:
        self.simulators[device].inject(fault)

    def clear(self, device: str, fault: str) -> None:
        self.simulators[device].clear(fault)
