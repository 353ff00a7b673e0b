"""bpf tier: the probes loaded by bcc on the live machine (a KVM guest)."""

import ctypes
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import VNUMA

from vnuma_sched.probes import catalog, loader, spec
from vnuma_sched.probes.classify import node_cpu_slots
from vnuma_sched.probes.events import BPF_DIR, MigrateEvent
from vnuma_sched.probes.session import Session
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology, read_topology

pytestmark = pytest.mark.bpf

WORKLOAD = [sys.executable, str(Path(__file__).parent / "workloads" / "sleepwake.py")]
FLIP = [sys.executable, str(Path(__file__).parent / "workloads" / "affinityflip.py")]
BTF = Path("/sys/kernel/btf/vmlinux")

# The functions that implement vcpu_is_preempted() in a guest the preempt probe can
# hook: KVM's steal-time one and the series' debug emulation.
PREEMPTED_FNS = ("__raw_callee_save___kvm_vcpu_is_preempted", "__kvm_vcpu_is_preempted",
                 "__kvm_debug_vcpu_is_preempted", "__vnuma_emul_vcpu_is_preempted")


def kernel_symbols():
    return {line.split()[2] for line in Path("/proc/kallsyms").read_text().splitlines()}


def test_probes_report_availability_consistently(tracefs):
    res = subprocess.run([VNUMA, "probes", "--json"], capture_output=True, text=True)
    rows = {r["probe"]: r for r in json.loads(res.stdout)["probes"]}
    assert rows["ipi"]["available"] and rows["migrate"]["available"]
    # what the preempt probe needs, read here from tracefs and kallsyms, decides the one
    # outcome (and reason) to expect
    preempt, symbols = rows["preempt"], kernel_symbols()
    if not (tracefs / "kprobe_events").exists():
        expected = "no kprobes"
    elif "available_idle_cpu" not in symbols:
        expected = "no kernel symbol available_idle_cpu"
    elif not symbols.intersection(PREEMPTED_FNS):
        expected = "no vcpu_is_preempted implementation"
    else:
        expected = None
    if expected is None:
        assert preempt["available"], preempt
    else:
        assert not preempt["available"] and expected in preempt["reason"], preempt


def test_top_json_counts_wake_ipis_and_migrations(tracefs):
    load = subprocess.Popen(WORKLOAD + ["2", "4000"])
    try:
        res = subprocess.run([VNUMA, "top", "--json", "ipi", "migrate", "halt", "0.5", "3"],
                             capture_output=True, text=True, timeout=120)
    finally:
        load.wait(timeout=120)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line) for line in res.stdout.splitlines()]
    assert len(recs) == 3 and all(r["type"] == "interval" and r["dt"] > 0 for r in recs)
    wake_ipis = sum(c[0] + c[1] for r in recs for c in r["probes"]["ipi"]["per_cpu"])
    migrations = sum(v for r in recs for cause in r["probes"]["migrate"]["matrix"].values()
                     for k in ("busy", "idle") for row in cause[k] for v in row)
    idle = sum(map(sum, (c for r in recs for c in r["probes"]["halt"]["count"])))
    assert wake_ipis > 0 and migrations > 0 and idle > 0


def test_record_keeps_exit_code_and_writes_documented_jsonl(tracefs, tmp_path):
    out = tmp_path / "rec.jsonl"
    res = subprocess.run([VNUMA, "record", "-o", str(out), "--interval", "0.5", "--events",
                          "--", *WORKLOAD, "2", "1500", "7"],
                         capture_output=True, text=True, timeout=180)
    assert res.returncode == 7, res.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert lines[0]["type"] == "meta" and lines[-1]["type"] == "end"
    assert lines[-1]["exit_code"] == 7 and "lost" in lines[-1]
    meta = lines[0]
    assert {"kernel", "topology", "cmdline", "gates", "probes"} <= set(meta)
    assert meta["probes"]["migrate"]["available"]
    assert any(rec["type"] == "event" for rec in lines)
    rep = subprocess.run([VNUMA, "report", "--json", str(out)], capture_output=True,
                         text=True)
    doc = json.loads(rep.stdout)
    assert doc["complete"] and doc["metrics"]["wake_ipis"]["total"] > 0


