"""The core bench scenario: a quick run through the bench's entry point."""

from __future__ import annotations

import json
from pathlib import Path

from emsbms.bench.__main__ import main


def test_core_scenario_quick_counts_the_setpoints_and_sends_only_the_first_cycles(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    assert main(["--quick", "--only", "core", "--json", str(out)]) == 0
    [figures] = json.loads(out.read_text(encoding="utf-8"))["core"]
    assert (figures["devices"], figures["setpoints"]) == (8, 16)  # both current commands of every string
    assert figures["writes"] == 16  # the first cycle's; later cycles change nothing, so nothing is sent again
    assert figures["channels"] == 8 * (24 + 1 + 2) + 6 + 8  # strings; ess0: 5 limits and Strings; core: 2 + 6 counts
    assert figures["cycle_vs_snapshot"] == round(figures["cycle_us"] / figures["snapshot_us"], 1)
