"""The shipped controllers; importing this package registers them (see emsbms.core.registry).

- "site-limits" (SAFETY): site channels ess0/... over parallel strings (site_limits.py);
- "soc-balance" (AUTO): a site current split over the strings so their SoCs converge (soc_balance.py);
- "limit-enforcement" (SAFETY): clamps or rejects setpoints above the live BMS limits (limit_enforcement.py).
"""

from __future__ import annotations

from emsbms.core.controllers.limit_enforcement import LimitEnforcement
from emsbms.core.controllers.site_limits import SiteLimits
from emsbms.core.controllers.soc_balance import SocBalance
from emsbms.core.registry import controller_class

__all__ = ["LimitEnforcement", "SiteLimits", "SocBalance", "controller_class"]
