#!/usr/bin/env python3
"""share_check.py VNUMA_SCHED_EXE - runs as root inside a 2-node, 4-vCPU guest: parks
one vCPU per node with 'share apply --per-node 1', watches busy tasks started
afterwards (their last CPU, /proc/PID/stat field 39, and their allowed CPUs, and the
load-balancing softirqs the parked vCPUs ran meanwhile), reads
'share status --json', reverts, and compares every value share touches before and
after; prints one JSON document."""

import glob
import json
import os
import subprocess
import sys
import time

CG = "/sys/fs/cgroup"
PARKED = f"{CG}/vnuma-parked"
BUSY = 4                # more busy tasks than used vCPUs: the scheduler wants them all
SAMPLES = 150


def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError as err:
        return f"<{err.strerror}>"


def mount_cgroup2():
    mounts = [line.split() for line in read("/proc/mounts").splitlines()]
    if not any(m[1] == CG and m[2] == "cgroup2" for m in mounts):
        subprocess.run(["mount", "-t", "cgroup2", "none", CG], check=True)


def kthread_affinities():
    out = {}
    for stat in glob.glob("/proc/[0-9]*/stat"):
        text = read(stat)
        fields = text.rpartition(")")[2].split()
        if len(fields) > 6 and int(fields[6]) & 0x00200000:
            for line in read(stat[:-4] + "status").splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    comm = text.partition(" (")[2].rpartition(")")[0]
                    out[stat.split("/")[2]] = f"{comm} {line.split()[1]}"
    return out


def values():
    """Every value 'share' may write, as the kernel shows it."""
    v = {p: read(p) for p in sorted(glob.glob("/proc/irq/*/smp_affinity_list"))}
    for p in ("/proc/irq/default_smp_affinity", "/sys/devices/virtual/workqueue/cpumask",
              "/proc/sys/kernel/timer_migration", f"{CG}/cgroup.subtree_control"):
        v[p] = read(p)
    v[PARKED] = os.path.isdir(PARKED)
    return v


def cpulist(text):
    out = set()
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        out |= set(range(int(lo), int(hi or lo) + 1))
    return out


def softirqs(name):
    """{cpu: count} of one line of /proc/softirqs (columns: the online CPUs)."""
    lines = read("/proc/softirqs").splitlines()
    cpus = [int(c[3:]) for c in lines[0].split()]
    row = next(line.split()[1:] for line in lines if line.split()[0] == f"{name}:")
    return dict(zip(cpus, map(int, row)))


def vnuma(exe, *args):
    res = subprocess.run([exe, *args], capture_output=True, text=True)
    return {"rc": res.returncode, "stdout": res.stdout, "stderr": res.stderr[-1500:]}


def spin():
    end = time.monotonic() + 60
    while time.monotonic() < end:
        pass


def watch_busy():
    """Start BUSY spinning tasks, sample their last CPU; their CPUs and affinities."""
    kids = []
    for _ in range(BUSY):
        pid = os.fork()
        if pid == 0:
            spin()
            os._exit(0)
        kids.append(pid)
    seen, allowed = set(), set()
    try:
        for _ in range(SAMPLES):
            for pid in kids:
                fields = read(f"/proc/{pid}/stat").rpartition(")")[2].split()
                seen.add(int(fields[36]))          # field 39: the CPU it last ran on
                allowed |= os.sched_getaffinity(pid)
            time.sleep(0.01)
    finally:
        for pid in kids:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    return sorted(seen), sorted(allowed)


def main():
    exe = sys.argv[1]
    mount_cgroup2()
    out = {"before": values(), "kthreads_before": kthread_affinities()}
    out["doctor"] = vnuma(exe, "--json", "doctor")
    out["plan"] = vnuma(exe, "share", "plan", "--per-node", "1", "--json")
    out["apply"] = vnuma(exe, "share", "apply", "--per-node", "1", "--json")
    out["partition"] = read(f"{PARKED}/cpuset.cpus.partition")
    out["parked_cpus"] = read(f"{PARKED}/cpuset.cpus.effective")
    sched = softirqs("SCHED")
    out["busy_cpus"], out["busy_allowed"] = watch_busy()
    # load balancing softirqs the parked vCPUs ran under that load (kicked as the
    # idle load balancer): {cpu: count}
    out["parked_sched_softirqs"] = {c: n - sched.get(c, 0)
                                    for c, n in softirqs("SCHED").items()
                                    if c in cpulist(out["parked_cpus"])}
    out["status"] = vnuma(exe, "share", "status", "--json")
    out["revert"] = vnuma(exe, "share", "revert", "--json")
    out["after"] = values()
    out["kthreads_after"] = kthread_affinities()
    out["busy_allowed_after"] = watch_busy()[1]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
