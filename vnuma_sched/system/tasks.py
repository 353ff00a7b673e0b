"""Tasks from /proc: a task's flags, last CPU and allowed CPUs, and the kernel threads.
Pure parsing plus reads through the SysRoot passed in."""

import re
from dataclasses import dataclass

from vnuma_sched.errors import DataError
from vnuma_sched.system.topology import parse_cpulist

PF_KTHREAD = 0x00200000            # include/linux/sched.h (6.1 and 6.12)
PF_NO_SETAFFINITY = 0x04000000
_ALLOWED = re.compile(r"^Cpus_allowed_list:\s*(\S*)\s*$", re.M)


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    flags: int
    processor: int          # the CPU it last ran on (field 39)


def parse_stat(text):
    """/proc/PID/stat: the comm is in parentheses and may hold spaces and ')'."""
    head, sep, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = rest.split()
    if not sep or not pid.strip().isdigit() or len(fields) < 37:
        raise ValueError(f"not a /proc/PID/stat line: {text[:60]!r}")
    # fields[0] is field 3 (state): field N is fields[N - 3]
    return Stat(int(pid), comm, int(fields[6]), int(fields[36]))


def stat(sysroot, pid):
    path = f"/proc/{pid}/stat"
    try:
        return parse_stat(sysroot.read(path))
    except ValueError as err:
        raise DataError(path, str(err)) from err


def allowed_cpus(sysroot, pid):
    """The cpulist text of Cpus_allowed_list in /proc/PID/status."""
    path = f"/proc/{pid}/status"
    m = _ALLOWED.search(sysroot.read(path))
    if not m:
        raise DataError(path, "no Cpus_allowed_list line")
    return m.group(1)


def status_path(pid):
    return f"/proc/{pid}/status"


def pid_of(path):
    """The pid in a /proc/PID/... path."""
    return int(path.split("/")[2])


def kernel_threads(sysroot):
    """(Stat, allowed CPUs) of every kernel thread; threads that exit while listed are
    left out."""
    out = []
    for name in sorted((n for n in sysroot.listdir("/proc") if n.isdigit()), key=int):
        try:
            st = stat(sysroot, name)
            if st.flags & PF_KTHREAD:
                out.append((st, tuple(parse_cpulist(allowed_cpus(sysroot, name)))))
        except (DataError, ValueError):
            continue
    return out
