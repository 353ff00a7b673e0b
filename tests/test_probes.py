"""Probes without bcc or root: the C/Python mirror, parameters, availability,
classification (6.1 and 6.12 enum layouts), interval math, recordings, renderers."""

import json

import pytest
from click.testing import CliRunner
from helpers import golden, interval, write_recording

from vnuma_sched.cli.main import main
from vnuma_sched.cli.probes import _split_record_args, _split_top_args
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.probes import catalog, classify, recording, report, spec
from vnuma_sched.probes import events as E
from vnuma_sched.render import log2_hist_lines, report_text, top_text
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology


def test_python_mirror_matches_c_header():
    d = E.header_defines()
    assert [d[f"IPI_{n.upper()}"] for n in ("resched", "call_single", "call_func")] == [0, 1, 2]
    assert d["IPI_IDLE_NO_IPI"] == E.IPI_IDLE_NO_IPI and d["NR_IPI"] == E.NR_IPI
    for i, name in enumerate(E.CAUSE_NAMES):
        assert d[f"CAUSE_{name.upper()}"] == i
    assert d["NR_CAUSES"] == E.NR_CAUSES and d["IDLE_NEWLY"] == E.IDLE_NEWLY
    assert d["MAX_IDLE_STATES"] == E.MAX_IDLE_STATES and d["HIST_SLOTS"] == E.HIST_SLOTS
    text = (E.BPF_DIR / "vnuma.h").read_text()
    c_fields = [ln.split()[-1].rstrip(";").split("[")[0] for ln in
                text[text.index("struct migrate_event {"):].splitlines()[1:11]]
    assert c_fields == [f for f, _ in E.MigrateEvent._fields_]
    assert E.MigrateEvent.__dict__["comm"].size == 16


@pytest.mark.parametrize("value", ["1", 1.5, True, None, "7; system('x')"])
def test_bpf_parameters_must_be_integers(value):
    with pytest.raises(BadInput):
        catalog.int_flag("MAX_CPUS", value)


def test_bpf_parameter_range_and_name():
    assert catalog.int_flag("MAX_CPUS", 64) == "-DMAX_CPUS=64"
    with pytest.raises(BadInput):
        catalog.int_flag("MAX_CPUS", -1)
    with pytest.raises(BadInput):
        catalog.int_flag("max cpus", 1)


def make_tracefs(root, tracepoints, kprobes=False, symbols=(), migrate_comm=True):
    (root / "sys/kernel/tracing/events").mkdir(parents=True, exist_ok=True)
    for tp in tracepoints:
        cat, name = tp.split(":")
        (root / f"sys/kernel/tracing/events/{cat}/{name}").mkdir(parents=True, exist_ok=True)
    fmt = root / "sys/kernel/tracing/events/sched/sched_migrate_task/format"
    if fmt.parent.exists():
        fmt.write_text("field:char comm[16];\n" if migrate_comm else "field:pid_t pid;\n")
    if kprobes:
        (root / "sys/kernel/tracing/kprobe_events").write_text("")
    (root / "proc").mkdir(exist_ok=True)
    (root / "proc/kallsyms").write_text("".join(f"ffffffff81000000 T {s}\n" for s in symbols))
    (root / "proc/stat").write_text("cpu  1 2 3 4 5 6 7 8\ncpu0 1 2 3 4 5 6 7 8\n")
    return SysRoot(root)


ALL_TP = [t for p in catalog.PROBES.values() for t in p.tracepoints] + [
    "ipi:ipi_send_cpu", "sched:sched_move_numa", "sched:sched_swap_numa"]


def avail(sysroot, name, euid=0):
    return catalog.availability(catalog.PROBES[name], catalog.KernelFacts(sysroot, euid))


def test_availability_full_guest(tmp_path):
    root = make_tracefs(tmp_path, ALL_TP, kprobes=True,
                        symbols=["available_idle_cpu", "sched_balance_rq", "kvm_wait",
                                 "kvm_kick_cpu", "__vnuma_emul_vcpu_is_preempted"])
    assert avail(root, "ipi").flags == {"HAVE_IPI_SEND_CPU": 1}
    m = avail(root, "migrate")
    assert m.flags == {"HAVE_MIGRATE_COMM": 1, "HAVE_NUMA_TP": 1, "BALANCE_FN_KPROBE": 1}
    assert m.attach == {"balance": "sched_balance_rq"}
    p = avail(root, "preempt")
    assert p.ok and p.attach == {"preempted": "__vnuma_emul_vcpu_is_preempted"}
    assert avail(root, "halt").flags == {"HAVE_KPROBES": 1}


