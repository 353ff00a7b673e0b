#!/usr/bin/env python3
"""Speed of 'tune apply' and 'tune revert' on a large host: every write is journaled first.

    .venv/bin/python bench/tune_apply.py [--cpus N]

Builds a fixture root (tests/tunables_trees.py) with N CPUs of MC and NUMA sched
domains and a profile of 6 domain knobs (3 per level): 6 * N writes (1,200 by
default). Prints the seconds and writes per second of apply and of revert. The goal
is well under a second per hundred knobs; no assertion here.

The fixture (and the journal in it) is made under --dir: by default /dev/shm, a
tmpfs, where rewriting a knob file costs what a sysfs write costs; on a disk file
system (--dir /var/tmp) the journal's fsyncs are real, but so is ext4 forcing out
each knob file that is truncated and rewritten, which sysfs never does.
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(HERE), str(HERE / "tests")]

from click.testing import CliRunner  # noqa: E402
from tunables_trees import build  # noqa: E402

from vnuma_sched.cli.main import main as cli_main  # noqa: E402

PROFILE = """[main]
summary = bench: every domain knob of MC and NUMA
[domains]
MC.imbalance_pct = 111
MC.cache_nice_tries = 2
MC.max_newidle_lb_cost = 400000
NUMA.imbalance_pct = 130
NUMA.cache_nice_tries = 2
NUMA.max_newidle_lb_cost = 500000
"""


def timed(root, pdir, *args):
    argv = ["--root", str(root), "tune", "--profiles", str(pdir), *args]
    t0 = time.monotonic()
    res = CliRunner().invoke(cli_main, argv)
    seconds = time.monotonic() - t0
    if res.exit_code != 0:
        sys.exit(f"{' '.join(args)} failed ({res.exit_code}): {res.output.strip()}")
    return seconds


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cpus", type=int, default=200, help="CPUs in the fixture [200]")
    ap.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None,
                    help="where to build the fixture [/dev/shm]")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"fixture in {tmp}, {args.cpus} CPUs")
        root = build(Path(tmp) / "root", "6.12", cpus=args.cpus)
        pdir = Path(tmp) / "profiles"
        pdir.mkdir()
        (pdir / "bench.ini").write_text(PROFILE)
        writes = 6 * args.cpus
        for step in ("apply", "revert"):
            seconds = timed(root, pdir, *((step, "bench") if step == "apply" else (step,)))
            print(f"{step:6} {writes} writes: {seconds:6.2f} s, {writes / seconds:8.0f} writes/s, "
                  f"{100 * seconds / writes:5.2f} s per 100 knobs")


if __name__ == "__main__":
    main()
