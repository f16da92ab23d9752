"""Device profile engine: the profile model, loading, validation and compilation."""

from emsbms.profile.loader import list_shipped, load_profile, profile_json_schema
from emsbms.profile.models import Profile, ProfileModel

__all__ = ["Profile", "ProfileModel", "list_shipped", "load_profile", "profile_json_schema"]
