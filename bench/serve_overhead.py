#!/usr/bin/env python3
"""Overhead of 'vnuma-sched serve' with all probes (and a scrape every second) on
wake-up-heavy workloads.

    sudo .venv/bin/python bench/serve_overhead.py [--runs N] [--scrape S] [PROBE...]

Needs root and perf (Debian linux-perf). Each round runs every workload once
without probes, then starts serve, waits until /metrics answers (bcc compiling is
not counted), runs every workload once more while a thread scrapes /metrics every
--scrape seconds, and stops serve: the two kinds of run are interleaved. Each
workload reports its own time (perf bench "Total time"); the medians are compared.
Goal: serve/plain <= 1.03. Name probes to see what each one costs (default: all).
"""

import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from probe_overhead import run  # this folder: perf bench's own "Total time"

from vnuma_sched.experiments import stats

VNUMA = str(Path(sys.executable).parent / "vnuma-sched")
WORKLOADS = {
    "sched messaging": ["perf", "bench", "sched", "messaging", "-g", "10", "-l", "200"],
    "sched pipe": ["perf", "bench", "sched", "pipe", "-l", "300000"],
}
# Both pipe tasks on CPU 0: no IPI or idle transition, and a wall time that does not
# depend on whether the load lets the two tasks run on two CPUs (the unpinned pipe's
# does: its medians follow the neighbours, not the probes).
PINNED = {"sched pipe, CPU 0": ["taskset", "-c", "0", *WORKLOADS["sched pipe"]]}
GOAL = 1.03


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def scrape(url):
    with urllib.request.urlopen(url, timeout=60) as resp:
        return resp.read()


class Serve:
    """serve with ``probes`` (all when empty), in its own process group, scraped every
    ``every`` s."""

    def __init__(self, every, probes):
        self.url = f"http://127.0.0.1:{free_port()}/metrics"
        self.every, self.probes = every, probes
        self.scrapes, self.stopping = 0, threading.Event()

    def __enter__(self):
        port = self.url.split(":")[2].split("/")[0]
        argv = [VNUMA, "serve", "--listen", f"127.0.0.1:{port}", *self.probes]
        self.proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 300
        while True:
            try:
                scrape(self.url)
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    sys.exit(f"serve did not come up (exit {self.proc.poll()})")
                time.sleep(0.2)
        self.thread = threading.Thread(target=self._scraper, daemon=True)
        self.thread.start()
        return self

    def _scraper(self):
        while not self.stopping.wait(self.every):
            scrape(self.url)
            self.scrapes += 1

    def __exit__(self, *exc):
        self.stopping.set()
        self.thread.join()
        os.killpg(self.proc.pid, signal.SIGTERM)
        if self.proc.wait(timeout=120) != 0:
            sys.exit(f"serve exited {self.proc.returncode}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--scrape", type=float, default=1.0, help="seconds between scrapes")
    ap.add_argument("probes", nargs="*", help="the probes serve loads (default: all)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (BPF)")
    workloads = {**WORKLOADS, **PINNED}
    plain = {name: [] for name in workloads}
    served = {name: [] for name in workloads}
    scrapes = 0
    for i in range(args.runs):
        for name, cmd in workloads.items():
            plain[name].append(run(cmd))
        with Serve(args.scrape, args.probes) as serve:
            for name, cmd in workloads.items():
                served[name].append(run(cmd))
        scrapes += serve.scrapes
        print(f"round {i + 1}/{args.runs}", file=sys.stderr)
    print(f"{'workload':<19}{'plain s':>9}{'serve s':>9}{'ratio':>7}{'95% CI':>13}{'p':>8}")
    for name in workloads:
        p, s = statistics.median(plain[name]), statistics.median(served[name])
        lo, hi = stats.bootstrap_ratio_ci(plain[name], served[name])
        print(f"{name:<19}{p:>9.3f}{s:>9.3f}{s / p:>7.3f}{lo:>7.3f}-{hi:<5.3f}"
              f"{stats.mann_whitney(plain[name], served[name])[1]:>8.2g}")
    probes = " ".join(args.probes) or "all probes"
    print(f"medians of {args.runs} interleaved runs each, {probes}, {scrapes} scrapes "
          f"(every {args.scrape:g} s); goal serve/plain <= {GOAL}")


if __name__ == "__main__":
    main()
