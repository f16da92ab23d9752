"""The wheel carries profiles/, dbc/ and eds/, so `pip install .` outside the checkout finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_contains_the_data_folders(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), str(ROOT)],
        check=True, capture_output=True, timeout=300,
    )
    (wheel,) = tmp_path.glob("emsbms-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("profiles", "dbc", "eds"):
        shipped = {p.name for p in (ROOT / folder).iterdir() if p.is_file()}
        packed = {n.rsplit("/", 1)[1] for n in names if n.startswith(f"emsbms/_data/{folder}/")}
        assert shipped <= packed, f"{folder}: missing {shipped - packed}"
    assert "emsbms/py.typed" in names
    assert "emsbms/_data/profiles/pylon-lv.json" in names
