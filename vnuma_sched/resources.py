"""The data that ships with the package: bpf/, kconfig/, patches/, the tunables
profiles, the workload sources and contrib/ (the Grafana dashboard, Prometheus
alert rules and systemd unit of `serve`, kept inside the package).

bpf/, kconfig/ and patches/ stay at the top of the source tree (they are the
project's face) and the wheel carries them as ``vnuma_sched/data/<name>``
(setup.cfg maps them there). This module is the one place that knows both
homes: the installed package's copy first, else the source checkout's folder
(an editable install or a tree on PYTHONPATH).
"""

from importlib import resources
from pathlib import Path

SHIPPED = ("bpf", "kconfig", "patches")


def _package_path(package, *parts):
    """A real directory inside an installed package (bcc and make need paths)."""
    return Path(str(resources.files(package).joinpath(*parts)))


def shipped_dir(name):
    """The directory of one of SHIPPED, wherever this copy of the package lives."""
    if name not in SHIPPED:
        raise ValueError(f"not shipped data: {name}")
    installed = _package_path("vnuma_sched", "data", name)
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / name


def bpf_dir():
    return shipped_dir("bpf")


def kconfig_dir():
    return shipped_dir("kconfig")


def patches_dir():
    return shipped_dir("patches")


def guest_fragment():
    """The base guest kconfig fragment every build starts from."""
    return kconfig_dir() / "vnuma-guest.config"


def profiles_dir():
    """The built-in tunables profiles."""
    return _package_path("vnuma_sched.tunables", "profiles")


def contrib_dir():
    """The Grafana dashboard, the Prometheus alert rules and the systemd unit of
    `serve` (package data: the top of the source tree is the project's fixed face)."""
    return _package_path("vnuma_sched", "contrib")


def workload_source(name):
    """A workload's C source, e.g. 'omp_barrier.c'."""
    return _package_path("vnuma_sched.experiments.workloads", name)
