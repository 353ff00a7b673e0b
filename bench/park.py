#!/usr/bin/env python3
"""Time to park and unpark k of n vCPUs with 'share', against CPU hotplug of the same
vCPUs. Runs as root INSIDE a guest (cgroup v2 is mounted if it is not):

    vnuma-sched vm run --kernel K --topology 2x2 -- /usr/bin/python3 bench/park.py \
        --exe /path/to/.venv/bin/vnuma-sched

Each run parks (share apply: plan, journal, partition, IRQs, workqueues, kthreads)
and unparks (share revert) in this process, then takes the same vCPUs offline and
online again through /sys/devices/system/cpu/cpuN/online. The plan alone (the reads
of /proc and /sys that park starts with) is timed too. With --exe, each run also
times the commands 'vnuma-sched share apply' and 'share revert' as a user runs them
(interpreter start-up and imports included). Prints the median of each, the ratio
hotplug/share with its 95% bootstrap interval and the Mann-Whitney p over the runs.
The goal (issue 14): share >= 10x faster than hotplug, p < 0.05 over 10 runs. No
assertion here: the figures go to the README.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vnuma_sched.experiments import stats  # noqa: E402
from vnuma_sched.share import kernel as KS  # noqa: E402
from vnuma_sched.share import park  # noqa: E402
from vnuma_sched.share import plan as SP  # noqa: E402
from vnuma_sched.share import target as T  # noqa: E402
from vnuma_sched.system.sysroot import SysRoot  # noqa: E402
from vnuma_sched.system.topology import read_topology  # noqa: E402

CPU = "/sys/devices/system/cpu"


def mount_cgroup2():
    with open("/proc/mounts") as f:
        if any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in f):
            return
    subprocess.run(["mount", "-t", "cgroup2", "none", "/sys/fs/cgroup"], check=True)


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def command(argv):
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)


def compare(share, plug):
    """median(plug) / median(share), its 95% bootstrap interval, Mann-Whitney p."""
    lo, hi = stats.bootstrap_ratio_ci(share, plug)
    return {"ratio": stats.ratio(share, plug), "ci95": [lo, hi],
            "mann_whitney_p": stats.mann_whitney(plug, share)[1]}


def hotplug(cpus, value):
    for cpu in cpus:
        with open(f"{CPU}/cpu{cpu}/online", "w") as f:
            f.write(value)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-node", type=int, default=1, help="vCPUs kept per node [1]")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--exe", help="vnuma-sched to time as a command too")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    mount_cgroup2()
    sysroot = SysRoot("/")
    target = T.choose(read_topology(sysroot), KS.online(sysroot), per_node=args.per_node)
    steps = ["plan", "park", "unpark", "offline", "online"]
    if args.exe:
        steps += ["cli_park", "cli_unpark"]
        use = ["share", "apply", "--per-node", str(args.per_node)]
    times = {k: [] for k in steps}
    for _ in range(args.runs):
        times["plan"].append(timed(lambda: SP.plan(sysroot, target)))   # reads, also in park
        times["park"].append(timed(lambda: park.apply(sysroot, target)))
        times["unpark"].append(timed(lambda: park.revert(sysroot)))
        times["offline"].append(timed(lambda: hotplug(target.parked, "0")))
        times["online"].append(timed(lambda: hotplug(target.parked, "1")))
        if args.exe:
            times["cli_park"].append(timed(lambda: command([args.exe, *use])))
            times["cli_unpark"].append(timed(lambda: command([args.exe, "share", "revert"])))
    share = [p + u for p, u in zip(times["park"], times["unpark"], strict=True)]
    plug = [o + n for o, n in zip(times["offline"], times["online"], strict=True)]
    out = {"parked": target.parked_list, "of": len(KS.online(sysroot)), "runs": args.runs,
           "median_ms": {k: 1000 * stats.median(v) for k, v in times.items()},
           "runs_ms": {k: [round(1000 * x, 2) for x in v] for k, v in times.items()},
           "share_ms": 1000 * stats.median(share), "hotplug_ms": 1000 * stats.median(plug),
           "hotplug_over_share": compare(share, plug)}
    if args.exe:
        cli = [p + u for p, u in zip(times["cli_park"], times["cli_unpark"], strict=True)]
        out["cli_ms"] = 1000 * stats.median(cli)
        out["hotplug_over_cli"] = compare(cli, plug)
    if args.json:
        print(json.dumps(out))
        return
    print(f"{len(target.parked)} of {out['of']} vCPUs ({target.parked_list}), "
          f"{args.runs} runs, medians:")
    for k, v in out["median_ms"].items():
        print(f"  {k:10} {v:9.2f} ms")
    for what, key, ms in (("park+unpark", "hotplug_over_share", out["share_ms"]),
                          ("commands", "hotplug_over_cli", out.get("cli_ms"))):
        if key in out:
            c = out[key]
            print(f"{what} {ms:.2f} ms, offline+online {out['hotplug_ms']:.2f} ms: "
                  f"hotplug/share {c['ratio']:.2f}x (95% CI {c['ci95'][0]:.2f}-"
                  f"{c['ci95'][1]:.2f}), Mann-Whitney p = {c['mann_whitney_p']:.2g}")


if __name__ == "__main__":
    os.umask(0o022)
    main()
