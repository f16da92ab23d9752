"""The simulator contract: one simulated BMS on one bus, with its own bus connection."""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, ClassVar

from emsbms.protocols.base import DeviceConfig
from emsbms.sim.battery import BatteryModel
from emsbms.site import BusConfig

if TYPE_CHECKING:
    from emsbms.profile.models import Profile


class DeviceSimulator(ABC):
    """A simulated BMS. It opens its own python-can connection to the bus (as a real device
    would be a separate node), runs its battery model, sends at the profile's rates and
    honours commands.

    Faults every simulator supports: ``overtemp`` (the pack heats up until the over-temperature
    alarm trips) and ``silent`` (it stops sending and answering). Protocols add their own.
    """

    protocol: ClassVar[str]
    FAULTS: ClassVar[tuple[str, ...]] = ("overtemp", "silent")

    def __init__(self, device: DeviceConfig, profile: Profile, bus: BusConfig, model: BatteryModel) -> None:
        self.device = device
        self.profile = profile
        self.bus_config = bus
        self.model = model
        self.faults: set[str] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        """The simulator's loop (runs until ``self._stop`` is set); started by `_start_loop`."""
        raise NotImplementedError

    def _start_loop(self) -> None:
        """Start `_run` on a thread of its own."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"emsbms-sim-{self.device.name}", daemon=True)
        self._thread.start()

    def _stop_loop(self) -> None:
        """Stop `_run` and wait for its thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2.0)
            self._thread = None

    @abstractmethod
    def start(self) -> None:
        """Connect to the bus and start sending."""

    @abstractmethod
    def stop(self) -> None:
        """Stop every thread and close the bus connection."""

    def inject(self, fault: str) -> None:
        """Turn a fault on."""
        if fault not in self.FAULTS:
            raise ValueError(f"unknown fault {fault!r}; expected one of {', '.join(self.FAULTS)}")
        self.faults.add(fault)
        if fault == "overtemp":
            self.model.over_temperature = True

    def clear(self, fault: str) -> None:
        """Turn a fault off."""
        self.faults.discard(fault)
        if fault == "overtemp":
            self.model.over_temperature = False

    @property
    def silent(self) -> bool:
        return "silent" in self.faults
