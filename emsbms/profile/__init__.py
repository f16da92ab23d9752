"""Device profile engine: the profile model, loading, validation and compilation."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emsbms.profile.loader import list_shipped, load_profile, profile_json_schema
    from emsbms.profile.models import Profile, ProfileModel

_WHERE = {"list_shipped": "loader", "load_profile": "loader", "profile_json_schema": "loader",
          "Profile": "models", "ProfileModel": "models"}


def __getattr__(name: str) -> Any:  # PEP 562: `emsbms.profile.checks` is imported without pydantic or cantools
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"emsbms.profile.{_WHERE[name]}"), name)


__all__ = ["Profile", "ProfileModel", "list_shipped", "load_profile", "profile_json_schema"]
