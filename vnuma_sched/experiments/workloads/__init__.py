"""Workloads for A/B runs: shipped sources built at run time, and score parsers."""
