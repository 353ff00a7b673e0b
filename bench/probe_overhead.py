#!/usr/bin/env python3
"""Overhead of 'vnuma-sched record' (all available probes) on wake-up-heavy
workloads, with 'perf sched record' on the same workload as the reference.

    sudo .venv/bin/python bench/probe_overhead.py [--runs N]

Each workload reports its own time (perf bench "Total time"), so probe start-up
(bcc compiling) is not counted. Runs are interleaved (plain, record, perf) and
the median of each is compared. Goal: record/plain <= 1.05.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

VNUMA = str(Path(sys.executable).parent / "vnuma-sched")
WORKLOADS = {
    "sched pipe": ["perf", "bench", "sched", "pipe", "-l", "100000"],
    "sched messaging": ["perf", "bench", "sched", "messaging", "-g", "10", "-l", "200"],
}


def seconds(output):
    m = re.search(r"Total time:\s+([0-9.]+) \[sec\]", output)
    if not m:
        sys.exit(f"no 'Total time' in workload output:\n{output[-500:]}")
    return float(m.group(1))


def run(argv):
    res = subprocess.run(argv, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{argv[0]} failed ({res.returncode}): {res.stderr[-500:]}")
    return seconds(res.stdout + res.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (BPF and perf sched record)")
    tmp = Path(tempfile.mkdtemp(prefix="vnuma-bench-"))
    print(f"{'workload':<16}{'plain s':>9}{'record s':>10}{'ratio':>7}{'perf s':>9}{'ratio':>7}")
    for name, cmd in WORKLOADS.items():
        plain, rec, perf = [], [], []
        for i in range(args.runs):
            plain.append(run(cmd))
            rec.append(run([VNUMA, "record", "-o", str(tmp / f"r{i}.jsonl"), "--", *cmd]))
            perf.append(run(["perf", "sched", "record", "-o", str(tmp / f"p{i}.data"), "--",
                             *cmd]))
        p, r, f = (statistics.median(x) for x in (plain, rec, perf))
        print(f"{name:<16}{p:>9.3f}{r:>10.3f}{r / p:>7.3f}{f:>9.3f}{f / p:>7.3f}")
    print(f"median of {args.runs} interleaved runs each; goal record/plain <= 1.05")


if __name__ == "__main__":
    main()
