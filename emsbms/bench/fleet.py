"""The device-count scenario's fleet: many BMS of mixed protocols on 4 buses, sent from another process.

On each bus the devices are: a J1939 HVESS (slot 0) and a CiA 418 CANopen module (slot 1), run
by their real simulators because their protocols are conversations (address claims, SDO, NMT);
and DBC-family devices in every other slot (ACME LV byte-map, ACME HV and Pylontech LV, with
id_offsets that keep their IDs apart), up to 32 devices per bus. The DBC devices' frames are the
``DbcSimulator``'s own (its message plan, its encoding of a ``BatteryModel``, at the profile's
periods) but all the devices of a bus are sent through one bus connection by one thread.
Simulating each of them with its own connection would make every simulator read every frame of
its bus: with 30 devices per bus that costs more than this machine has (measured: 16 real
simulators of 128 devices already took 1.2 cores, two thirds of it kernel time fanning
datagrams out to their sockets), while the edge, the thing measured, sees the same frames either way.

Run as a module it is the fleet process::

    python -m emsbms.bench.fleet --site site.toml --duration 60

It prints ``ready`` once everything runs and stops after the duration or on SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import Any

import can

from emsbms.bench import BenchError
from emsbms.profile.models import Profile
from emsbms.protocols.base import DeviceConfig
from emsbms.sim.battery import BatteryModel
from emsbms.sim.dbc_sim import DbcSimulator
from emsbms.sim.runner import Simulation
from emsbms.site import BusConfig, Site, load_profiles, load_site

J1939_NAME = 0x9000A0005CA01F3A
# per bus: (profile, how many fit, id_offset of the n-th): IDs stay clear of each other and of
# CANopen node 1 (its TPDO, RPDO, SDO, heartbeat and EMCY COB-IDs)
DBC_KINDS: tuple[tuple[str, int, tuple[int, ...]], ...] = (
    # 0x610.. 0x6F8, then 0x010.. 0x078 (a bridge may shift IDs down as well as up)
    ("acme-lv-bytemap", 22, tuple(0x10 * k for k in range(15)) + tuple(-0x600 + 0x10 * k for k in range(7))),
    ("acme-hv", 6, (0x00, 0x20, 0x40, 0x80, 0xA0, 0xC0)),  # 0x4A0.. 0x571, never on 0x501/0x502 (RPDO4)
    ("pylon-lv", 2, (0x000, 0x100)),  # 0x305/0x351.., 0x405/0x451..
)
PROTOCOL_SLOTS = {0: "j1939", 1: "canopen"}
PER_BUS_MAX = len(PROTOCOL_SLOTS) + sum(n for _, n, _ in DBC_KINDS)
CLAIMS_SETTLE_S = 1.0


def device_tables(count: int, buses: list[str]) -> list[dict[str, Any]]:
    """`count` devices dealt round-robin over `buses`, each bus holding the mix described above."""
    if count > PER_BUS_MAX * len(buses):
        raise BenchError(f"at most {PER_BUS_MAX * len(buses)} devices on {len(buses)} buses, asked for {count}")
    slot = dict.fromkeys(buses, 0)
    used: dict[tuple[str, str], int] = {}
    turn = dict.fromkeys(buses, 0)
    out: list[dict[str, Any]] = []
    for i in range(count):
        bus = buses[i % len(buses)]
        k = slot[bus]
        slot[bus] += 1
        d: dict[str, Any] = {"name": f"dev{i}", "bus": bus}
        kind = PROTOCOL_SLOTS.get(k)
        if kind == "j1939":
            d.update(profile="j1939-hvess", source_address=0x80, j1939_name=J1939_NAME + i)
        elif kind == "canopen":
            d.update(profile="cia418-bms", node_id=1)
        else:
            while True:  # the next DBC kind in turn that still has room on this bus
                profile, room, offsets = DBC_KINDS[turn[bus] % len(DBC_KINDS)]
                turn[bus] += 1
                n = used.get((bus, profile), 0)
                if n < room:
                    used[(bus, profile)] = n + 1
                    d.update(profile=profile, id_offset=offsets[n])
                    break
        out.append(d)
    return out


class DbcFleet:
    """Sends the frames of many DBC-profile devices, one thread and one connection per bus."""

    def __init__(self, site: Site, devices: list[DeviceConfig], profiles: dict[str, Profile]) -> None:
        self.site = site
        self.sims: dict[str, list[DbcSimulator]] = {}
        for i, d in enumerate(devices):
            model = BatteryModel(seed=i, soc=40.0 + (17.0 * i) % 50)
            self.sims.setdefault(d.bus, []).append(DbcSimulator(d, profiles[d.name], site.bus(d.bus), model))
        self.sent = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for bus_name, sims in self.sims.items():
            t = threading.Thread(target=self._run, args=(self.site.bus(bus_name), sims), daemon=True,
                                 name=f"emsbms-fleet-{bus_name}")
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(3.0)

    def _run(self, config: BusConfig, sims: list[DbcSimulator]) -> None:
        bus = can.Bus(**config.can_kwargs())
        # (due time, simulator, outgoing message plan) of every message of every device
        plans = [(sim, out) for sim in sims for out in sim._outgoing]
        start = last_step = time.monotonic()
        due = [start + (j % 50) * 0.002 for j in range(len(plans))]  # spread the first frames over 100 ms
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                if now - last_step >= 0.1:
                    for sim in sims:
                        sim.model.step(now - last_step)
                    last_step = now
                values: dict[int, dict[str, float]] = {}
                for j, (sim, out) in enumerate(plans):
                    if now < due[j]:
                        continue
                    due[j] = max(due[j] + out.period_s, now)
                    channels = values.get(id(sim))
                    if channels is None:
                        channels = values[id(sim)] = sim.model.channels()
                    bus.send(can.Message(arbitration_id=out.arbitration_id, data=sim.encode(out, channels),
                                         is_extended_id=out.message.is_extended_frame))
                    self.sent += 1
                self._stop.wait(max(0.0, min(due) - time.monotonic()) if due else 0.05)
        finally:
            bus.shutdown()


class Fleet:
    """The whole fleet of a site: real simulators for CANopen and J1939, the DbcFleet for the others."""

    def __init__(self, site: Site) -> None:
        profiles = load_profiles(site)
        dbc = [d for d in site.devices if profiles[d.name].protocol == "dbc"]
        others = [d.name for d in site.devices if profiles[d.name].protocol != "dbc"]
        self.simulation = Simulation(site, devices=others)
        self.dbc = DbcFleet(site, dbc, profiles)

    def start(self) -> Fleet:
        self.simulation.start()
        self.dbc.start()
        return self

    def stop(self) -> None:
        self.dbc.stop()
        self.simulation.stop()


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m emsbms.bench.fleet")
    parser.add_argument("--site", required=True)
    parser.add_argument("--duration", type=float, default=60.0)
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    fleet = Fleet(load_site(args.site)).start()
    try:
        # J1939 simulators claim their addresses (250 ms) as they start: an edge that starts during a
        # claim misses it, and one that asks while a claim runs gets no answer; let the claims settle
        time.sleep(CLAIMS_SETTLE_S)
        sys.stdout.write("ready\n")
        sys.stdout.flush()
        stop.wait(args.duration)
    finally:
        fleet.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