def test_every_available_probe_loads(tracefs):
    """All probes this kernel supports compile, attach and report their documented keys."""
    avail = json.loads(subprocess.run([VNUMA, "probes", "--json"], capture_output=True,
                                      text=True).stdout)["probes"]
    names = [p["probe"] for p in avail if p["available"]]
    res = subprocess.run([VNUMA, "top", "--json", *names, "0.3", "1"], capture_output=True,
                         text=True, timeout=180)
    assert res.returncode == 0, res.stderr
    probes = json.loads(res.stdout)["probes"]
    keys = {"ipi": {"per_cpu"}, "halt": {"count", "ns", "hist", "pvspin"},
            "hltexit": {"hlt", "wakeups", "kicks"}, "migrate": {"matrix"},
            "preempt": {"checked", "rejected"}, "steal": {"ms"}}
    if BTF.exists():   # the raw tracepoint's maps (cross_node_avoidable)
        keys["migrate"] |= {"avoidable", "avoid_seen"}
    for name in names:
        assert keys[name] <= set(probes[name]), name


# --- cross_node_avoidable: the raw tracepoint on this machine ------------------------


def test_migrate_examines_every_migration_through_the_raw_tracepoint(tracefs):
    """On this one-node machine nothing is avoidable, but the raw tracepoint handler
    must run for every migration: the examined counter grows with forced moves."""
    rows = {r["probe"]: r for r in json.loads(subprocess.run(
        [VNUMA, "probes", "--json"], capture_output=True, text=True).stdout)["probes"]}
    if not BTF.exists():   # the one legitimate reason: then it must say so
        assert "CONFIG_DEBUG_INFO_BTF" in rows["migrate"]["unsupported"]["cross_node_avoidable"]
        return
    assert rows["migrate"]["available"] and rows["migrate"]["unsupported"] == {}
    load = subprocess.Popen(FLIP + ["40", "0.05"], stdout=subprocess.DEVNULL)
    try:
        res = subprocess.run([VNUMA, "top", "--json", "migrate", "0.5", "4"],
                             capture_output=True, text=True, timeout=120)
    finally:
        load.wait(timeout=60)
    assert res.returncode == 0, res.stderr
    recs = [json.loads(line)["probes"]["migrate"] for line in res.stdout.splitlines()]
    seen = [sum(r["avoid_seen"][i] for r in recs) for i in range(4)]
    moves = sum(v for r in recs for cause in r["matrix"].values() for k in ("busy", "idle")
                for row in cause[k] for v in row)
    avoidable = sum(v for r in recs for mx in r["avoidable"].values() for row in mx
                    for v in row)
    assert seen[0] >= 20, seen            # the flips alone are 40 forced moves in 2 s
    assert abs(seen[0] - moves) <= max(5, moves // 20), (seen, moves)  # same handler
    assert seen[2] == seen[3] == 0        # nothing unreadable
    nodes = len(list(Path("/sys/devices/system/node").glob("node[0-9]*")))
    if nodes <= 1:
        assert seen[1] == 0 and avoidable == 0


def _load_migrate_two_fake_nodes(on_event):
    """The migrate probe loaded here as if CPU 0 and CPU 1 were two nodes."""
    probe = spec.PROBES["migrate"]
    avail = catalog.availability(probe, catalog.KernelFacts(SysRoot("/"), 0))
    assert avail.ok and avail.flags["HAVE_AVOIDABLE"] == 1, avail
    topo = Topology(nodes=(Node(0, (0,), 1, (10, 21)), Node(1, (1,), 1, (21, 10))))
    context = {"topology": topo, "cpu_node": topo.cpu_node, "llc": {},
               "node_cpus": node_cpu_slots(topo, 2, 2, 1)}

    def event(cpu, data, size):
        on_event(ctypes.cast(data, ctypes.POINTER(MigrateEvent)).contents.to_dict())

    return loader.LoadedProbe(probe, avail, catalog.cflags(avail, 2, 2, True, 1), context,
                              BPF_DIR, on_event=event)


def _spin(cpus):
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    os.sched_setaffinity(proc.pid, cpus)
    return proc


def _wait_for(lp, events, pred, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        lp.poll(50)
        if any(pred(e) for e in events):
            return True
    return False


@pytest.mark.skipif(not BTF.exists(), reason="no BTF: cross_node_avoidable unsupported")
def test_avoidable_counts_a_move_off_a_node_with_an_idle_allowed_cpu(tracefs):
    """CPU 0 and 1 as two nodes; CPU 0 kept busy by a pinned spinner (so no cpu_idle
    event rewrites it) and marked idle in the probe's map. A task pinned to its
    destination is not avoidable; the same task allowed on both CPUs and pulled from
    CPU 0 to CPU 1 by the load balancer is, in cell [cause][node0][node1]."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs CPUs 0 and 1")
    events = []
    lp = _load_migrate_two_fake_nodes(events.append)
    spinner, task = _spin({0}), _spin({1})
    idle = lp.bpf["cpu_in_idle"]

    def cpu0_idle():
        """Mark CPU 0 idle; it stays so while the spinner keeps CPU 0 out of idle
        (written again each time, in case it had not started running yet)."""
        idle[idle.Key(0)] = idle.Leaf(1)

    def moved(allowed, avoidable=None):
        return lambda e: (e["pid"] == task.pid and e["orig_cpu"] == 0 and
                          e["allowed"] == allowed and
                          avoidable in (None, e["avoidable"]))

    try:
        time.sleep(0.3)                       # both spinning
        os.sched_setaffinity(task.pid, {0})   # move 1 -> 0
        time.sleep(0.1)
        cpu0_idle()
        os.sched_setaffinity(task.pid, {1})   # move 0 -> 1, allowed only there
        pinned = _wait_for(lp, events, moved(0b10), 3)
        pulled = False
        for _ in range(10):                   # the balancer's pull 0 -> 1
            os.sched_setaffinity(task.pid, {0})
            time.sleep(0.1)
            cpu0_idle()
            os.sched_setaffinity(task.pid, {0, 1})
            if _wait_for(lp, events, moved(0b11, True), 2):
                pulled = True
                break
        snap = lp.snapshot()
    finally:
        spinner.kill()
        task.kill()
        spinner.wait()
        task.wait()
        lp.close()
    mine = [e for e in events if e["pid"] == task.pid]
    assert pinned and pulled, mine
    assert all(e["cross_node"] for e in mine)
    assert all(not e["avoidable"] for e in mine if e["allowed"] == 1 << e["dest_cpu"])
    cells = [mx[0][1] for mx in snap["avoidable"].values()]
    assert sum(cells) >= 1 and snap["avoid_seen"][1] >= len(mine)


def test_a_raw_tracepoint_that_cannot_attach_leaves_the_rest_running(tracefs):
    """The fallback: migrate reloads without the raw tracepoint, counts migrations with
    the classic tracepoint and reports cross_node_avoidable unsupported with the error."""
    root = SysRoot("/")
    session = Session(["migrate"], root, 0, read_topology(root))
    status = session.status["migrate"]
    if not status.flags.get("HAVE_AVOIDABLE"):
        pytest.skip("no BTF: the raw tracepoint is not even tried")
    status.attach["migrate_raw"] = "vnuma_sched_no_such_tracepoint"
    session.start()
    try:
        assert session.running() == ["migrate"]
        why = session.status["migrate"].unsupported["cross_node_avoidable"]
        assert why.startswith("raw tracepoint sched_migrate_task failed:")
        before = session.sample()["migrate"]
        load = subprocess.run(FLIP + ["10", "0.03"], stdout=subprocess.DEVNULL, timeout=60)
        after = session.sample()["migrate"]
    finally:
        session.close()
    assert load.returncode == 0 and "avoidable" not in after
    total = lambda s: sum(v for c in s["matrix"].values() for k in c.values()  # noqa: E731
                          for row in k for v in row)
    assert total(after) - total(before) >= 5
