"""Writable sysroot trees for the share tests: a 2-node, 4-vCPU 6.12 guest with cgroup
v2, IRQs and kernel threads, and a kernel-like cgroupfs (emulate_kernel)."""

import errno
from pathlib import Path

from tunables_trees import snapshot  # noqa: F401 - the tests compare trees with it

from vnuma_sched.errors import DataError
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import parse_cpulist

CG = "/sys/fs/cgroup"
PARKED = f"{CG}/vnuma-parked"
WQ = "/sys/devices/virtual/workqueue/cpumask"
MANAGED_IRQ = 25            # refuses affinity writes (EIO), as managed IRQs do
PF_KTHREAD, PF_NO_SETAFFINITY = 0x00200000, 0x04000000
# pid: (comm, flags, allowed CPUs, last CPU)
TASKS = {
    1: ("init", 0x400100, "0-3", 2),
    2: ("kthreadd", PF_KTHREAD, "0-3", 1),
    14: ("ksoftirqd/1", PF_KTHREAD | PF_NO_SETAFFINITY, "1", 1),
    15: ("kworker/u8:0", PF_KTHREAD | PF_NO_SETAFFINITY, "0-3", 3),
    40: ("kcompactd0", PF_KTHREAD, "0-1", 0),
    41: ("khugepaged", PF_KTHREAD, "2", 2),
    42: ("kpinned", PF_KTHREAD, "3", 3),        # one CPU, but movable: not per-CPU
}
# irq: (handler directories, smp_affinity_list, effective_affinity_list)
IRQS = {0: (("timer",), "0", "0"), 4: (("ttyS0",), "0-3", "1"),
        24: (("virtio0-config",), "0-3", "3"), 25: (("virtio1-req.0",), "1", "1")}


def _w(root, rel, text):
    p = Path(root) / rel.lstrip("/")
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def stat_line(pid, comm, flags, cpu):
    """A /proc/PID/stat line: flags are field 9, the last CPU field 39."""
    rest = ["S", "0", "0", "0", "0", "-1", str(flags)] + ["0"] * 29 + [str(cpu)] + ["0"] * 13
    return f"{pid} ({comm}) {' '.join(rest)}\n"


def build(root):
    root = Path(root)
    _w(root, "/proc/sys/kernel/osrelease", "6.12.117\n")
    _w(root, "/proc/mounts", "proc /proc proc rw 0 0\nsysfs /sys sysfs rw 0 0\n"
       f"cgroup2 {CG} cgroup2 rw,nosuid,nodev,noexec 0 0\n")
    _w(root, "/proc/meminfo", "MemTotal:       2097152 kB\n")
    for node, cpus in ((0, "0-1"), (1, "2-3")):
        base = f"/sys/devices/system/node/node{node}"
        _w(root, f"{base}/cpulist", cpus + "\n")
        _w(root, f"{base}/meminfo", f"Node {node} MemTotal:       1048576 kB\n")
        _w(root, f"{base}/distance", "10 21\n" if node == 0 else "21 10\n")
    _w(root, "/sys/devices/system/cpu/online", "0-3\n")
    _w(root, f"{CG}/cgroup.controllers", "cpuset cpu io memory pids\n")
    _w(root, f"{CG}/cgroup.subtree_control", "memory pids\n")
    _w(root, f"{CG}/cpuset.cpus.effective", "0-3\n")
    _w(root, f"{CG}/cpuset.cpus.isolated", "\n")
    _w(root, "/proc/sys/kernel/timer_migration", "1\n")
    _w(root, WQ, "f\n")
    _w(root, f"{WQ}_requested", "f\n")
    _w(root, "/proc/irq/default_smp_affinity", "f\n")
    for irq, (names, cpus, eff) in IRQS.items():
        _w(root, f"/proc/irq/{irq}/smp_affinity_list", cpus + "\n")
        _w(root, f"/proc/irq/{irq}/effective_affinity_list", eff + "\n")
        for name in names:
            (root / f"proc/irq/{irq}/{name}").mkdir(parents=True, exist_ok=True)
    for pid, (comm, flags, cpus, cpu) in TASKS.items():
        _w(root, f"/proc/{pid}/stat", stat_line(pid, comm, flags, cpu))
        _w(root, f"/proc/{pid}/status", f"Name:\t{comm}\nCpus_allowed_list:\t{cpus}\n")
    return root


def _cgroup_files(path):
    return {"cpuset.cpus": "\n", "cpuset.cpus.partition": "member\n",
            "cpuset.cpus.effective": "0-3\n", "cgroup.procs": ""}


def _exclude_from_workqueues(sysroot, real_write, isolated):
    """workqueue_unbound_exclude_cpumask(): the unbound mask is the requested one
    minus the CPUs of isolated partitions."""
    requested = int(sysroot.read(f"{WQ}_requested"), 16)
    cpus = parse_cpulist(sysroot.read(f"{PARKED}/cpuset.cpus")) if isolated else []
    mask = requested & ~sum(1 << c for c in cpus)
    real_write(sysroot, WQ, f"{mask or requested:x}\n")


def emulate_kernel(set_attr, invalid=None):
    """Writes act as the kernel's: a cgroup directory comes with its files and goes
    with them, "+name"/"-name" edit cgroup.subtree_control, the managed IRQ refuses
    with EIO, an isolated partition takes its CPUs out of the workqueue mask. ``invalid``: the partition reads back "isolated invalid (<invalid>)"."""
    real_write, real_mkdir, real_rmdir = SysRoot.write, SysRoot.mkdir, SysRoot.rmdir

    def write(self, abspath, value):
        value = str(value)
        if abspath == f"/proc/irq/{MANAGED_IRQ}/smp_affinity_list":
            raise DataError(abspath, "write failed: Input/output error", errno.EIO)
        if abspath.endswith("/cgroup.subtree_control"):
            names = self.read(abspath).split()
            word = value.strip()
            names = [n for n in names if n != word[1:]] + ([word[1:]] if word[0] == "+"
                                                           else [])
            value = " ".join(sorted(names)) + "\n"
        if abspath == f"{PARKED}/cpuset.cpus.partition" and value.strip() == "isolated" \
                and invalid:
            value = f"isolated invalid ({invalid})\n"
        real_write(self, abspath, value)
        if abspath == WQ:
            real_write(self, f"{WQ}_requested", value)
        if abspath == f"{PARKED}/cpuset.cpus.partition":
            _exclude_from_workqueues(self, real_write, value.strip() == "isolated")
        if abspath.startswith("/proc/irq/") and abspath.endswith("/smp_affinity_list"):
            first = parse_cpulist(value)[0]
            real_write(self, abspath.replace("/smp_", "/effective_"), f"{first}\n")
        if abspath == f"{PARKED}/cpuset.cpus":
            cpus = parse_cpulist(value) or [0, 1, 2, 3]
            real_write(self, f"{PARKED}/cpuset.cpus.effective", ",".join(map(str, cpus)))

    def mkdir(self, abspath):
        real_mkdir(self, abspath)
        if abspath.startswith(f"{CG}/"):
            for name, text in _cgroup_files(abspath).items():
                real_write(self, f"{abspath}/{name}", text)

    def rmdir(self, abspath):
        if abspath.startswith(f"{CG}/"):
            for name in _cgroup_files(abspath):
                self.remove(f"{abspath}/{name}")
        real_rmdir(self, abspath)

    set_attr(SysRoot, "write", write)
    set_attr(SysRoot, "mkdir", mkdir)
    set_attr(SysRoot, "rmdir", rmdir)
