"""Keep the vCPUs to park busy while their partition is made, so that they do not go
on serving as the idle load balancer.

A CPU idle with its tick stopped is in nohz.idle_cpus_mask, from which the busy CPUs
pick the one to kick (an IPI, call-function-single) to balance on behalf of every
idle CPU (find_new_ilb(), kernel/sched/fair.c). It leaves that mask only at a busy
tick (nohz_balancer_kick() -> nohz_balance_exit_idle()), which sched_balance_trigger()
skips on a CPU attached to no sched domain, and through hotplug; only a CPU still in
a domain enters it (nohz_balance_enter_idle()). So a vCPU that goes into an isolated
partition while it idles with its tick stopped stays in the mask for as long as it is
parked, and is kicked whenever the used vCPUs have more to run than CPUs: in a TCG
guest (6.12) about 90 IPIs per second to each parked vCPU under load. A vCPU that is
busy when the partition is made has left the mask at its last tick and never enters
it again while parked.

busy() starts one spinning child per vCPU, pinned to it and moved into the parked
cgroup (a partition may hold tasks; the kernel does not move them out), waits until
each runs on its vCPU and every vCPU has ticked since (two jiffies; without
/proc/schedstat, BUSY_NS of run time: two ticks at HZ=100), holds while the
partition is written, and kills and reaps them. Children get SIGKILL when this
process dies (PR_SET_PDEATHSIG) and stop by themselves after LIMIT_S."""

import contextlib
import ctypes
import os
import re
import select
import signal
import time

from vnuma_sched.errors import DataError
from vnuma_sched.tunables import knobs as K

PROCS = f"{K.PARKED}/cgroup.procs"
BUSY_NS = 20_000_000            # 2 ticks at HZ=100, 5 at HZ=250 (without jiffies)
SCHEDSTAT = "/proc/schedstat"   # its "timestamp" is jiffies (CONFIG_SCHEDSTATS)
LIMIT_S = 10.0                  # a child spins no longer than this, whatever happens
WAIT_S = 5.0                    # for the children's run time
PR_SET_PDEATHSIG = 1


def _spin(cpu, parent, ready):
    """The child: run on ``cpu`` only, die with the parent, say so on ``ready``, spin."""
    try:
        os.sched_setaffinity(0, {cpu})
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            return
        os.write(ready, b"!")
        end = time.monotonic() + LIMIT_S
        while time.monotonic() < end:
            pass
    finally:
        os._exit(0)


def run_ns(sysroot, pid):
    """The time ``pid`` has run (the first field of /proc/PID/schedstat); 0 if unknown."""
    try:
        return int(sysroot.read(f"/proc/{pid}/schedstat").split()[0])
    except (DataError, ValueError, IndexError):
        return 0


def _jiffies(sysroot):
    """The kernel's jiffies (the "timestamp" line of /proc/schedstat), or None."""
    m = re.search(r"^timestamp ([0-9]+)$", sysroot.read_optional(SCHEDSTAT, ""), re.M)
    return int(m.group(1)) if m else None


def _wait_busy(sysroot, kids, ready, deadline):
    """Until every child has said it runs on its CPU, then until every CPU has ticked
    since: two jiffies later (one whole tick period), or where jiffies cannot be read,
    when each child has run BUSY_NS more; at most until ``deadline``."""
    said = b""
    while len(said) < len(kids) and time.monotonic() < deadline:
        if select.select([ready], [], [], max(0, deadline - time.monotonic()))[0]:
            chunk = os.read(ready, len(kids))
            if not chunk:
                break
            said += chunk
    start, jiffies = {pid: run_ns(sysroot, pid) for pid in kids}, _jiffies(sysroot)
    while time.monotonic() < deadline:
        if jiffies is not None:
            if (_jiffies(sysroot) or 0) >= jiffies + 2:
                return
        elif all(run_ns(sysroot, pid) >= start[pid] + BUSY_NS for pid in kids):
            return
        time.sleep(0.001)


@contextlib.contextmanager
def busy(sysroot, cpus, procs=PROCS):
    """Hold with every CPU of ``cpus`` running a task of the cgroup whose cgroup.procs
    is ``procs`` (the parked cgroup's), on a live system; under another root there
    is nothing to run."""
    if not sysroot.is_live:
        yield
        return
    kids, parent = [], os.getpid()
    ready, said = os.pipe()
    try:
        for cpu in cpus:
            pid = os.fork()
            if pid == 0:
                _spin(cpu, parent, said)
            kids.append(pid)
        os.close(said)
        said = None
        for pid in kids:
            sysroot.write(procs, f"{pid}\n")
        _wait_busy(sysroot, kids, ready, time.monotonic() + WAIT_S)
        yield
    finally:
        os.close(ready)
        if said is not None:
            os.close(said)
        for pid in kids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for pid in kids:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def around(sysroot, target):
    """For the tunables engine: busy() around the write that makes the partition."""
    def hold(row):
        if row.knob == "share.group.partition" and row.target == "isolated":
            return busy(sysroot, target.parked)
        return contextlib.nullcontext()
    return hold

