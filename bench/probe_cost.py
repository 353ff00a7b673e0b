#!/usr/bin/env python3
"""Where the probes' time goes, per BPF program and in serve's user space.

    sudo .venv/bin/python bench/probe_cost.py [--repeat N] [--json FILE] [PROBE...]

Needs root and perf (Debian linux-perf). The probes (all by default) are loaded
in this process and kernel.bpf_stats_enabled is set to 1 (restored at the end),
so the kernel counts every program's runs (run_cnt) and the time spent in them
(run_time_ns, read from /proc/self/fdinfo). The workloads of serve_overhead.py
run --repeat times each; per program the table gives the events per benchmark
operation (a round trip for pipe, a message for messaging), the ns per event,
their product (ns per op) and its share of the total. These are CPU times of
the programs themselves, so a busy machine changes them little, unlike wall
times; the events per op include what other jobs trigger meanwhile (the
programs trace the whole machine). bpf_stats itself adds two clock reads per
run, inside the counted time. The workloads' own CPU time per op, plain (run
first) and with the probes, adds the tracepoint dispatch the stats do not see;
the pipe pinned to CPU 0 is the steadiest of them. --cpus N sizes the maps for
an N-CPU guest (handlers that walk CPUs then cost what they would there),
--bpf DIR loads another bpf/ folder (say, an older commit's) to compare.

Then `vnuma-sched serve` with the same probes runs as a separate process:
its CPU time (/proc/PID/stat, exited request threads included) over --idle
seconds without scrapes and over --scrapes scrapes gives the user-space cost,
turned into ns per op at one scrape per --every seconds using the measured
wall time per op of the workload.
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

from probe_overhead import run  # this folder: perf bench's own "Total time"
from serve_overhead import PINNED, WORKLOADS, Serve, scrape

from vnuma_sched.probes import session as session_mod
from vnuma_sched.probes.session import Session
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology, read_topology

STATS_SYSCTL = Path("/proc/sys/kernel/bpf_stats_enabled")
MESSAGING_FDS = 20      # perf bench sched messaging's default senders/receivers per group


def ops(argv):
    """Benchmark operations of one run: pipe round trips, messaging messages."""
    argv = argv[argv.index("perf"):]
    opts = dict(zip(argv[4::2], (int(v) for v in argv[5::2])))
    if argv[3] == "pipe":
        return opts.get("-l", 1_000_000)
    groups, loops = opts.get("-g", 10), opts.get("-l", 100)
    return groups * MESSAGING_FDS * MESSAGING_FDS * loops


def timed(argv):
    """(perf's Total time, CPU seconds of the benchmark's processes) of one run."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    wall = run(argv)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)


def measure_plain(workloads, repeat):
    """{workload: CPU seconds of each plain run}."""
    return {name: [timed(argv)[1] for _ in range(repeat)] for name, argv in workloads.items()}


def stats_delta(before, after):
    return {(probe, prog): (after[probe][prog][0] - ns, after[probe][prog][1] - cnt)
            for probe, progs in before.items() for prog, (ns, cnt) in progs.items()}


def measure_programs(session, workloads, repeat):
    """{workload: {"ops", "wall_s", "programs": {(probe, prog): (ns, cnt)}}}."""
    out = {}
    for name, argv in workloads.items():
        total, walls, cpus = {}, [], []
        for _ in range(repeat):
            before = session.program_stats()
            wall, cpu = timed(argv)
            walls.append(wall)
            cpus.append(cpu)
            for key, (ns, cnt) in stats_delta(before, session.program_stats()).items():
                t = total.get(key, (0, 0))
                total[key] = (t[0] + ns, t[1] + cnt)
        out[name] = {"ops": ops(argv) * repeat, "wall_s": sum(walls),
                     "wall_median_s": statistics.median(walls), "cpu_s": cpus, "programs": total}
    return out


def cpu_seconds(pid):
    """utime + stime of a process (all its threads, exited ones included)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_serve(probes, idle_s, scrapes):
    """serve's CPU: seconds per second without scrapes, seconds per scrape."""
    with Serve(1e9, probes) as serve:     # no background scrapes: this loop scrapes
        pid = serve.proc.pid
        c0 = cpu_seconds(pid)
        time.sleep(idle_s)
        c1 = cpu_seconds(pid)
        for _ in range(scrapes):
            scrape(serve.url)
        c2 = cpu_seconds(pid)
    return {"idle_cpu_per_s": (c1 - c0) / idle_s, "cpu_per_scrape": (c2 - c1) / scrapes}


