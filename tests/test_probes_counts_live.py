"""bpf tier: what the cheaper probe programs count, on the live machine.

Each test provokes events whose classification is known in advance (a sleeping
task woken onto another CPU, a running task moved by an affinity change, IPIs
sent between CPUs, wake-ups) and checks the counters, for every way the
migrate probe can be built (the raw tracepoint, and the classic tracepoint it
falls back to without BTF).
"""

import os
import subprocess
import sys
import time

import pytest

from vnuma_sched.probes import catalog, loader, spec
from vnuma_sched.probes.classify import node_cpu_slots
from vnuma_sched.probes.events import BPF_DIR
from vnuma_sched.probes.session import Session
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology, read_topology

pytestmark = pytest.mark.bpf

SLEEPER = [sys.executable, "-c", "import sys; sys.stdin.buffer.read(1)"]
SPINNER = [sys.executable, "-c", "while True: pass"]


def two_cpus():
    if not {0, 1} <= os.sched_getaffinity(0):
        pytest.skip("needs CPUs 0 and 1")


def session(names, classic=False):
    """A started session with migration events; ``classic``: the migrate probe built
    without its raw tracepoint (as without BTF)."""
    root = SysRoot("/")
    s = Session(names, root, 0, read_topology(root), with_events=True)
    if classic:
        if not s.status["migrate"].flags.get("HAVE_AVOIDABLE"):
            pytest.skip("no BTF: the classic build is the only one, tested as 'raw'")
        s.status["migrate"].attach["migrate_raw"] = "vnuma_sched_no_such_tracepoint"
    s.start()
    assert "migrate" not in names or "migrate" in s.loaded, s.status
    return s


def state(pid):
    stat = open(f"/proc/{pid}/stat").read()
    return stat[stat.rindex(")") + 2]


def wait_state(pid, wanted, seconds=10):
    deadline = time.monotonic() + seconds
    while state(pid) not in wanted:
        assert time.monotonic() < deadline, f"{pid} never in state {wanted}"
        time.sleep(0.01)


