"""Parking vCPUs inside a guest (vnuma-sched share)."""