def rows(result, serve, every):
    """Table rows (probe, program, events/op, ns/event, ns/op) and the total ns/op."""
    n, out = result["ops"], []
    for (probe, prog), (ns, cnt) in sorted(result["programs"].items()):
        out.append((probe, prog, cnt / n, ns / cnt if cnt else 0.0, ns / n))
    if serve is not None:
        cpu_per_s = serve["idle_cpu_per_s"] + serve["cpu_per_scrape"] / every
        out.append(("serve", f"user space, 1 scrape/{every:g} s", None, None,
                    cpu_per_s * result["wall_s"] / n * 1e9))
    return out, sum(r[4] for r in out)


def print_table(name, result, serve, every):
    table, total = rows(result, serve, every)
    wall = result["wall_s"] / result["ops"] * 1e9
    print(f"\n{name}: {result['ops']} ops, {wall:.0f} ns/op wall with probes")
    print(f"{'probe':<9}{'program':<44}{'events/op':>10}{'ns/event':>10}{'ns/op':>9}"
          f"{'share':>7}")
    for probe, prog, per_op, per_event, ns_op in table:
        ev = f"{per_op:10.3f}{per_event:10.1f}" if per_op is not None else " " * 20
        share = ns_op / total * 100 if total else 0.0
        print(f"{probe:<9}{prog:<44}{ev}{ns_op:9.1f}{share:6.1f}%")
    print(f"{'total':<53}{'':>20}{total:9.1f}  ({total / wall * 100:.1f}% of the wall ns/op)")
    if result.get("plain_cpu_s"):
        plain, probed = (statistics.median(result[k]) * 1e9 / (result["ops"] / len(result[k]))
                         for k in ("plain_cpu_s", "cpu_s"))
        print(f"benchmark CPU time per op (medians, tracepoint dispatch included): plain "
              f"{plain:.0f} ns, with probes {probed:.0f} ns, ratio {probed / plain:.3f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5, help="runs of each workload")
    ap.add_argument("--idle", type=float, default=10.0,
                    help="seconds serve runs without scrapes")
    ap.add_argument("--scrapes", type=int, default=30, help="scrapes timed")
    ap.add_argument("--every", type=float, default=1.0,
                    help="scrape interval the user-space row assumes (s)")
    ap.add_argument("--workload", action="append", default=[],
                    help="only workloads whose name contains this (repeatable)")
    ap.add_argument("--no-serve", action="store_true", help="skip the user-space part")
    ap.add_argument("--json", metavar="FILE", help="also write the figures here")
    ap.add_argument("--cpus", type=int, default=0,
                    help="size the maps for a guest of this many CPUs (one node, one LLC) "
                         "to see what handlers that walk CPUs would cost there")
    ap.add_argument("--bpf", metavar="DIR",
                    help="load the programs from DIR instead (an older bpf/, to compare)")
    ap.add_argument("probes", nargs="*", help="the probes to load (default: all)")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("needs root (BPF)")
    root = SysRoot("/")
    workloads = {name: argv for name, argv in {**WORKLOADS, **PINNED}.items()
                 if not args.workload or any(w in name for w in args.workload)}
    plain = measure_plain(workloads, args.repeat)
    previous = STATS_SYSCTL.read_text().strip()
    STATS_SYSCTL.write_text("1")
    try:
        topology = read_topology(root)
        if args.cpus > len(topology.cpus):
            topology = Topology(nodes=(Node(0, tuple(range(args.cpus)), 0, (10,)),))
        if args.bpf:
            session_mod.BPF_DIR = Path(args.bpf).resolve()
        session = Session(args.probes, root, 0, topology).start()
        try:
            print("loaded: " + ", ".join(session.loaded), file=sys.stderr)
            results = measure_programs(session, workloads, args.repeat)
            for name, cpu in plain.items():
                results[name]["plain_cpu_s"] = cpu
        finally:
            session.close()
    finally:
        STATS_SYSCTL.write_text(previous)
    serve = None if args.no_serve else measure_serve(args.probes, args.idle, args.scrapes)
    for name, result in results.items():
        print_table(name, result, serve, args.every)
    if serve is not None:
        print(f"\nserve user space: {serve['cpu_per_scrape'] * 1e3:.1f} ms CPU per scrape, "
              f"{serve['idle_cpu_per_s'] * 1e3:.2f} ms CPU per s between scrapes")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    if args.json:
        doc = {name: {**{k: v for k, v in r.items() if k != "programs"},
                      "programs": [[p, f, ns, cnt] for (p, f), (ns, cnt) in
                                   sorted(r["programs"].items())]}
               for name, r in results.items()}
        doc = {"workloads": doc, "serve": serve, "every": args.every,
               "command": " ".join(sys.argv)}
        Path(args.json).write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
