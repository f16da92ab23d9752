"""Start-up scenario: the cold time of ``emsbms --help`` and of ``Edge.from_site`` with 10 devices.

Each is a fresh interpreter (``subprocess``), timed from outside, the median of several runs.
Baselines, run the same way in the same run: python-can's own CLI (``python -m can.logger
--help``) for the command line, and for the edge the bare libraries loading the same devices'
sources (cantools for the DBCs, canopen for the EDS, can-j1939 imported). A bare interpreter
(``python -c pass``) is reported too.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from emsbms.bench.fleet import device_tables
from emsbms.demo import site_toml

EDGE_CODE = "import sys; from emsbms import Edge; Edge.from_site(sys.argv[1])"
LIBS_CODE = """import sys, tomllib, json
import can, cantools, canopen, j1939
from emsbms.resources import data_dir
site = tomllib.loads(open(sys.argv[1]).read())
seen = set()
for d in site["device"]:
    if d["profile"] in seen:
        continue
    seen.add(d["profile"])
    source = json.loads((data_dir("profiles") / (d["profile"] + ".json")).read_text())["source"]
    if "dbc" in source:
        cantools.database.load_file(str(data_dir("dbc") / source["dbc"]))
    elif "eds" in source:
        canopen.objectdictionary.import_od(str(data_dir("eds") / source["eds"]))
"""


@dataclass
class StartupResult:
    """Median and fastest cold times, in ms, of one start-up and its baseline."""

    what: str
    runs: int
    median_ms: float
    min_ms: float
    baseline: str
    baseline_median_ms: float
    interpreter_ms: float  # python -c pass

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ratio_vs_baseline"] = round(self.median_ms / self.baseline_median_ms, 2)
        return d


def _cold(args: list[str], runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append((time.perf_counter() - t0) * 1000.0)
    return times


def _emsbms() -> list[str]:
    script = Path(sys.executable).with_name("emsbms")
    return [str(script)] if script.is_file() else [sys.executable, "-c", "from emsbms.cli import main; main()"]


def run(runs: int = 5) -> list[StartupResult]:
    """The start-up scenario."""
    py = sys.executable
    bare = statistics.median(_cold([py, "-c", "pass"], runs))
    out = []
    cli = _cold([*_emsbms(), "--help"], runs)
    can_cli = _cold([py, "-m", "can.logger", "--help"], runs)
    out.append(StartupResult("emsbms --help", runs, round(statistics.median(cli), 1), round(min(cli), 1),
                             "python -m can.logger --help", round(statistics.median(can_cli), 1), round(bare, 1)))
    with tempfile.TemporaryDirectory(prefix="emsbms-bench-") as tmp:
        site = Path(tmp) / "site.toml"
        buses = [f"can{i}" for i in range(4)]
        site.write_text(site_toml({
            "site": {"org": "bench", "name": "startup"},
            "bus": [{"name": b, "interface": "virtual", "channel": f"startup-{b}"} for b in buses],
            "device": device_tables(10, buses),
        }), encoding="utf-8")
        edge = _cold([py, "-c", EDGE_CODE, str(site)], runs)
        libs = _cold([py, "-c", LIBS_CODE, str(site)], runs)
    out.append(StartupResult("Edge.from_site, 10 devices", runs, round(statistics.median(edge), 1),
                             round(min(edge), 1), "cantools/canopen load the same sources",
                             round(statistics.median(libs), 1), round(bare, 1)))
    return out
