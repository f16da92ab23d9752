"""Print the profile JSON Schema, generated from the models (``python -m emsbms.profile.schema``)."""

from __future__ import annotations

import json
import sys

from emsbms.profile.loader import profile_json_schema


def schema_text() -> str:
    """The schema as stable, indented JSON text (what docs/profile.schema.json holds)."""
    schema = profile_json_schema()
    schema["$id"] = "https://emsbms.dev/profile.schema.json"
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    sys.stdout.write(schema_text())
