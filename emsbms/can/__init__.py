"""CAN stack access: python-can buses read on their own threads, bus health, fault injection.

Knows nothing of profiles, protocols or the edge.
"""
