"""Simulated BMS units: a battery model and one simulator per protocol."""
