#!/usr/bin/env python3
"""probes_check.py VNUMA_SCHED_EXE - runs inside a 2-node, 4-vCPU guest: records the migrate probe (one bcc compile:
slow under TCG) while a task moves itself between nodes a known number of times
and then a sleep/wake workload runs on both nodes; prints one JSON document."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

VNUMA = "vnuma-sched"  # replaced by argv[1]
HERE = Path(__file__).resolve().parent
MOVES = 20


def mover():
    """Pin to CPU 0, then alternate CPU 2 (node 1) and CPU 1 (node 0): MOVES moves,
    every one across nodes and none of them to CPU 0."""
    os.sched_setaffinity(0, {0})
    time.sleep(0.1)
    start_ns = time.monotonic_ns()  # same clock as bpf_ktime_get_ns()
    for i in range(MOVES):
        os.sched_setaffinity(0, {2} if i % 2 == 0 else {1})
        end = time.monotonic() + 0.02
        while time.monotonic() < end:
            pass
    print(os.getpid(), start_ns, flush=True)


def record(out, command):
    subprocess.run(["mount", "-t", "tracefs", "nodev", "/sys/kernel/tracing"],
                   stderr=subprocess.DEVNULL)
    res = subprocess.run([VNUMA, "record", "-o", out, "--interval", "0.5", "--events",
                          "migrate", "--", *command], capture_output=True, text=True)
    if not Path(out).exists():
        sys.exit(f"record failed ({res.returncode}): {res.stderr[-1500:]}")
    lines = [json.loads(x) for x in Path(out).read_text().splitlines()]
    rep = json.loads(subprocess.run([VNUMA, "report", "--json", out], capture_output=True,
                                    text=True).stdout)
    return res, lines, rep


def main():
    global VNUMA
    if sys.argv[1:] == ["--mover"]:
        mover()
        return
    if sys.argv[1:] == ["--both"]:
        subprocess.run([sys.executable, __file__, "--mover"], check=True)
        subprocess.run([sys.executable, str(HERE.parent / "workloads" / "spinsleep.py"),
                        "6", "4"], check=True)
        return
    VNUMA = sys.argv[1]
    res, lines, rep = record("/tmp/probes.jsonl", [sys.executable, __file__, "--both"])
    if not res.stdout.strip():
        sys.exit(f"record failed ({res.returncode}): {res.stderr[-1500:]}")
    pid, start_ns = map(int, res.stdout.strip().splitlines()[0].split())
    # only the moves: not the fork/exec placement or the initial pin of the mover
    ev = [r for r in lines if r["type"] == "event" and r["pid"] == pid
          and r["ts"] > start_ns]
    out = {"mover": {"moves": MOVES, "cross_node_events": sum(e["cross_node"] for e in ev),
                     "events": len(ev), "stderr": res.stderr[-800:],
                     "probe": lines[0]["probes"]["migrate"]},
           "metrics": {k: v["total"] for k, v in rep["metrics"].items()}}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
