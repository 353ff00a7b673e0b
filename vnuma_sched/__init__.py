"""vnuma_sched: tools for Linux guests that run as virtual-NUMA VMs."""

__version__ = "0.1.0"
