"""What parking needs from the running kernel, read through a SysRoot: cgroup v2 with
the cpuset controller and partitions, the IRQs, the unbound kernel threads. Shared
by the planner, 'share status' and doctor. Pure reads."""

import re
from dataclasses import dataclass

from vnuma_sched.errors import DataError
from vnuma_sched.system import facts, tasks
from vnuma_sched.system.topology import (
    CPU_ONLINE,
    packages_of_cpus,
    parse_cpulist,
    read_topology,
)
from vnuma_sched.tunables import knobs as K

PARTITION_SINCE = (5, 15)       # PRS_ISOLATED ("isolated") in kernel/cgroup/cpuset.c
MOUNT_HINT = f"mount -t cgroup2 none {K.CGROUP_FS}"


@dataclass(frozen=True)
class Fact:
    name: str
    ok: bool
    detail: str


def online(sysroot):
    try:
        return parse_cpulist(sysroot.read(CPU_ONLINE))
    except ValueError as err:
        raise DataError(CPU_ONLINE, f"malformed cpulist: {err}") from err


def cgroup_facts(sysroot):
    """cgroup v2 at /sys/fs/cgroup, the cpuset controller, cpuset partitions: one Fact
    each; a later one is not ok when an earlier one is not."""
    mounted = facts.mounts(sysroot).get("cgroup2")
    if mounted != K.CGROUP_FS:
        why = f"at {mounted}, not {K.CGROUP_FS}" if mounted else f"not mounted ({MOUNT_HINT})"
        return [Fact("cgroup2", False, f"cgroup v2 {why}")]
    out = [Fact("cgroup2", True, f"cgroup v2 at {K.CGROUP_FS}")]
    controllers = sysroot.read_optional(f"{K.CGROUP_FS}/cgroup.controllers", "").split()
    if "cpuset" not in controllers:
        return out + [Fact("cpuset", False, "no cpuset controller in cgroup v2 (kernel "
                           "without CONFIG_CPUSETS, or the controller is bound to v1)")]
    out.append(Fact("cpuset", True, "cpuset controller available"))
    version = facts.version(sysroot)
    if sysroot.exists(f"{K.CGROUP_FS}/cpuset.cpus.isolated"):
        out.append(Fact("partitions", True, "isolated partitions (cpuset.cpus.isolated)"))
    elif version >= PARTITION_SINCE:
        out.append(Fact("partitions", True, f"isolated partitions (kernel "
                        f"{version[0]}.{version[1]} >= 5.15)"))
    else:
        out.append(Fact("partitions", False, "kernel before 5.15: no isolated partitions"))
    return out


def cgroup_problem(sysroot):
    """Why parking is impossible here ("" when it is possible)."""
    return next((f.detail for f in cgroup_facts(sysroot) if not f.ok), "")


@dataclass(frozen=True)
class Irq:
    number: int
    cpus: tuple         # smp_affinity_list
    effective: tuple    # effective_affinity_list (= cpus when the kernel has none or
    #                     it was not asked for)

    @property
    def path(self):
        return irq_path(self.number)


def irq_path(number):
    return f"{K.IRQ_DIR}/{number}/smp_affinity_list"


def irq_name(sysroot, number):
    """Its handlers' names (the directories in /proc/irq/N), or ""."""
    return ",".join(sysroot.subdirs(f"{K.IRQ_DIR}/{number}"))


def _cpus(path, text):
    try:
        return tuple(parse_cpulist(text))
    except ValueError as err:
        raise DataError(path, f"malformed cpulist: {err}") from err


