"""Scheduler tunables: knob registry, profiles, write-ahead journal, engine."""
