"""Runs inside the guest for 'ab': loads the probes once, then for each run in
the plan's order sets the arm's run-time knobs, samples the probes around one
workload run, and prints one JSON line per run on stdout."""

import json
import os
import subprocess
import sys
import time

from vnuma_sched.experiments.workloads.build import figures, score
from vnuma_sched.probes import kheaders, report
from vnuma_sched.probes.classify import delta, matrix_total
from vnuma_sched.probes.session import Session
from vnuma_sched.share import kernel as share_kernel
from vnuma_sched.share import park
from vnuma_sched.share.target import choose
from vnuma_sched.system import facts, schedstat
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import engine
from vnuma_sched.tunables import profile as P


def _emit(rec):
    sys.stdout.write(json.dumps(rec, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def set_arm(arm, sysroot):
    """Write the arm's knobs (through the registry, resolved on this kernel) and paths."""
    prof = P.Profile(name="ab-arm", settings=dict(arm["knobs"]))
    for row in engine.plan(prof, sysroot):
        if row.action == engine.SET:
            for path in row.paths:
                engine.write(engine.K.REGISTRY[row.knob], path, row.target, sysroot)
        elif row.action == engine.UNSUPPORTED:
            raise RuntimeError(f"{row.knob}: unsupported in this guest: {row.reason}")
    for path, value in arm["paths"].items():
        sysroot.write(path, value + "\n")


def park_for_boot(plan, sysroot, topo):
    """Park what this boot's arms ask for ('share:per-node=N'; ab gives such arms boots
    of their own, so all runs of a boot agree); the target as a dict, or None."""
    shares = {json.dumps(plan["arms"][a].get("share"), sort_keys=True) for a in plan["order"]}
    if len(shares) != 1:
        raise RuntimeError(f"the arms of one boot park differently: {sorted(shares)}")
    share = json.loads(shares.pop())
    if not share:
        return None
    target = choose(topo, share_kernel.online(sysroot), per_node=share["per_node"])
    park.apply(sysroot, target)
    return target.to_dict()


def use_headers(plan, environ):
    """Point bcc at the kernel headers the host extracted for this kernel (the plan's
    kernel_headers), so that the guest need not extract its own (about a minute of
    each boot under TCG); True when it did."""
    path = plan.get("kernel_headers")
    if not path or not os.path.isdir(os.path.join(path, "include")):
        return False
    environ[kheaders.KERNEL_SOURCE_VAR] = path
    return True


def run_plan(plan, sysroot):
    use_headers(plan, os.environ)
    for fs, where in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
        if not os.path.exists(os.path.join(where, "events" if fs == "tracefs" else "sched")):
            subprocess.run(["mount", "-t", fs, "nodev", where], stderr=subprocess.DEVNULL)
    if "schedstat" in plan["probes"] and schedstat.enabled(sysroot) is False:
        sysroot.write(schedstat.SCHEDSTATS_SYSCTL, "1\n")   # a test guest: counted in every arm
    topo = read_topology(sysroot)
    parked = park_for_boot(plan, sysroot, topo)   # before the probes: not counted
    session = Session(plan["probes"], sysroot, os.geteuid(), topo).start()
    _emit({"type": "guest", "kernel": facts.release(sysroot),
           "cmdline": sysroot.read("/proc/cmdline"), "topology": topo.to_dict(),
           "share": parked,
           "probes": {n: {"available": a.ok, "reason": a.reason,
                          "unsupported": a.unsupported}
                      for n, a in session.status.items()}})
    wl = plan["workload"]
    env = {**os.environ, **wl.get("env", {})}
    try:
        for i, arm_name in enumerate(plan["order"]):
            set_arm(plan["arms"][arm_name], sysroot)
            before = session.sample()
            t0 = time.monotonic()
            res = subprocess.run(wl["argv"], capture_output=True, text=True, env=env)
            seconds = time.monotonic() - t0
            after = session.sample()
            if res.returncode != 0:
                raise RuntimeError(f"workload exited {res.returncode}: {res.stderr[-300:]}")
            probes = delta(before, after)
            rec = {"type": "run", "index": i, "arm": arm_name, "seconds": round(seconds, 4),
                   "score": score(wl["kind"], res.stdout + res.stderr, seconds),
                   "metrics": {**report.metrics(probes),
                               **figures(wl["kind"], res.stdout)}}
            if "migrate" in probes:
                rec["matrix"] = matrix_total(probes["migrate"]["matrix"])
            _emit(rec)
    finally:
        session.close()


def main(plan_path):
    with open(plan_path, encoding="utf-8") as f:
        plan = json.load(f)
    run_plan(plan, SysRoot("/"))