def test_availability_61_names_and_degradation(tmp_path):
    tps = [t for t in ALL_TP if t != "ipi:ipi_send_cpu"]
    root = make_tracefs(tmp_path, tps, kprobes=True, symbols=["load_balance"])
    assert avail(root, "migrate").attach == {"balance": "load_balance"}
    a = avail(root, "ipi")
    assert a.ok and a.flags["HAVE_IPI_SEND_CPU"] == 0 and "before 6.3" in a.notes[0]


@pytest.mark.parametrize("setup,name,reason", [
    (dict(tracepoints=[]), "ipi", "missing tracepoint irq_vectors:reschedule_entry"),
    (dict(tracepoints=ALL_TP), "preempt", "no kprobes"),
    (dict(tracepoints=ALL_TP, kprobes=True), "preempt", "no kernel symbol available_idle_cpu"),
    (dict(tracepoints=ALL_TP, kprobes=True, symbols=["available_idle_cpu"]), "preempt",
     "no vcpu_is_preempted implementation"),
])
def test_unavailable_reasons(tmp_path, setup, name, reason):
    root = make_tracefs(tmp_path, **setup)
    a = avail(root, name)
    assert not a.ok and reason in a.reason


def test_not_root_and_lockdown(tmp_path):
    root = make_tracefs(tmp_path, ALL_TP)
    assert "not root" in avail(root, "migrate", euid=1000).reason
    assert avail(root, "steal", euid=1000).ok  # /proc/stat needs no privilege
    (tmp_path / "sys/kernel/security").mkdir(parents=True)
    (tmp_path / "sys/kernel/security/lockdown").write_text("none integrity [confidentiality]")
    assert "confidentiality" in avail(root, "ipi").reason


