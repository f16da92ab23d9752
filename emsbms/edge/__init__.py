"""Device abstraction: the edge runs a site's buses and adapters as one registry of channels.

``Edge`` wires them; ``dispatch`` feeds each bus's frames to its adapters, ``registry`` owns every
channel's reading, ``commands`` carries writes to the bus and back, ``events`` and ``store`` keep
what happened, ``watch`` hot-activates profiles that change in the edge database.
"""

from emsbms.edge.edge import Edge

__all__ = ["Edge"]