def irqs(sysroot, effective=False):
    """Every IRQ with an affinity file, by number; ``effective``: read the effective
    affinities too (one more file per IRQ)."""
    out = []
    numbers = sorted(int(n) for n in sysroot.listdir(K.IRQ_DIR) if re.fullmatch(r"[0-9]+", n))
    for n in numbers:
        path = irq_path(n)
        text = sysroot.read_optional(path)
        if text is None:
            continue
        cpus = _cpus(path, text)
        eff_path = f"{K.IRQ_DIR}/{n}/effective_affinity_list"
        eff = sysroot.read_optional(eff_path) if effective else None
        out.append(Irq(n, cpus, cpus if eff is None else _cpus(eff_path, eff)))
    return out


def irq_writable(sysroot):
    """Fact: can this process write IRQ affinities (a dry check: the files' modes)?"""
    found = irqs(sysroot)
    if not found:
        return Fact("irq_affinity", False, f"no {K.IRQ_DIR}/N/smp_affinity_list here")
    writable = [i for i in found if sysroot.writable(i.path)]
    if not writable:
        return Fact("irq_affinity", False, f"{len(found)} IRQs, none writable by this user "
                    "(run as root)")
    return Fact("irq_affinity", True, f"{len(writable)} of {len(found)} IRQ affinities "
                "writable (managed IRQs still refuse: they are reported)")


@dataclass(frozen=True)
class Kthread:
    pid: int
    comm: str
    cpus: tuple
    fixed: bool         # PF_NO_SETAFFINITY: user space cannot change its affinity

    @property
    def path(self):
        return tasks.status_path(self.pid)

    @property
    def per_cpu(self):
        """Bound to one CPU by the kernel (kthread_bind() sets PF_NO_SETAFFINITY)."""
        return self.fixed and len(self.cpus) == 1


def kthreads(sysroot, meeting=None):
    """The kernel threads (with ``meeting``, a set of CPUs: those allowed on one of
    them)."""
    return [Kthread(st.pid, st.comm, cpus, bool(st.flags & tasks.PF_NO_SETAFFINITY))
            for st, cpus in tasks.kernel_threads(sysroot, meeting)]


CLOCKSOURCES = "/sys/devices/system/clocksource/clocksource0/available_clocksource"
TSC_TRUSTED = ("constant_tsc", "nonstop_tsc", "tsc_adjust")
# The kernel trusts such a TSC on a small machine only (arch/x86/kernel/tsc.c,
# check_system_tsc_reliable(); read in Debian's 6.1.192 and 6.12.117): 6.12 up to 4
# packages, 6.1 up to 2 NUMA nodes. Kernels between those two were not read: they
# get 6.1's rule, the stricter for a vNUMA guest.
TSC_SMALL_SINCE = (6, 12)


def tsc_watchdog(sysroot):
    """Why the clocksource watchdog verifies the TSC here, or None when it does not.
    Its timer moves to the next online CPU every half second (kernel/time/
    clocksource.c, clocksource_watchdog(): add_timer_on()), parked CPUs included, so
    each wakes every (online CPUs / 2) seconds; only a boot parameter stops it."""
    if "tsc" not in sysroot.read_optional(CLOCKSOURCES, "").split():
        return None
    args = set(sysroot.read_optional("/proc/cmdline", "").split())
    if args & {"tsc=reliable", "tsc=nowatchdog"}:
        return None
    flags = facts.cpu_flags(sysroot)
    if "tsc_reliable" in flags:
        return None
    missing = [f for f in TSC_TRUSTED if f not in flags]
    if missing:
        return f"the TSC lacks {', '.join(missing)}"
    topo = read_topology(sysroot)
    ver = facts.parse_version(facts.release(sysroot, ""))
    if ver is not None and ver >= TSC_SMALL_SINCE:
        packages = packages_of_cpus(sysroot, online(sysroot))
        count = len(set(packages.values())) if packages else None
        if count is not None and count <= 4:
            return None
        return f"{count or 'unknown'} CPU packages (the kernel trusts the TSC up to 4)"
    if len(topo.nodes) <= 2:
        return None
    return f"{len(topo.nodes)} NUMA nodes (this kernel trusts the TSC up to 2)"
