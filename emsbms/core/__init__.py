"""The EMS core: the cycle (a process image, controllers, setpoints) and the command dispatcher.

See docs/core.md. The edge never imports this package.
"""
