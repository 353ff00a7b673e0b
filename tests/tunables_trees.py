"""Writable sysroot trees for the tunables tests: one per kernel layout."""

import errno
from pathlib import Path

from vnuma_sched.errors import DataError
from vnuma_sched.system.sysroot import SysRoot

DEBUG = "sys/kernel/debug"
FEATURE_FILES = (f"/{DEBUG}/sched/features", f"/{DEBUG}/sched_features")
FEATURES = ("WA_IDLE WA_WEIGHT WA_BIAS NO_NEXT_BUDDY TTWU_QUEUE NONTASK_CAPACITY "
            "SIS_UTIL")
SERIES_FEATURES = "NO_NUMA_WAKE_PREV"   # a patched kernel's defaults


def _w(root, rel, text):
    p = Path(root) / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def _domains(root, cpus=4, names=("MC", "NUMA")):
    for cpu in range(cpus):
        for i, name in enumerate(names):
            d = f"{DEBUG}/sched/domains/cpu{cpu}/domain{i}"
            _w(root, f"{d}/name", f"{name}\n")
            _w(root, f"{d}/imbalance_pct", "117\n" if name == "MC" else "125\n")
            _w(root, f"{d}/cache_nice_tries", "1\n")
            _w(root, f"{d}/max_newidle_lb_cost", "8123\n")


CONFIG = "CONFIG_SCHED_SMT=y\nCONFIG_SCHED_CLUSTER=y\nCONFIG_SCHED_MC=y\n"


def _nodes(root, cpus, nodes=2):
    """Node cpulists (consecutive halves) and one package per node."""
    per = max(1, cpus // nodes)
    for node in range(nodes):
        first, last = node * per, min(cpus, (node + 1) * per) - 1
        _w(root, f"sys/devices/system/node/node{node}/cpulist", f"{first}-{last}\n")
        for cpu in range(first, last + 1):
            _w(root, f"sys/devices/system/cpu/cpu{cpu}/topology/physical_package_id",
               f"{node}\n")


def build(root, layout, cpus=4):
    """layout: '5.4', '6.1', '6.12', '6.12-patched', '6.12-lockdown', '6.12-nodebugfs'.
    ``cpus``: how many cpuN sched-domain directories (MC, then NUMA) debugfs has."""
    root = Path(root)
    release = {"5.4": "5.4.0-150-generic", "6.1": "6.1.0-26-amd64"}.get(layout, "6.12.117")
    _w(root, "proc/sys/kernel/osrelease", release + "\n")
    _w(root, f"boot/config-{release}", CONFIG)
    _nodes(root, cpus)
    _w(root, "proc/cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/vda1 quiet\n")
    _w(root, "proc/sys/kernel/numa_balancing", "1\n")
    _w(root, "proc/sys/kernel/sched_schedstats", "0\n")
    _w(root, "sys/module/haltpoll/parameters/guest_halt_poll_ns", "200000\n")
    _w(root, "sys/module/haltpoll/parameters/guest_halt_poll_allow_shrink", "Y\n")
    if layout == "5.4":
        for name, value in (("migration_cost_ns", 500000), ("min_granularity_ns", 3000000),
                            ("latency_ns", 24000000), ("wakeup_granularity_ns", 4000000)):
            _w(root, f"proc/sys/kernel/sched_{name}", f"{value}\n")
        _w(root, f"{DEBUG}/sched_features", FEATURES + "\n")
        return root
    if layout != "6.12-nodebugfs":
        _w(root, f"{DEBUG}/sched/migration_cost_ns", "500000\n")
        features = FEATURES + (" " + SERIES_FEATURES if layout == "6.12-patched" else "")
        _w(root, f"{DEBUG}/sched/features", features + "\n")
        if layout == "6.1":
            for name, value in (("min_granularity_ns", 3000000), ("latency_ns", 24000000),
                                ("wakeup_granularity_ns", 4000000)):
                _w(root, f"{DEBUG}/sched/{name}", f"{value}\n")
        else:
            _w(root, f"{DEBUG}/sched/base_slice_ns", "3000000\n")
        _domains(root, cpus)
    if layout == "6.12-lockdown":
        _w(root, "sys/kernel/security/lockdown", "none [integrity] confidentiality\n")
    if layout == "6.12-patched":
        _w(root, "sys/module/kvm_guest/parameters/idle_halt_hint", "auto\n")
    return root


def snapshot(root):
    """Every file under root (path -> bytes), for byte-identical comparisons."""
    root = Path(root)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _features_after(text, written, path):
    """The features file after the kernel took ``written`` ("NAME" or "NO_NAME")."""
    name = written.removeprefix("NO_")
    tokens = text.split()
    if name not in tokens and f"NO_{name}" not in tokens:
        raise DataError(path, "write failed: Invalid argument", errno.EINVAL)
    return " ".join(written if t in (name, f"NO_{name}") else t for t in tokens) + "\n"


def emulate_features(set_attr=setattr):
    """Make a tree's sched features file take writes as the kernel does: "NAME" or
    "NO_NAME" sets one feature and leaves the others listed (a plain file would be
    overwritten by the one word). ``set_attr``: monkeypatch.setattr in a test."""
    real = SysRoot.write

    def write(self, abspath, value):
        if abspath in FEATURE_FILES:
            value = _features_after(self.read(abspath), str(value).strip(), abspath)
        real(self, abspath, value)

    set_attr(SysRoot, "write", write)
