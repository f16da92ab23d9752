"""Where the shipped data lives: profiles/, dbc/ and eds/, installed or in a checkout."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


def data_dir(kind: str) -> Path:
    """Return the folder of shipped `kind` files ("profiles", "dbc" or "eds").

    An installed wheel carries them in ``emsbms/_data/<kind>``; a source checkout (or an
    editable install) has them beside the package at the repository root.
    """
    installed = _PACKAGE / "_data" / kind
    if installed.is_dir():
        return installed
    return _PACKAGE.parent / kind
