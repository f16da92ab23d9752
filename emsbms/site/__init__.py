"""The site: its TOML file (organisation, buses, devices) and the adapters built from it.

Both the edge and the edge database start from here, so the checks a site must pass live here once.
"""

from emsbms.can.config import BusConfig
from emsbms.site.build import build_adapters, load_profiles
from emsbms.site.model import Site, load_site, parse_site

__all__ = ["BusConfig", "Site", "build_adapters", "load_profiles", "load_site", "parse_site"]
