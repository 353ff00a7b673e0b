#!/usr/bin/env python3
"""Build and boot timings of the guest kernel, against the project's goals.

    .venv/bin/python bench/build_boot.py [--tree T] [--boots N] [--skip-cold]

Goals on a 2-core machine: cold guest-kernel build under 8 minutes, no-op
rebuild under 30 s, boot-to-command under QEMU TCG under 15 s. Prints each
figure and its ratio to the goal (below 1.00 meets it).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from vnuma_sched.kernel import kbuild, ktree, vm  # noqa: E402
from vnuma_sched.runner import Runner  # noqa: E402

GOALS = {"cold build": 480.0, "no-op rebuild": 30.0, "boot to command": 15.0}
FRAGMENT = Path(__file__).resolve().parent.parent / "kconfig" / "vnuma-guest.config"


def timed(fn):
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tree", help="kernel tree [default: fetch Debian's 6.12]")
    ap.add_argument("--boots", type=int, default=5)
    ap.add_argument("--skip-cold", action="store_true", help="reuse the cached build")
    args = ap.parse_args()
    runner = Runner()
    cache = Path(os.environ.get("VNUMA_SCHED_CACHE", "/var/cache/vnuma_sched"))
    tree = Path(args.tree) if args.tree else ktree.fetch_debian(
        "6.12", cache / "trees", runner, print, os.geteuid())
    out = cache / "builds" / "bench" if args.skip_cold else Path(
        tempfile.mkdtemp(prefix="bench-build-", dir=cache))
    req = kbuild.BuildRequest(tree, out, [FRAGMENT], jobs=os.cpu_count() or 2)
    figures = {}
    if not args.skip_cold:
        figures["cold build"] = timed(lambda: kbuild.build(req, runner, lambda m: None))
    else:
        kbuild.build(req, runner, lambda m: None)
    figures["no-op rebuild"] = timed(lambda: kbuild.build(req, runner, lambda m: None))
    topo = vm.parse_topology("2x2", 2048)
    image = out / kbuild.IMAGE
    boots = []
    for _ in range(args.boots):
        t0 = time.monotonic()
        res = vm.run(image, topo, ["true"], runner, "tcg", 120)
        if res.status != "exited" or res.exit_code != 0:
            sys.exit(f"boot failed: {res.status} {res.console_tail[-3:]}")
        boots.append(time.monotonic() - t0)
    figures["boot to command"] = statistics.median(boots)
    print(f"{'measure':<18}{'seconds':>10}{'goal':>8}{'ratio':>8}")
    for name, secs in figures.items():
        print(f"{name:<18}{secs:>10.1f}{GOALS[name]:>8.0f}{secs / GOALS[name]:>8.2f}")
    print(f"boots: {', '.join(f'{b:.1f}' for b in boots)} s (median of {len(boots)})")
    if not args.skip_cold:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
