"""Diagnostics around the edge: recording, replay and offline decoding of CAN logs, and the fuzzer."""
