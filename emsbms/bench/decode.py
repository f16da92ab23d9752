"""Decode scenario: compiled decoders and the full adapter path against cantools on identical frames.

For every shipped profile with a message database (DBC or inline JSON) and the bench's load
profile, the same random frames are decoded five ways, interleaved round by round so that a
busy machine slows all of them alike:

- ``compiled``: ``CompiledMessage.decode`` (every signal, scaled, as a tuple);
- ``sampler``: the generated function the DBC adapter runs (payload to channel ``Sample`` list);
- ``adapter``: ``DbcAdapter.on_frame`` (lookup, samples, alarms, supervision, ``Output``);
- ``decode_message``: ``cantools.Database.decode_message(frame_id, data, decode_choices=False)``;
- ``Message.decode``: ``cantools Message.decode(data, decode_choices=False)``.

Times are the CPU time of the measuring thread (``time.thread_time``), the best of the rounds.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import can

from emsbms.bench.traffic import PROFILE_PATH
from emsbms.profile import list_shipped, load_profile
from emsbms.profile.codec import compile_message
from emsbms.protocols import adapter_class
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter


@dataclass
class DecodeResult:
    """Frames per second of each way on one profile's frames."""

    profile: str
    frames: int
    compiled_fps: float
    sampler_fps: float | None  # None: the profile's protocol has no DBC adapter path
    adapter_fps: float | None
    cantools_decode_message_fps: float
    cantools_message_decode_fps: float

    def ratio(self, fps: float | None) -> float | None:
        return None if fps is None else round(fps / self.cantools_decode_message_fps, 2)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_compiled_vs_decode_message"] = self.ratio(self.compiled_fps)
        d["ratio_compiled_vs_message_decode"] = round(self.compiled_fps / self.cantools_message_decode_fps, 2)
        d["ratio_sampler_vs_decode_message"] = self.ratio(self.sampler_fps)
        d["ratio_adapter_vs_decode_message"] = self.ratio(self.adapter_fps)
        return d


Way = tuple[Callable[[], None], int]
"""A way to decode: the function that decodes a frame set, and how many frames it holds."""


def _rates(ways: dict[str, Way], min_time: float) -> dict[str, float]:
    """Frames per second of each way: best of interleaved rounds."""
    best = dict.fromkeys(ways, float("inf"))
    spent = 0.0
    rounds = 0
    while spent < min_time or rounds < 3:
        for name, (fn, _) in ways.items():
            t0 = time.thread_time()
            fn()
            dt = time.thread_time() - t0
            spent += dt
            best[name] = min(best[name], dt)
        rounds += 1
    return {name: ways[name][1] / max(dt, 1e-9) for name, dt in best.items()}


def bench_profile(name: str, frames: int = 20_000, min_time: float = 0.3, seed: int = 1) -> DecodeResult | None:
    """Decode the same random frames of a profile every way; None if it has no message database."""
    profile = load_profile(name)
    if profile.db is None:
        return None
    rng = random.Random(seed)
    messages = [m for m in profile.db.messages if not m.is_multiplexed()]
    picks = [rng.choice(messages) for _ in range(frames)]
    work = [(m.frame_id, bytes(rng.getrandbits(8) for _ in range(m.length))) for m in picks]
    compiled = {m.frame_id: compile_message(m) for m in messages}
    by_id = {m.frame_id: m for m in messages}
    db = profile.db

    def run_compiled() -> None:
        for fid, data in work:
            compiled[fid].decode(data)

    def run_decode_message() -> None:
        for fid, data in work:
            db.decode_message(fid, data, decode_choices=False)

    def run_message_decode() -> None:
        for fid, data in work:
            by_id[fid].decode(data, decode_choices=False)

    ways: dict[str, Way] = {"compiled": (run_compiled, frames), "decode_message": (run_decode_message, frames),
                            "message_decode": (run_message_decode, frames)}
    if profile.protocol == "dbc":
        ways.update(_adapter_ways(name, profile, work, by_id))
    rates = _rates(ways, min_time)
    return DecodeResult(
        profile=profile.name,
        frames=frames,
        compiled_fps=round(rates["compiled"]),
        sampler_fps=round(rates["sampler"]) if "sampler" in rates else None,
        adapter_fps=round(rates["adapter"]) if "adapter" in rates else None,
        cantools_decode_message_fps=round(rates["decode_message"]),
        cantools_message_decode_fps=round(rates["message_decode"]),
    )


def _adapter_ways(name: str, profile: Any, work: list[tuple[int, bytes]], by_id: dict[int, Any]) -> dict[str, Way]:
    """The DBC adapter's sampler and its whole on_frame, on the frames of the device it receives."""
    adapter = adapter_class("dbc")(DeviceConfig("bench", "can0", name), profile)
    assert isinstance(adapter, DbcAdapter)
    adapter.start(0)
    routes = {r.compiled.frame_id: r for r in adapter._by_name.values()}
    mine = [(fid, data) for fid, data in work if fid in routes]  # frames the edge sends are not decoded
    msgs = [can.Message(arbitration_id=fid, data=data, is_extended_id=by_id[fid].is_extended_frame, timestamp=1.0)
            for fid, data in mine]
    def run_adapter() -> None:
        on_frame = adapter.on_frame
        for m in msgs:
            on_frame(m, 0)

    ways: dict[str, Way] = {"adapter": (run_adapter, len(mine))}
    if all(hasattr(r, "sample") for r in routes.values()):  # absent before the samplers (to measure "before")
        samplers = [(routes[fid].sample, data) for fid, data in mine]

        def run_sampler() -> None:
            for sample, data in samplers:
                sample(data, 1_000_000)

        ways["sampler"] = (run_sampler, len(mine))
    return ways


def run(frames: int = 20_000, min_time: float = 0.3) -> list[DecodeResult]:
    """The decode scenario over every shipped profile with a message database, and the load profile."""
    results = [bench_profile(n, frames, min_time) for n in [*list_shipped(), str(PROFILE_PATH)]]
    return [r for r in results if r is not None]
