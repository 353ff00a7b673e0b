"""share (parking vCPUs) on fixture trees: the target rules, the plan, bad input that
changes nothing, apply + revert byte for byte, faults mid-apply rolled back, refused
IRQs reported by name, status rendering, doctor's parking facts."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import share_trees as ST
from click.testing import CliRunner
from helpers import REPO, golden, one_line

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.share import busy, park
from vnuma_sched.share import kernel as KS
from vnuma_sched.share import plan as SP
from vnuma_sched.share import target as T
from vnuma_sched.system.doctor import DoctorEnv, check_parking
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import engine
from vnuma_sched.tunables import journal as J
from vnuma_sched.tunables import knobs as K

JOURNAL = "run/vnuma_sched/share/journal.jsonl"


@pytest.fixture
def root(tmp_path, monkeypatch):
    ST.emulate_kernel(monkeypatch.setattr)
    return ST.build(tmp_path / "root")


def cli(root, *args):
    return CliRunner().invoke(main, ["--root", str(root), *args])


def written(root):
    """The tree without what the kernel derives (effective affinities and CPUs, which
    it chooses itself) and without the toolkit's own state."""
    return {k: v for k, v in ST.snapshot(root).items()
            if "effective" not in k and not k.startswith("run/vnuma_sched")}


def choose(root, **kw):
    sysroot = SysRoot(root)
    return T.choose(read_topology(sysroot), KS.online(sysroot), **kw)


# --- the target ------------------------------------------------------------------------

def test_per_node_keeps_the_lowest_cpus_of_each_node(root):
    t = choose(root, per_node=1)
    assert (t.used_list, t.parked_list) == ("0,2", "1,3")
    assert [n.to_dict() for n in t.nodes] == [{"node": 0, "used": [0], "parked": [1]},
                                              {"node": 1, "used": [2], "parked": [3]}]


def test_use_parks_the_other_online_cpus(root):
    assert choose(root, use="0-1,3").parked_list == "2"


@pytest.mark.parametrize("use, needle", [
    ("0,9", "CPU 9 not online here (online: 0-3)"),
    ("0-", "bad cpulist element"),
    ("0,x", "bad cpulist element"),
    ("3-1", "bad cpulist range"),
    ("", "empty CPU list"),
    ("1,2", "CPU 0 cannot be parked"),
    ("0,1", "node 1 would have no CPU in use"),
    ("0-3", "nothing to park"),
])
def test_bad_use_is_refused(root, use, needle):
    with pytest.raises(BadInput, match=needle.replace("(", r"\(").replace(")", r"\)")):
        choose(root, use=use)


def test_an_empty_node_when_allowed(root):
    assert choose(root, use="0,1", allow_empty_node=True).parked_list == "2-3"


def test_exactly_one_way_to_choose(root):
    with pytest.raises(BadInput, match="exactly one"):
        choose(root, use="0", per_node=1)
    with pytest.raises(BadInput, match="at least 1"):
        choose(root, per_node=0)


@pytest.mark.parametrize("args, needle", [
    (["--use", "0,7"], "CPU 7 not online"),
    (["--use", "0;2"], "bad cpulist element"),
    (["--use", "2-3"], "CPU 0 cannot be parked"),
    (["--per-node", "0"], "at least 1"),
    (["--per-node", "2"], "nothing to park"),
    ([], "exactly one"),
])
@pytest.mark.parametrize("command", ["plan", "apply"])
def test_bad_input_changes_nothing(root, command, args, needle):
    before = ST.snapshot(root)
    one_line(cli(root, "share", command, *args), 2, needle)
    assert ST.snapshot(root) == before


def test_no_cgroup2_is_a_missing_feature_and_changes_nothing(root):
    (root / "proc/mounts").write_text("proc /proc proc rw 0 0\n")
    before = ST.snapshot(root)
    one_line(cli(root, "share", "apply", "--per-node", "1"), 5, "cgroup v2 not mounted")
    assert ST.snapshot(root) == before


# --- the plan --------------------------------------------------------------------------

