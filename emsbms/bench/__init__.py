"""Benchmarks: each scenario measures its baseline in the same process and run, and reports ratios."""
