#!/usr/bin/env python3
"""What a guest boot saves when the host extracts the kernel headers for bcc.

    sudo .venv/bin/python bench/guest_headers.py [--version 6.12] [--boots 2]

ab and bisect extract the guest kernel's kheaders archive (its build directory's
kernel/kheaders_data.tar.xz) on the host once and point bcc in the guest at it;
before, every guest extracted /sys/kernel/kheaders.tar.xz itself. This boots the
cached series build of --version (`vnuma-sched pipeline`, which builds it first
if needed) --boots times each way, alternating, and in each boot times the
loading of ab's five probes (headers, compile, attach). Prints the seconds per
boot both ways and their ratio. Under QEMU TCG: guest seconds, not hardware ones.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vnuma_sched.experiments.ab import PROBES  # noqa: E402
from vnuma_sched.kernel import kbuild  # noqa: E402
from vnuma_sched.probes import kheaders  # noqa: E402

GUEST = """
import json, os, subprocess, sys, time
from vnuma_sched.experiments import guest_agent
from vnuma_sched.probes.session import Session
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
for fs, where in (("tracefs", "/sys/kernel/tracing"), ("debugfs", "/sys/kernel/debug")):
    subprocess.run(["mount", "-t", fs, "nodev", where], stderr=subprocess.DEVNULL)
guest_agent.use_headers({"kernel_headers": sys.argv[1] or None}, os.environ)
t = time.monotonic()
s = Session(json.loads(sys.argv[2]), SysRoot("/"), 0, read_topology(SysRoot("/"))).start()
print("LOAD", time.monotonic() - t, json.dumps(sorted(s.running())), flush=True)
s.close()
"""


def boot(version, headers, py, cache):
    """Seconds the guest took to load the probes, and which loaded."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", dir="/tmp", delete=False) as f:
        f.write(GUEST)
    try:
        out = subprocess.run(
            [sys.executable, "-m", "vnuma_sched", "pipeline", "--version", version,
             "--topology", "2x2", "--", py, f.name, headers or "", json.dumps(PROBES)],
            capture_output=True, text=True, check=True, cwd=ROOT,
            env={**os.environ, "VNUMA_SCHED_CACHE": cache}).stdout
    finally:
        os.unlink(f.name)
    line = next(ln for ln in out.splitlines() if ln.startswith("LOAD "))
    _, seconds, loaded = line.split(" ", 2)
    return float(seconds), json.loads(loaded)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--version", default="6.12")
    ap.add_argument("--boots", type=int, default=2)
    args = ap.parse_args()
    cache = os.environ.get("VNUMA_SCHED_CACHE", "/var/cache/vnuma_sched")
    image = Path(cache) / "builds" / f"series-{args.version}" / kbuild.IMAGE
    archive = kbuild.headers_archive(image)
    if archive is None:
        sys.exit(f"no {kbuild.HEADERS_ARCHIVE} beside {image}: run `vnuma-sched pipeline "
                 f"--version {args.version}` first")
    py = str(Path(sys.executable))
    times = {"guest extracts": [], "host extracted": []}
    t0 = time.monotonic()
    with kheaders.extracted(archive, "/tmp") as host:
        t_host = time.monotonic() - t0
        for _ in range(args.boots):
            for name, hdr in (("guest extracts", None), ("host extracted", str(host))):
                seconds, loaded = boot(args.version, hdr, py, cache)
                if loaded != sorted(PROBES) and loaded != sorted(set(PROBES) - {"schedstat"}):
                    sys.exit(f"{name}: only {loaded} loaded")
                times[name].append(seconds)
                print(f"{name}: probes loaded in {seconds:.1f} s", flush=True)
    a, b = (statistics.median(v) for v in times.values())
    print(f"host extraction: {t_host:.1f} s once per ab run")
    print(f"median per boot: guest extracts {a:.1f} s, host extracted {b:.1f} s, "
          f"ratio {b / a:.2f} (saves {a - b:.0f} s a boot)")


if __name__ == "__main__":
    main()