def test_no_tracefs(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text("")
    assert "tracefs not mounted" in avail(SysRoot(tmp_path), "ipi").reason


@pytest.mark.parametrize("args,expected", [
    ((1, False, None, 2, 2), "wake"),
    ((0, True, 2, 2, 2), "numa"),
    ((0, False, 2, 1, 1), "newidle"),
    ((0, False, 0, 1, 1), "periodic"),
    ((0, False, 1, 3, 1), "nohz"),
    ((0, False, None, 3, 1), "other"),
])
def test_migration_cause(args, expected):
    assert classify.migration_cause(*args) == expected


@pytest.mark.parametrize("value,version,kind", [
    (2, (6, 1), "newidle"), (2, (6, 12), "newidle"),
    (0, (6, 1), "idle"), (1, (6, 1), "busy"),      # 6.1: CPU_IDLE=0, CPU_NOT_IDLE=1
    (1, (6, 12), "idle"), (0, (6, 12), "busy"),    # 6.12: __CPU_NOT_IDLE=0, CPU_IDLE=1
])
def test_balance_idle_enum_layouts(value, version, kind):
    assert classify.balance_idle_kind(value, version) == kind


def test_delta_nested():
    prev = {"a": [1, 2], "b": {"c": 5}, "s": "x"}
    cur = {"a": [4, 2], "b": {"c": 9}, "s": "x", "new": [3]}
    assert classify.delta(prev, cur) == {"a": [3, 0], "b": {"c": 4}, "s": "x", "new": [3]}


def test_unflatten_matrix_layout():
    max_nodes, nodes = 4, 2
    flat = [0] * (E.NR_CAUSES * 2 * max_nodes * max_nodes)
    # newidle, idle destination, node1 -> node0
    flat[((E.CAUSE_NEWIDLE * 2 + 1) * max_nodes + 1) * max_nodes + 0] = 7
    flat[((E.CAUSE_WAKE * 2 + 0) * max_nodes + 0) * max_nodes + 0] = 3
    mx = classify.unflatten_matrix(flat, max_nodes, nodes)
    assert mx["newidle"]["idle"] == [[0, 0], [7, 0]]
    assert classify.cross_node(mx) == 7 and classify.same_node(mx) == 3
    assert classify.by_cause(mx)["newidle"] == {"cross": 7, "same": 0, "to_idle": 7}


def topo2x2(fixture_root):
    return read_topology(SysRoot(fixture_root / "qemu-2node"))


def test_every_reported_metric_names_its_probe():
    tot = report.totals([interval(2)])
    names = set(report.metrics(tot))
    assert {"cross_node_migrations.wake", "idle_rejected_preempted", "wake_ipis"} <= names
    assert names <= set(spec.METRICS)
    assert spec.metric_probe("cross_node_migrations") == "migrate"
    for name in tot:  # each probe yields exactly the metrics its spec entry declares
        probe = spec.PROBES[name]
        assert set(probe.derive(tot[name])) == {m.name for m in probe.metrics}, name
        assert {spec.metric_probe(m.name) for m in probe.metrics} == {name}


def test_top_text_golden(fixture_root):
    text = top_text(report.top_view(interval(2), topo2x2(fixture_root)))
    assert max(len(line) for line in text.splitlines()) < 80
    golden("top-2node.txt", text.split("\n", 1)[1])


def test_top_per_cpu(fixture_root):
    text = top_text(report.top_view(interval(2), topo2x2(fixture_root), per_cpu=True))
    assert "cpu3" in text and "migin" not in text


def test_report_metrics_and_golden(tmp_path):
    rec = write_recording(tmp_path / "r.jsonl", [interval(2), interval(2, dt=3.0)])
    doc = report.summarize(*recording.read(rec))
    m = doc["metrics"]
    assert m["cross_node_migrations"] == {"total": 10, "rate": 2.5}
    assert m["migrations.newidle"]["total"] == 4 and m["wake_ipis"]["total"] == 40
    assert m["idle_rejected_preempted"]["total"] == 6 and doc["lost_events"] == 3
    assert m["wakeups_busy_idle_llc"]["total"] == 6 and m["wakeups"]["total"] == 40
    golden("report.txt", report_text(doc))


def test_report_cli_json(tmp_path):
    rec = write_recording(tmp_path / "r.jsonl", [interval(2)])
    res = CliRunner().invoke(main, ["report", "--json", str(rec)])
    assert res.exit_code == 0 and json.loads(res.output)["metrics"]["halts"]["total"] == 8


@pytest.mark.parametrize("mutate,needle", [
    (lambda t: t + '{"type": "interval", "dt": 1, "probes": {"ipi"', "line 4: not JSON"),
    (lambda t: t.replace('"type": "meta"', '"type": "interval"', 1), "line 1: a recording"),
    (lambda t: t + '{"type": "bogus"}\n', "line 4: unknown record type 'bogus'"),
    (lambda t: "", "empty recording"),
])
def test_malformed_recordings_name_the_line(tmp_path, mutate, needle):
    rec = write_recording(tmp_path / "r.jsonl", [interval(2)])
    rec.write_text(mutate(rec.read_text()))
    with pytest.raises(DataError, match=needle):
        recording.read(rec)
    res = CliRunner().invoke(main, ["report", str(rec)])
    assert res.exit_code == 3 and "Traceback" not in res.output


def test_truncated_recording_is_reported_as_incomplete(tmp_path):
    rec = write_recording(tmp_path / "r.jsonl", [interval(2)], end=False)
    doc = report.summarize(*recording.read(rec))
    assert not doc["complete"] and "interrupted" in report_text(doc)


def test_argument_splitting():
    assert _split_top_args(("migrate", "ipi", "2", "5")) == (["migrate", "ipi"], 2.0, 5)
    assert _split_top_args(()) == ([], 1.0, None)
    with pytest.raises(BadInput):
        _split_top_args(("1", "2", "3"))
    assert _split_record_args(("migrate", "sh", "-c", "x")) == (["migrate"], ["sh", "-c", "x"])
    assert _split_record_args(("migrate", "--", "sh")) == (["migrate"], ["sh"])
    with pytest.raises(BadInput, match="unknown probe 'nope'"):
        catalog.select(["nope"])


def test_log2_hist_labels():
    lines = log2_hist_lines([1, 2, 4])
    assert lines[1].split(":")[0].split() == ["0", "->", "0"]
    assert lines[3].split(":")[0].split() == ["2", "->", "3"]
