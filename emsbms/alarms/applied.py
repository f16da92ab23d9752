"""The alarm rules of the configuration applied from the cloud, in the edge database (table
``alarm_rules``): written by `emsbms.uplink.config` in the configuration's transaction, read at start."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Any

RULES_SCHEMA = """CREATE TABLE IF NOT EXISTS alarm_rules (
    key TEXT PRIMARY KEY CHECK (key = 'applied'), version TEXT NOT NULL, rules TEXT NOT NULL
)"""
"""The rules of the configuration applied from the cloud (JSON), written in the config's transaction."""


def stored_rules(db_path: str | Path) -> list[dict[str, Any]] | None:
    """The `rules` of the configuration last applied from the cloud, or None (none applied with rules)."""
    if not Path(db_path).is_file():
        return None
    with closing(sqlite3.connect(db_path)) as conn:
        found = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alarm_rules'")
        if found.fetchone() is None:
            return None
        row = conn.execute("SELECT rules FROM alarm_rules WHERE key = 'applied'").fetchone()
    return None if row is None else list(json.loads(row[0]))
