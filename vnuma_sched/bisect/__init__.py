"""Bisect a kernel range by an eBPF scheduling metric (see drive.py)."""
