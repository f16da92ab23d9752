"""Decode benchmark: compiled decoders and the full adapter path against cantools on identical frames."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import can

from emsbms.codec import compile_message
from emsbms.profile import list_shipped, load_profile
from emsbms.protocols import adapter_class
from emsbms.protocols.base import DeviceConfig


@dataclass
class DecodeResult:
    profile: str
    frames: int
    compiled_fps: float
    adapter_fps: float
    cantools_decode_message_fps: float
    cantools_message_decode_fps: float

    @property
    def ratio_vs_decode_message(self) -> float:
        return self.compiled_fps / self.cantools_decode_message_fps

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_compiled_vs_decode_message"] = round(self.ratio_vs_decode_message, 2)
        d["ratio_compiled_vs_message_decode"] = round(self.compiled_fps / self.cantools_message_decode_fps, 2)
        d["ratio_adapter_vs_decode_message"] = round(self.adapter_fps / self.cantools_decode_message_fps, 2)
        return d


def _rate(fn: Callable[[], None], count: int, min_time: float) -> float:
    """Frames per second of `fn` (which handles `count` frames), best of repeated runs."""
    best = float("inf")
    total = 0.0
    while total < min_time or best == float("inf"):
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        total += dt
        best = min(best, dt)
    return count / best


def bench_profile(name: str, frames: int = 20_000, min_time: float = 0.3, seed: int = 1) -> DecodeResult | None:
    """Decode the same random frames of a DBC/inline profile four ways; None if it has no DBC model."""
    profile = load_profile(name)
    if profile.db is None or profile.protocol != "dbc":
        return None
    rng = random.Random(seed)
    messages = [m for m in profile.db.messages if not m.is_multiplexed()]
    picks = [rng.choice(messages) for _ in range(frames)]
    payloads = [bytes(rng.getrandbits(8) for _ in range(m.length)) for m in picks]
    compiled = {m.frame_id: compile_message(m) for m in messages}
    work = [(m.frame_id, p) for m, p in zip(picks, payloads, strict=True)]
    db = profile.db

    def run_compiled() -> None:
        for fid, data in work:
            compiled[fid].decode(data)

    def run_decode_message() -> None:
        for fid, data in work:
            db.decode_message(fid, data, decode_choices=False)

    by_id = {m.frame_id: m for m in messages}

    def run_message_decode() -> None:
        for fid, data in work:
            by_id[fid].decode(data, decode_choices=False)

    adapter = adapter_class("dbc")(DeviceConfig("bench", "can0", name), profile)
    adapter.start(0)
    msgs = [can.Message(arbitration_id=fid, data=data, is_extended_id=by_id[fid].is_extended_frame,
                        timestamp=1.0) for fid, data in work]

    def run_adapter() -> None:
        on_frame = adapter.on_frame
        for m in msgs:
            on_frame(m, 0)

    return DecodeResult(
        profile=name,
        frames=frames,
        compiled_fps=_rate(run_compiled, frames, min_time),
        adapter_fps=_rate(run_adapter, frames, min_time),
        cantools_decode_message_fps=_rate(run_decode_message, frames, min_time),
        cantools_message_decode_fps=_rate(run_message_decode, frames, min_time),
    )


def run(frames: int = 20_000, min_time: float = 0.3) -> list[DecodeResult]:
    """The decode scenario over every shipped DBC and inline profile."""
    results = [bench_profile(n, frames, min_time) for n in list_shipped()]
    return [r for r in results if r is not None]