def test_plan_rows_in_write_order(root):
    rows = {(r.knob, r.paths[0] if r.paths else ""): r
            for r in SP.plan(SysRoot(root), choose(root, per_node=1))}
    assert rows[("share.group.cpus", f"{ST.PARKED}/cpuset.cpus")].target == "1,3"
    assert rows[("share.group.partition", f"{ST.PARKED}/cpuset.cpus.partition")].target \
        == "isolated"
    assert rows[("share.wq_cpumask", "/sys/devices/virtual/workqueue/cpumask")].target == "5"
    irq4 = rows[("share.irq", "/proc/irq/4/smp_affinity_list")]
    assert (irq4.current, irq4.target, irq4.action) == ("0-3", "0,2", "set")
    assert rows[("share.irq", "/proc/irq/0/smp_affinity_list")].action == "unchanged"
    assert rows[("share.kthread", "/proc/40/status")].target == "0"    # 0-1 -> 0
    assert rows[("share.kthread", "/proc/15/status")].action == "unsupported"
    assert rows[("share.kthread", "/proc/42/status")].target == "0,2"   # 3 -> the used
    # per-CPU kthreads and threads on used CPUs only are not touched
    assert ("share.kthread", "/proc/14/status") not in rows
    assert ("share.kthread", "/proc/41/status") not in rows
    order = [r.knob for r in SP.plan(SysRoot(root), choose(root, per_node=1))]
    # what the kernel changes with a partition is written (and journaled) before it
    assert order.index("share.kthread") < order.index("share.wq_cpumask") \
        < order.index("share.irq") < order.index("share.group") \
        < order.index("share.group.cpus") < order.index("share.group.partition") \
        == len(order) - 1


def test_plan_json(root):
    res = cli(root, "share", "plan", "--per-node", "1", "--json")
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["target"]["parked"] == "1,3"
    assert {r["action"] for r in doc["plan"]} <= {"set", "unchanged", "unsupported"}


@pytest.mark.parametrize("cpus, like, text", [
    ([0, 2], "f", "5"), ([0, 2], "", "5"), ([0, 2], "00000000,0000000f", "00000000,00000005"),
    (list(range(40)), "", "ff,ffffffff")])
def test_cpumask_hex(cpus, like, text):
    assert SP.cpumask_hex(cpus, like) == text
    assert SP.mask_cpus(text) == cpus


# --- apply and revert ------------------------------------------------------------------

def test_apply_then_revert_restores_every_byte(root):
    before = written(root)
    res = cli(root, "share", "apply", "--per-node", "1")
    assert res.exit_code == 0, res.output
    assert (root / JOURNAL).exists()
    park_dir = root / ST.PARKED.lstrip("/")
    assert (park_dir / "cpuset.cpus.partition").read_text().strip() == "isolated"
    assert (park_dir / "cpuset.cpus").read_text().strip() == "1,3"
    assert "cpuset" in (root / "sys/fs/cgroup/cgroup.subtree_control").read_text().split()
    assert (root / "proc/irq/4/smp_affinity_list").read_text().strip() == "0,2"
    assert "Cpus_allowed_list:\t0,2" in (root / "proc/2/status").read_text()
    res = cli(root, "share", "revert")
    assert res.exit_code == 0, res.output
    assert written(root) == before
    assert not park_dir.exists() and not (root / JOURNAL).exists()


def test_refused_irq_is_reported_by_name_not_fatal(root):
    res = cli(root, "share", "apply", "--per-node", "1", "--json")
    assert res.exit_code == 0, res.output
    refused = json.loads(res.output)["refused"]
    assert refused == [{"path": f"/proc/irq/{ST.MANAGED_IRQ}/smp_affinity_list",
                        "what": "irq 25 (virtio1-req.0)",
                        "why": "write failed: Input/output error"}]


def test_apply_twice_needs_replace(root):
    assert cli(root, "share", "apply", "--per-node", "1").exit_code == 0
    one_line(cli(root, "share", "apply", "--use", "0-2"), 2, "parked already")
    res = cli(root, "share", "apply", "--use", "0-2", "--replace")
    assert res.exit_code == 0, res.output
    assert (root / ST.PARKED.lstrip("/") / "cpuset.cpus").read_text().strip() == "3"


