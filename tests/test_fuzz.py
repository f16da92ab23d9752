"""Fuzzing: random frames never raise, are all counted, and never update channels unless they decode."""

from __future__ import annotations

import can
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from emsbms import load_profile
from emsbms.diag import fuzz
from emsbms.protocols.base import DeviceConfig
from emsbms.protocols.dbc import DbcAdapter

PROFILE = load_profile("pylon-lv")
PYLON = {m.frame_id: m for m in PROFILE.db.messages if m.name != "EMS_Keepalive"}
MIN_DLC = {m: (PROFILE.model.messages[m.name].min_dlc or 0) for m in PYLON.values()}  # strict where set


def test_fuzz_run_counts_every_frame_and_raises_nothing() -> None:
    r = fuzz.run(frames=6000, seed=7)
    assert r.exceptions == []
    assert r.counted_error_frames == r.error_frames_sent > 0
    assert r.counted_ok + r.counted_bad + r.counted_unknown + r.counted_error_frames == r.frames == 6000
    assert r.counted_bad > 0 and r.counted_unknown > 0 and r.counted_ok > 0
    assert r.remote > 0 and r.fd_frames > 0


@settings(max_examples=300, deadline=None)
@given(
    can_id=st.sampled_from(sorted(PYLON)),
    data=st.binary(min_size=0, max_size=64),
    remote=st.booleans(),
)
def test_pylon_frames_decode_exactly_or_are_refused(can_id: int, data: bytes, remote: bool) -> None:
    adapter = DbcAdapter(DeviceConfig("bms_0", "can0", "pylon-lv"), PROFILE)
    msg = can.Message(arbitration_id=can_id, data=None if remote else data, is_extended_id=False,
                      is_remote_frame=remote, is_fd=len(data) > 8, timestamp=1.0,
                      dlc=min(len(data), 8) if remote else None)
    out = adapter.on_frame(msg, 0)
    assert out is not None
    message = PYLON[can_id]
    if remote or len(data) < MIN_DLC[message]:  # excess bytes are ignored, shorter frames give what they hold
        assert out.error is not None and out.samples == ()
        return
    assert out.error is None
    expected = message.decode(data[:message.length], decode_choices=False, allow_truncated=True)
    by_signal = {ch.signal: (name, ch) for name, ch in PROFILE.model.channels.items() if ch.message == message.name}
    got = {s.address: s.value for s in out.samples}
    for signal, (name, ch) in by_signal.items():
        if signal not in expected:  # beyond a short frame's end: not updated
            assert f"bms_0/{name}" not in got
            continue
        value = expected[signal] * ch.scale + ch.offset
        value = abs(value) if ch.abs else value
        value = bool(value) if ch.type == "bool" else int(value) if ch.type == "int" else value
        assert got[f"bms_0/{name}"] == pytest.approx(value, abs=1e-9)


def test_fuzz_command_reports_counts_that_add_up() -> None:
    import json

    from typer.testing import CliRunner

    from emsbms.cli import app

    result = CliRunner().invoke(app, ["fuzz", "--frames", "3000", "--seed", "3", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["frames"] == 3000 and doc["exceptions"] == []
    assert doc["counted_ok"] + doc["counted_bad"] + doc["counted_unknown"] + doc["counted_error_frames"] == 3000