def moves_of(s, pid, seconds=3):
    """The migration events of ``pid`` (polled until one arrives or ``seconds``)."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        s.sample()
        out += [e for e in s.take_events() if e["pid"] == pid]
        if out:
            time.sleep(0.2)        # the rest of the burst
            s.sample()
            return out + [e for e in s.take_events() if e["pid"] == pid]
        time.sleep(0.05)
    return out


@pytest.mark.parametrize("build", ["raw", "classic"])
def test_a_sleeping_task_woken_onto_another_cpu_moves_by_wake(tracefs, build):
    """Pinned to CPU 0, asleep on a pipe, re-pinned to CPU 1 (a sleeping task is
    not moved then) and woken: try_to_wake_up() moves it 0 -> 1, cause wake."""
    two_cpus()
    s = session(["migrate"], classic=build == "classic")
    child = subprocess.Popen(SLEEPER, stdin=subprocess.PIPE)
    try:
        os.sched_setaffinity(child.pid, {0})
        wait_state(child.pid, "S")
        time.sleep(0.2)                         # settled on CPU 0
        s.sample()
        s.take_events()
        os.sched_setaffinity(child.pid, {1})
        child.stdin.write(b"x")
        child.stdin.flush()
        moves = moves_of(s, child.pid)
    finally:
        child.kill()
        child.wait()
        s.close()
    woken = [e for e in moves if (e["orig_cpu"], e["dest_cpu"]) == (0, 1)]
    assert woken and all(e["cause"] == "wake" for e in woken), moves


@pytest.mark.parametrize("build", ["raw", "classic"])
def test_a_running_task_moved_by_its_affinity_is_not_a_wake(tracefs, build):
    """A spinning task re-pinned from CPU 0 to CPU 1 is moved by the stopper while
    runnable: cause other (no balancing, no wake-up)."""
    two_cpus()
    s = session(["migrate"], classic=build == "classic")
    spinner = subprocess.Popen(SPINNER)
    try:
        os.sched_setaffinity(spinner.pid, {0})
        wait_state(spinner.pid, "R")
        time.sleep(0.3)
        s.sample()
        s.take_events()
        os.sched_setaffinity(spinner.pid, {1})
        moves = moves_of(s, spinner.pid)
    finally:
        spinner.kill()
        spinner.wait()
        s.close()
    forced = [e for e in moves if (e["orig_cpu"], e["dest_cpu"]) == (0, 1)]
    assert forced and all(e["cause"] == "other" for e in forced), moves


WORKLOAD = [sys.executable, os.path.join(os.path.dirname(__file__), "workloads", "sleepwake.py")]


def test_ipis_sent_per_pair_match_the_ipis_received(tracefs):
    """ipi_send_cpu per (sender, receiver) pair: rows [src, dst, count > 0], one per
    pair; what was sent to a CPU arrived there as a reschedule or call-function-single
    IPI (both counted on entry), give or take the IPIs in flight at the edges."""
    s = session(["ipi"])
    if not s.status["ipi"].flags.get("HAVE_IPI_SEND_CPU"):
        s.close()
        pytest.skip("no ipi:ipi_send_cpu (before 6.3): sent IPIs are not counted")
    try:
        before = s.sample()["ipi"]
        old = {(r[0], r[1]): r[2] for r in before["sent"]}
        # how many wake-ups need an IPI depends on the host (a CPU that polls in
        # idle needs none): run the workload until enough were sent, or 5 times
        for _ in range(5):
            subprocess.run(WORKLOAD + ["2", "1500"], check=True, timeout=120)
            after = s.sample()["ipi"]
            rows = after["sent"]
            sent = sum(r[2] - old.get((r[0], r[1]), 0) for r in rows)
            if sent > 100:
                break
        counters = s.sample(listings=False)["ipi"]     # what serve reads
    finally:
        s.close()
    assert "sent" not in counters and len(counters["per_cpu"]) == len(after["per_cpu"])
    cpus = set(read_topology(SysRoot("/")).cpus)
    assert rows == sorted(rows) and len({(r[0], r[1]) for r in rows}) == len(rows)
    assert all(r[0] in cpus and r[1] in cpus and r[2] > 0 for r in rows), rows
    received = sum(a[0] + a[1] - b[0] - b[1]
                   for a, b in zip(after["per_cpu"], before["per_cpu"]))
    assert sent > 100 and abs(sent - received) <= max(20, received // 20), (sent, received)


def _wake(sleeper, times):
    """Wake ``sleeper`` (reading one byte at a time) ``times`` times."""
    for _ in range(times):
        wait_state(sleeper.pid, "S")
        sleeper.stdin.write(b"x")
        sleeper.stdin.flush()
    wait_state(sleeper.pid, "S")


@pytest.mark.parametrize("build", ["raw", "classic"])
def test_wake_ups_onto_a_busy_cpu_beside_an_idle_one(tracefs, build):
    """CPUs 0 and 1 as one LLC, both kept busy by pinned spinners (so neither enters
    idle and rewrites what the test sets). A task pinned to CPU 0 woken N times:
    none counted as placed beside an idle CPU while CPU 1 reads busy; all N once
    CPU 1 reads idle (set in the probe's maps as an idle entry would)."""
    two_cpus()
    probe = spec.PROBES["migrate"]
    avail = catalog.availability(probe, catalog.KernelFacts(SysRoot("/"), 0))
    if build == "classic":
        if not avail.flags.get("HAVE_AVOIDABLE"):
            pytest.skip("no BTF: the classic build is the only one, tested as 'raw'")
        spec._avoidable_unsupported(avail, "test")
    topo = Topology(nodes=(Node(0, (0, 1), 1, (10,)),))
    context = {"topology": topo, "cpu_node": topo.cpu_node, "llc": {0: 0, 1: 0},
               "node_cpus": node_cpu_slots(topo, 2, 1, 2)}
    lp = loader.LoadedProbe(probe, avail, catalog.cflags(avail, 2, 1, False, 2), context,
                            BPF_DIR)
    spinners = [subprocess.Popen(SPINNER) for _ in range(2)]
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys\nwhile sys.stdin.buffer"
                                ".read(1): pass"], stdin=subprocess.PIPE)
    idle, llc_idle = lp.bpf["cpu_in_idle"], lp.bpf["llc_idle"]

    def cpu1_reads(value):
        idle[idle.Key(1)] = idle.Leaf(value)
        idle[idle.Key(0)] = idle.Leaf(0)
        llc_idle[llc_idle.Key(0)] = llc_idle.Leaf(value)

    def placed(n):
        before = lp.snapshot()["wake_place"]
        _wake(sleeper, n)
        after = lp.snapshot()["wake_place"]
        return [a - b for a, b in zip(after, before)]

    try:
        for cpu, proc in enumerate(spinners):
            os.sched_setaffinity(proc.pid, {cpu})
        os.sched_setaffinity(sleeper.pid, {0})
        time.sleep(0.5)                 # the spinners own their CPUs
        cpu1_reads(0)
        busy = placed(20)
        cpu1_reads(1)
        beside_idle = placed(20)
    finally:
        for proc in (*spinners, sleeper):
            proc.kill()
            proc.wait()
        lp.close()
    assert busy[0] >= 20 and busy[1] == 0, busy
    assert beside_idle[0] >= 20 and beside_idle[1] >= 20, beside_idle