def test_revert_without_journal(root):
    one_line(cli(root, "share", "revert"), 2, "nothing to revert")


def test_tune_and_share_journals_are_apart(root):
    assert cli(root, "share", "apply", "--per-node", "1").exit_code == 0
    one_line(cli(root, "tune", "revert"), 2, "nothing to revert")
    assert (root / JOURNAL).exists()


def test_invalid_partition_rolls_back(root, monkeypatch):
    ST.emulate_kernel(monkeypatch.setattr, invalid="Cpu list in cpuset.cpus not exclusive")
    before = written(root)
    line = one_line(cli(root, "share", "apply", "--per-node", "1"), 1,
                    "isolated invalid (Cpu list in cpuset.cpus not exclusive)",
                    "every earlier write was restored")
    assert "share revert" not in line
    assert written(root) == before
    assert not (root / JOURNAL).exists()


@pytest.mark.parametrize("at", [1, 4, 7, 10])
@pytest.mark.parametrize("fault", [KeyboardInterrupt, OSError])
def test_fault_mid_apply_rolls_back(root, monkeypatch, at, fault):
    """The at-th write raises (Ctrl-C or SIGTERM, which the engine turns into the same;
    or a crash of a write): everything written before is restored."""
    real = SysRoot.write
    calls = [0]

    def failing(self, abspath, value):
        calls[0] += 1
        if calls[0] == at:
            raise fault("injected")
        real(self, abspath, value)

    before = written(root)
    monkeypatch.setattr(SysRoot, "write", failing)
    target = choose(root, per_node=1)
    with pytest.raises((engine.ApplyError, engine.ApplyInterrupted)) as err:
        park.apply(SysRoot(root), target)
    assert "every earlier write was restored" in str(err.value)
    monkeypatch.setattr(SysRoot, "write", real)
    assert written(root) == before
    assert not (root / JOURNAL).exists()


def test_journal_with_a_foreign_path_is_not_trusted(root):
    assert cli(root, "share", "apply", "--per-node", "1").exit_code == 0
    j = root / JOURNAL
    j.write_text(j.read_text().replace("/proc/irq/4/smp_affinity_list", "/etc/passwd"))
    one_line(cli(root, "share", "revert"), 3, "corrupt journal", "not a path of share.irq")


# --- status and doctor -----------------------------------------------------------------

def test_status_before_and_after(root):
    res = cli(root, "share", "status")
    assert res.exit_code == 0 and "no parked vCPUs" in res.output
    assert cli(root, "share", "apply", "--per-node", "1").exit_code == 0
    res = cli(root, "share", "status")
    text = res.output.replace(json.loads(cli(root, "share", "status", "--json").output)
                              ["applied"]["created"], "CREATED")
    golden("share-status-2node.txt", text)
    doc = json.loads(cli(root, "share", "status", "--json").output)
    assert doc["partition"] == "isolated" and doc["parked"] == "1,3"
    assert [(n["used"], n["parked"]) for n in doc["nodes"]] == [("0", "1"), ("2", "3")]
    assert {m["name"] for m in doc["not_moved"]} == {"25 virtio1-req.0", "ksoftirqd/1",
                                                    "kworker/u8:0"}


def test_doctor_parking_facts(root):
    checks = {c.name: c for c in check_parking(DoctorEnv(sysroot=SysRoot(root), euid=0))}
    assert [checks[n].status for n in ("parking:cgroup2", "parking:cpuset",
                                       "parking:partitions", "parking:irq_affinity")] \
        == ["ok"] * 4
    (root / "sys/fs/cgroup/cgroup.controllers").write_text("cpu io memory\n")
    checks = {c.name: c for c in check_parking(DoctorEnv(sysroot=SysRoot(root), euid=0))}
    assert checks["parking:cpuset"].status == "missing"
    assert checks["parking:cpuset"].detail.startswith("unsupported: no cpuset controller")


# --- the journal: one batch per apply, crash safety -------------------------------------

def more_irqs(root, count):
    for n in range(100, 100 + count):
        for name in ("smp_affinity_list", "effective_affinity_list"):
            (root / f"proc/irq/{n}").mkdir(parents=True, exist_ok=True)
            (root / f"proc/irq/{n}/{name}").write_text("0-3\n")


