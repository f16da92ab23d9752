"""The cloud scenarios of `python -m emsbms.bench` in quick mode, through a real Mosquitto, a real
PostgreSQL and a real `emsbms cloud serve`: structure and exact counts (nothing lost, every command
acked, every configuration seen), never timings.
"""

from __future__ import annotations

import json
from pathlib import Path

from emsbms.bench.__main__ import main
from emsbms.bench.cloud import CHANNELS, DEVICES
from emsbms.bench.cloud_ingest import PER_MESSAGE
from tests.cloud_fixtures import require_postgres
from tests.test_uplink_mqtt import require_mosquitto


def test_cloud_scenarios_quick_store_every_sample_and_answer_every_command(tmp_path: Path) -> None:
    require_mosquitto()
    require_postgres()
    out = tmp_path / "cloud.json"
    assert main(["--quick", "--only", "cloud-ingest", "cloud-api", "cloud-fleet", "--json", str(out)]) == 0
    doc = json.loads(out.read_text(encoding="utf-8"))

    inproc, one, two = doc["cloud-ingest"]
    assert (inproc["path"], inproc["samples"], inproc["stored"]) == ("in process", 20 * PER_MESSAGE, 20 * PER_MESSAGE)
    assert inproc["bare_per_s"] > 0 and inproc["bare_indexed_per_s"] > 0
    assert [(r["processes"], r["samples"], r["stored"]) for r in (one, two)] == \
        [(1, 20 * PER_MESSAGE, 20 * PER_MESSAGE), (2, 20 * PER_MESSAGE, 20 * PER_MESSAGE)]
    assert one["ratio_vs_one_process"] == 1.0

    commands, configs, queryable = doc["cloud-api"]
    assert (commands["what"], commands["count"], commands["ok"], commands["edge_commands"]) == \
        ("command via the API", 3, 3, 3)
    assert commands["baseline"] == "local edge.write (DBC echo)" and commands["baseline_p50_ms"] is not None
    assert (configs["count"], configs["ok"]) == (2, 2)
    assert (queryable["count"], queryable["ok"]) == (3, 3) and queryable["p99_ms"] is not None

    [fleet] = doc["cloud-fleet"]
    assert fleet["edges"] == 5 and fleet["samples_per_edge_s"] == DEVICES * CHANNELS
    assert fleet["samples_sent"] > 0 and fleet["samples_sent"] % (5 * DEVICES * CHANNELS) == 0
    assert (fleet["samples_stored"], fleet["missing"], fleet["data_loss_events"]) == (fleet["samples_sent"], 0, 0)
