"""Tasks from /proc: a task's flags, last CPU and allowed CPUs, and the kernel threads.
Pure parsing plus reads through the SysRoot passed in."""

import re
from dataclasses import dataclass

from vnuma_sched.errors import DataError
from vnuma_sched.system.topology import parse_cpulist

PF_KTHREAD = 0x00200000            # include/linux/sched.h (6.1 and 6.12)
PF_NO_SETAFFINITY = 0x04000000
_ALLOWED = re.compile(r"^Cpus_allowed_list:\s*(\S*)\s*$", re.M)
_KTHREAD = re.compile(r"^Kthread:\s*(\S*)\s*$", re.M)     # not printed by 6.1


@dataclass(frozen=True)
class Stat:
    pid: int
    comm: str
    flags: int
    processor: int          # the CPU it last ran on (field 39)
    cpu_ticks: int = 0      # utime + stime (fields 14 and 15), in clock ticks


def parse_stat(text):
    """/proc/PID/stat: the comm is in parentheses and may hold spaces and ')'."""
    head, sep, rest = text.rpartition(")")
    pid, _, comm = head.partition(" (")
    fields = rest.split()
    if not sep or not pid.strip().isdigit() or len(fields) < 37:
        raise ValueError(f"not a /proc/PID/stat line: {text[:60]!r}")
    # fields[0] is field 3 (state): field N is fields[N - 3]
    return Stat(int(pid), comm, int(fields[6]), int(fields[36]),
                int(fields[11]) + int(fields[12]))


def stat(sysroot, pid):
    path = f"/proc/{pid}/stat"
    try:
        return parse_stat(sysroot.read(path))
    except ValueError as err:
        raise DataError(path, str(err)) from err


def allowed_cpus(sysroot, pid, text=None):
    """The cpulist text of Cpus_allowed_list in /proc/PID/status (``text``: that file,
    already read)."""
    path = status_path(pid)
    m = _ALLOWED.search(sysroot.read(path) if text is None else text)
    if not m:
        raise DataError(path, "no Cpus_allowed_list line")
    return m.group(1)


def status_path(pid):
    return f"/proc/{pid}/status"


def pid_of(path):
    """The pid in a /proc/PID/... path."""
    return int(path.split("/")[2])


def _kernel_thread(sysroot, pid, meeting):
    """(Stat, allowed CPUs) of a kernel thread, None for another task or when its
    allowed CPUs miss ``meeting``. The status file first (the allowed CPUs, and whether
    it is a kernel thread where the kernel says so): stat, for the flags, only for the
    threads kept."""
    text = sysroot.read(status_path(pid))
    kthread = _KTHREAD.search(text)
    if kthread and kthread.group(1) != "1":
        return None
    cpus = tuple(parse_cpulist(allowed_cpus(sysroot, pid, text)))
    if meeting is not None and not meeting.intersection(cpus):
        return None
    st = stat(sysroot, pid)
    return (st, cpus) if st.flags & PF_KTHREAD else None


def kernel_threads(sysroot, meeting=None):
    """(Stat, allowed CPUs) of every kernel thread (with ``meeting``, a set of CPUs:
    of those allowed on one of them); threads that exit while listed are left out."""
    out = []
    for name in sorted((n for n in sysroot.listdir("/proc") if n.isdigit()), key=int):
        try:
            found = _kernel_thread(sysroot, int(name), meeting)
        except (DataError, ValueError):
            continue
        if found is not None:
            out.append(found)
    return out