def test_fsyncs_do_not_grow_with_the_writes(root, monkeypatch):
    """The writes are journaled in batches (one fsync each), not one fsync per write."""
    real, calls = J.os.fsync, []
    monkeypatch.setattr(J.os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])

    def fsyncs():
        calls.clear()
        applied = park.apply(SysRoot(root), choose(root, per_node=1))
        park.revert(SysRoot(root))
        return len(calls), applied.writes

    few = fsyncs()
    more_irqs(root, 40)
    many = fsyncs()
    assert many[1] == few[1] + 40 and many[0] == few[0]


def test_every_write_is_on_disk_in_the_journal_before_it_happens(root, monkeypatch):
    """At each write to the system, the journal's fsync'd part already names it."""
    jpath = root / JOURNAL
    synced = [0]
    real_fsync = J.os.fsync

    def fsync(fd):
        real_fsync(fd)
        if jpath.exists():
            synced[0] = jpath.stat().st_size

    def journaled(path, value):
        lines = jpath.read_bytes()[:synced[0]].decode().splitlines()
        recs = [json.loads(x) for x in lines if x.startswith('{"t":"write"')]
        assert any(r["path"] == path and K.known(r["knob"]).encode(r["new"]) == value
                   for r in recs), (path, value)

    def hooked(name, value_of):
        real = getattr(SysRoot, name)

        def fn(self, *args):
            path, value = value_of(*args)
            if not path.startswith("/run/") and not (name == "write"
                                                     and path.endswith("/status")):
                journaled(path, value)      # (a status file: set_affinity's, in a tree)
            return real(self, *args)
        monkeypatch.setattr(SysRoot, name, fn)

    monkeypatch.setattr(J.os, "fsync", fsync)
    hooked("write", lambda p, v: (p, str(v).strip()))
    hooked("mkdir", lambda p: (p, "1"))
    hooked("set_affinity", lambda pid, cpus: (f"/proc/{pid}/status",
                                              ",".join(map(str, cpus))))
    park.apply(SysRoot(root), choose(root, per_node=1))
    assert (root / ST.PARKED.lstrip("/") / "cpuset.cpus.partition").read_text().strip() \
        == "isolated"


KILL = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import share_trees
from vnuma_sched.share import busy
from vnuma_sched.share import kernel as KS, park, target as T
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import journal
share_trees.emulate_kernel(setattr)
r = SysRoot({root!r})
t = T.choose(read_topology(r), KS.online(r), per_node=1)
at = {at!r}
real_begin = journal.Writer.begin
def begin(self, batch):
    seqs = real_begin(self, batch)
    if at == "journaled":             # the first batch on disk, no write made yet
        os.kill(os.getpid(), signal.SIGKILL)
    return seqs
journal.Writer.begin = begin
def between(n):
    if n == at:
        os.kill(os.getpid(), signal.SIGKILL)
park.apply(r, t, between=between)
"""


@pytest.mark.parametrize("at", ["journaled", 1, 3, 6, 9])
def test_killed_mid_apply_then_revert_restores_every_byte(root, at):
    """SIGKILL at points of both batches (the cgroup is made by the 6th write): the
    journal on disk lets 'share revert' restore every value."""
    before = written(root)
    code = KILL.format(tests=str(Path(__file__).parent), root=str(root), at=at)
    res = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True)
    assert res.returncode == -signal.SIGKILL, res.stderr
    doc = J.load(park.store(SysRoot(root)))
    assert {e["state"] for e in doc.entries} == {"pending"}     # killed mid-batch
    if at != "journaled":
        assert written(root) != before
    res = cli(root, "share", "revert")
    assert res.exit_code == 0, res.output
    assert written(root) == before
    assert not (root / ST.PARKED.lstrip("/")).exists() and not (root / JOURNAL).exists()


def test_jiffies_from_schedstat(tmp_path):
    assert busy._jiffies(SysRoot(tmp_path)) is None
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/schedstat").write_text("version 16\ntimestamp 4295123456\ncpu0 0\n")
    assert busy._jiffies(SysRoot(tmp_path)) == 4295123456
