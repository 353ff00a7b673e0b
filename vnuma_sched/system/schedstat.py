"""The scheduler's own wake-up placement counters from /proc/schedstat.

Per CPU and scheduling domain the kernel counts, in ttwu_stat() and wake_affine()
(kernel/sched/fair.c, core.c; CONFIG_SCHEDSTATS, kernel.sched_schedstats=1):
ttwu_wake_remote (the woken task's CPU and the waker's are in this domain and
differ), ttwu_move_affine (wake_affine() moved the task to the waker's side of this
domain) and ttwu_move_balance (no longer incremented; kept for the format). They
are the last three numbers of each "domainN" line in versions 15 (6.1) and 16
(6.12): 8 load-balance figures per idle type, then 9 alb/sbe/sbf figures, then
these three. A domain whose span covers CPUs of more than one node is a NUMA
level: its ttwu_move_affine counts the cross-node pulls wake_affine() decided.
Pure parsing; the file is read through a SysRoot."""

from vnuma_sched.errors import DataError

SCHEDSTAT = "/proc/schedstat"
SCHEDSTATS_SYSCTL = "/proc/sys/kernel/sched_schedstats"
VERSIONS = (15, 16)          # 17 (6.13+) names each domain: not parsed yet
TTWU_FIELDS = ("wake_remote", "move_affine", "move_balance")
LB_FIELDS_PER_TYPE = 8
SCOPES = ("cross_node", "in_node")


def mask_cpus(text):
    """The CPUs of a "%*pb" bitmap: hex words, most significant first, comma-separated."""
    cpus, bit = [], 0
    for word in reversed(text.split(",")):
        try:
            value = int(word, 16)
        except ValueError:
            raise DataError(SCHEDSTAT, f"bad CPU mask {text!r}") from None
        cpus += [bit + i for i in range(len(word) * 4) if value >> i & 1]
        bit += len(word) * 4
    return cpus


def parse(text):
    """[(cpu, domain index, span CPUs, {field: count})] of every domain line."""
    rows, cpu, version = [], None, None
    for line in text.splitlines():
        parts = line.split()
        if not parts:
            continue
        if parts[0] == "version":
            version = int(parts[1])
        elif parts[0].startswith("cpu"):
            cpu = int(parts[0][3:])
        elif parts[0].startswith("domain"):
            if version not in VERSIONS or cpu is None:
                raise DataError(SCHEDSTAT, f"version {version} not understood")
            nums = parts[2:]
            if len(nums) < 3 * LB_FIELDS_PER_TYPE + 12:
                raise DataError(SCHEDSTAT, f"short domain line for cpu{cpu}")
            counts = dict(zip(TTWU_FIELDS, (int(n) for n in nums[-3:])))
            rows.append((cpu, int(parts[0][6:]), mask_cpus(parts[1]), counts))
    return rows


def wake_counts(text, cpu_node):
    """{"cross_node"|"in_node": [wake_remote, move_affine, move_balance]} summed over
    CPUs, split by whether the domain spans more than one node."""
    out = {scope: [0] * len(TTWU_FIELDS) for scope in SCOPES}
    for _cpu, _level, span, counts in parse(text):
        nodes = {cpu_node.get(c, -1) for c in span}
        scope = SCOPES[0] if len(nodes) > 1 else SCOPES[1]
        for i, name in enumerate(TTWU_FIELDS):
            out[scope][i] += counts[name]
    return out


def read_wake_counts(sysroot, cpu_node):
    return wake_counts(sysroot.read(SCHEDSTAT), cpu_node)


def version(sysroot):
    """The file's format version, or None when there is no /proc/schedstat."""
    head = (sysroot.read_optional(SCHEDSTAT) or "").split(None, 2)
    return int(head[1]) if len(head) > 1 and head[0] == "version" and head[1].isdigit() \
        else None


def unsupported(sysroot):
    """Why the wake-up counters cannot be read here, or None."""
    v = version(sysroot)
    if v is None:
        return f"no {SCHEDSTAT} (CONFIG_SCHEDSTATS unset)"
    if v not in VERSIONS:
        return f"{SCHEDSTAT} version {v} not understood (knows {VERSIONS})"
    if not enabled(sysroot):
        return "kernel.sched_schedstats=0 (sysctl -w kernel.sched_schedstats=1)"
    return None


def enabled(sysroot):
    """Whether the kernel is counting (kernel.sched_schedstats=1); None if unknown."""
    value = sysroot.read_optional(SCHEDSTATS_SYSCTL)
    return None if value is None else value.strip() == "1"
