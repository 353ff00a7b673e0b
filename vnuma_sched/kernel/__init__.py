"""Kernel trees, the patch series, kconfig, builds, verification and guests."""
