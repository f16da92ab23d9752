"""Benchmarks: each scenario measures its baseline in the same process and run, and reports ratios."""

from __future__ import annotations

from emsbms.errors import EmsbmsError


class BenchError(EmsbmsError):
    """A benchmark could not run as asked (a bad size, a helper process that failed)."""
