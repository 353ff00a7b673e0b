"""cross_node_avoidable without bcc or root: task_struct offsets from BTF, the
avoidability decision (mirror of bpf/migrate.bpf.c) on fake and recorded map
contents, derivation, "unsupported" with its reason through availability,
loading, recordings, report, top and compare.

tests/data/recordings/migrate-1node-affinityflip.jsonl was recorded on the
development machine (a one-node KVM guest, kernel 6.18) with
`vnuma-sched record --events --interval 0.5 migrate -- python3
tests/workloads/affinityflip.py 20 0.05`; its meta cmdline was blanked.
"""

import json
import struct

import pytest
from click.testing import CliRunner
from helpers import DATA, TASK_BTF, btf_blob, interval, write_recording
from hypothesis import given
from hypothesis import strategies as st

from vnuma_sched.cli.main import main
from vnuma_sched.errors import DataError
from vnuma_sched.experiments import compare
from vnuma_sched.probes import catalog, classify, recording, report, spec
from vnuma_sched.probes import events as E
from vnuma_sched.probes import loader as loader_mod
from vnuma_sched.probes.session import Session, map_sizes
from vnuma_sched.render import report_text, top_text
from vnuma_sched.system import btf, facts
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import Node, Topology, read_topology

RECORDED = DATA / "recordings" / "migrate-1node-affinityflip.jsonl"


# --- BTF: the offsets of what the raw tracepoint reads -------------------------------

@pytest.mark.parametrize("order", ["<", ">"])
def test_task_offsets_from_btf(order):
    offsets, why = btf.task_offsets(btf_blob(TASK_BTF, order))
    assert why is None
    assert offsets == {"TASK_PID_OFF": 1264, "TASK_COMM_OFF": 1752,
                       "TASK_CPUS_PTR_OFF": 800, "TASK_CPU_OFF": 20, "TASK_STATE_OFF": 24}


def test_task_cpu_without_thread_info_and_through_anonymous_members():
    """task->cpu where thread_info has no cpu, task->state before 5.14's __state;
    members inside anonymous structs (randomized_struct_fields_start with RANDSTRUCT)
    add the outer offset."""
    layout = {"#1": [("pid", 8, "int"), ("comm", 40, "int")],
              "task_struct": [("state", 0, "int"), ("cpu", 4, "int"), ("", 1000, "#1"),
                              ("cpus_ptr", 1200, "int")]}
    offsets, why = btf.task_offsets(btf_blob(layout))
    assert why is None and offsets["TASK_CPU_OFF"] == 4 and offsets["TASK_STATE_OFF"] == 0
    assert offsets["TASK_PID_OFF"] == 1008 and offsets["TASK_COMM_OFF"] == 1040


def test_missing_member_is_a_reason_not_an_offset():
    layout = {"task_struct": [("pid", 8, "int"), ("comm", 40, "int"), ("cpu", 4, "int")]}
    assert btf.task_offsets(btf_blob(layout)) == (None, "BTF has no task_struct.cpus_ptr")
    assert btf.task_offsets(btf_blob({"other": []})) == (None, "BTF has no struct task_struct")


@pytest.mark.parametrize("blob, needle", [
    (b"\x9f\xeb", "too short"),
    (b"\0" * 32, "no BTF magic"),
    (btf_blob(TASK_BTF)[:-8], "past the end"),
    (btf_blob(TASK_BTF)[:24] + b"\0\0\0\0" + struct.pack("<I", 31 << 24) +
     btf_blob(TASK_BTF)[32:], "unknown kind 31"),
])
def test_malformed_btf_is_data_error(blob, needle):
    with pytest.raises(DataError, match=needle):
        btf.task_offsets(blob)


VALID_BTF = btf_blob(TASK_BTF)


@given(st.lists(st.tuples(st.integers(0, len(VALID_BTF) - 1), st.integers(0, 255)),
                max_size=8), st.integers(0, len(VALID_BTF)))
def test_btf_parser_never_crashes(changes, cut):
    """Corrupt or truncated BTF: offsets or a reason, or DataError; nothing else."""
    blob = bytearray(VALID_BTF)
    for pos, value in changes:
        blob[pos] = value
    try:
        btf.task_offsets(bytes(blob[:cut]))
    except DataError:
        pass


def test_facts_task_offsets_name_the_file(tmp_path):
    root = SysRoot(tmp_path)
    assert facts.task_offsets(root) == (None, "no /sys/kernel/btf/vmlinux "
                                              "(CONFIG_DEBUG_INFO_BTF=n)")
    (tmp_path / "sys/kernel/btf").mkdir(parents=True)
    (tmp_path / "sys/kernel/btf/vmlinux").write_bytes(b"\0" * 40)
    assert facts.task_offsets(root) == (None, "/sys/kernel/btf/vmlinux: no BTF magic")


# --- availability: the raw tracepoint when BTF says where, else unsupported ----------

def _tree(tmp_path, with_btf):
    events = tmp_path / "sys/kernel/tracing/events"
    for tp in ("sched/sched_migrate_task", "sched/sched_waking", "power/cpu_idle"):
        (events / tp).mkdir(parents=True)
    (events / "sched/sched_migrate_task/format").write_text("field:pid_t pid;\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/kallsyms").write_text("")
    if with_btf:
        (tmp_path / "sys/kernel/btf").mkdir(parents=True)
        (tmp_path / "sys/kernel/btf/vmlinux").write_bytes(btf_blob(TASK_BTF))
    return SysRoot(tmp_path)


def _migrate(root):
    return catalog.availability(spec.PROBES["migrate"], catalog.KernelFacts(root, 0))


def test_without_btf_the_metric_is_unsupported_and_the_probe_runs(tmp_path):
    a = _migrate(_tree(tmp_path, with_btf=False))
    assert a.ok and a.flags["HAVE_AVOIDABLE"] == 0 and "migrate_raw" not in a.attach
    assert set(a.unsupported) == set(spec.AVOIDABLE_METRICS)
    why = a.unsupported["cross_node_avoidable"]
    assert why == ("the task's allowed CPUs cannot be read: no /sys/kernel/btf/vmlinux "
                   "(CONFIG_DEBUG_INFO_BTF=n)")
    assert f"cross_node_avoidable unsupported: {why}" in a.notes
    assert catalog.unsupported_lines({"migrate": a}) == [
        f"migrate: cross_node_avoidable unsupported: {why}",
        f"migrate: cross_node_unchecked unsupported: {why}"]
    flags = catalog.cflags(a, 4, 2, False, 2)
    assert "-DHAVE_AVOIDABLE=0" in flags and not any("TASK_" in f for f in flags)


def test_with_btf_the_raw_tracepoint_gets_validated_offsets(tmp_path):
    a = _migrate(_tree(tmp_path, with_btf=True))
    assert a.ok and a.unsupported == {} and a.attach["migrate_raw"] == "sched_migrate_task"
    flags = catalog.cflags(a, 4, 2, True, 2)
    assert {"-DHAVE_AVOIDABLE=1", "-DTASK_CPUS_PTR_OFF=800", "-DTASK_CPU_OFF=20",
            "-DMAX_NODE_CPUS=2", "-DMAX_CPUS=4"} <= set(flags)


def test_probes_cli_lists_unsupported_metrics(tmp_path, monkeypatch):
    monkeypatch.setattr("os.geteuid", lambda: 0)
    _tree(tmp_path, with_btf=False)
    res = CliRunner().invoke(main, ["--root", str(tmp_path), "probes", "--json"])
    assert res.exit_code == 0, res.output
    row = {r["probe"]: r for r in json.loads(res.stdout)["probes"]}["migrate"]
    assert row["available"] and "CONFIG_DEBUG_INFO_BTF" in row["unsupported"][
        "cross_node_avoidable.wake"]


class FakeLoaded:
    """Stands in for loader.LoadedProbe: fails while the raw tracepoint is asked for."""

    attempts = []

    def __init__(self, probe, avail, flags, context, bpf_dir, on_event=None, headers=None):
        FakeLoaded.attempts.append((list(flags), dict(avail.attach), context))
        if "-DHAVE_AVOIDABLE=1" in flags:
            raise RuntimeError("Failed to attach BPF to raw tracepoint")

    def close(self):
        pass


def test_a_failed_raw_tracepoint_reloads_without_it(tmp_path, fixture_root, monkeypatch):
    FakeLoaded.attempts = []
    monkeypatch.setattr(loader_mod, "LoadedProbe", FakeLoaded)
    monkeypatch.setattr(Session, "_headers", lambda self: None)
    root = _tree(tmp_path, with_btf=True)
    topo = read_topology(SysRoot(fixture_root / "qemu-2node"))
    logged = []
    session = Session(["migrate"], root, 0, topo, log=logged.append).start()
    assert session.running() == ["migrate"] and "migrate" in session.loaded
    (first, attach1, context), (second, attach2, _) = FakeLoaded.attempts
    assert "-DHAVE_AVOIDABLE=1" in first and "-DHAVE_AVOIDABLE=0" in second
    assert "migrate_raw" in attach1 and "migrate_raw" not in attach2
    assert context["node_cpus"] == {0: 1, 1: 2, 2: 3, 3: 4}     # 2 nodes of 2 CPUs
    why = session.status["migrate"].unsupported["cross_node_avoidable"]
    assert why == ("raw tracepoint sched_migrate_task failed: Failed to attach BPF to "
                   "raw tracepoint")
    assert logged == [f"migrate: cross_node_avoidable unsupported: {why}; loading without it"]


class BrokenLoaded(FakeLoaded):
    def __init__(self, probe, avail, flags, *args, **kw):
        FakeLoaded.attempts.append(list(flags))
        raise RuntimeError(f"cannot compile (attempt {len(FakeLoaded.attempts)})")


@pytest.mark.parametrize("with_btf, attempts", [(True, 2), (False, 1)])
def test_a_probe_that_cannot_load_is_retried_once_at_most(tmp_path, fixture_root,
                                                          monkeypatch, with_btf, attempts):
    FakeLoaded.attempts = []
    monkeypatch.setattr(loader_mod, "LoadedProbe", BrokenLoaded)
    monkeypatch.setattr(Session, "_headers", lambda self: None)
    topo = read_topology(SysRoot(fixture_root / "qemu-2node"))
    session = Session(["migrate"], _tree(tmp_path, with_btf), 0, topo).start()
    assert len(FakeLoaded.attempts) == attempts and session.running() == []
    assert session.status["migrate"].reason == \
        f"load failed: cannot compile (attempt {attempts})"


# --- the decision and the map layouts -------------------------------------------------

TWO_BY_TWO = Topology(nodes=(Node(0, (0, 1), 1, (10, 21)), Node(1, (2, 3), 1, (21, 10))))


def test_node_cpu_slots_layout():
    assert map_sizes(TWO_BY_TWO) == (4, 2, 2)
    assert classify.node_cpu_slots(TWO_BY_TWO, 4, 2, 2) == {0: 1, 1: 2, 2: 3, 3: 4}
    lopsided = Topology(nodes=(Node(0, (0,), 1, (10, 21)), Node(1, (1, 5, 3), 1, (21, 10))))
    assert map_sizes(lopsided) == (6, 2, 3)
    # node1's list starts at 1 * 3; CPUs sorted; stored + 1 (0 ends a list)
    assert classify.node_cpu_slots(lopsided, 6, 2, 3) == {0: 1, 3: 2, 4: 4, 5: 6}
    assert classify.node_cpu_slots(lopsided, 6, 1, 3) == {0: 1}      # no room for node1


CPU_NODE = {0: 0, 1: 0, 2: 1, 3: 1}
NODE_CPUS = {0: [0, 1], 1: [2, 3]}


@pytest.mark.parametrize("orig, dest, idle, allowed, expected", [
    (0, 1, {}, 0b1111, None),                      # same node: not a cross-node move
    (0, 2, {1: True}, 0b1111, True),               # node0 had idle CPU1, allowed
    (0, 2, {0: True}, 0b0101, True),               # its own previous CPU counts too
    (0, 2, {1: True}, 0b1101, False),              # the idle CPU was not allowed
    (0, 2, {1: False, 0: False}, 0b1111, False),   # allowed, but nothing idle
    (0, 2, {3: True}, 0b1111, False),              # idle CPU on another node
    (2, 0, {3: True}, 0b1000, True),               # the other direction
    (0, 2, {1: True}, 0b0100, False),              # pinned to the destination
])
def test_is_avoidable(orig, dest, idle, allowed, expected):
    assert classify.is_avoidable(orig, dest, CPU_NODE, NODE_CPUS, idle, allowed) is expected


def test_flat_avoidable_map_to_metrics():
    max_nodes, nodes = 4, 2       # the map is sized for MAX_NODES, the topology has 2
    flat = [0] * (E.NR_CAUSES * max_nodes * max_nodes)
    flat[(E.CAUSE_WAKE * max_nodes + 0) * max_nodes + 1] = 5
    flat[(E.CAUSE_NEWIDLE * max_nodes + 1) * max_nodes + 0] = 2
    flat[(E.CAUSE_OTHER * max_nodes + 3) * max_nodes + 0] = 99   # beyond the topology
    mx = classify.unflatten_cause_matrix(flat, max_nodes, nodes)
    assert mx["wake"] == [[0, 5], [0, 0]] and mx["newidle"] == [[0, 0], [2, 0]]
    assert classify.cause_matrix_total(mx) == [[0, 5], [2, 0]]
    seen = [40, 9, 1, 2]          # examined, cross checked, cross unreadable, task unreadable
    m = classify.avoidable_metrics(mx, seen)
    assert m["cross_node_avoidable"] == 7 and m["cross_node_avoidable.wake"] == 5
    assert m["cross_node_avoidable.newidle"] == 2 and m["cross_node_avoidable.other"] == 0
    assert m["cross_node_unchecked"] == 3


def test_derive_with_and_without_the_avoidable_maps():
    data = interval(2)["probes"]["migrate"]
    m = spec.PROBES["migrate"].derive(data)
    assert m["cross_node_avoidable"] == 3 and m["cross_node_avoidable.wake"] == 3
    assert m["cross_node_migrations"] == 5 and m["cross_node_unchecked"] == 0
    assert not spec.METRICS["cross_node_avoidable"].lower_is_worse
    assert spec.metric_probe("cross_node_avoidable.wake") == "migrate"
    assert "cross_node_avoidable" in spec.PRIMARY
    without = {k: v for k, v in data.items() if k not in ("avoidable", "avoid_seen")}
    m = spec.PROBES["migrate"].derive(without)
    assert m["cross_node_migrations"] == 5
    assert not set(spec.AVOIDABLE_METRICS) & set(m)    # absent, never a silent 0


# --- recordings, report, top, compare -------------------------------------------------

def test_recorded_one_node_run():
    """On one node nothing is cross-node: avoidable stays 0, but every migration was
    examined by the raw tracepoint, and each event carries the affinity it saw."""
    meta, intervals, events, end = recording.read(RECORDED)
    doc = report.summarize(meta, intervals, events, end)
    mets = doc["metrics"]
    assert mets["cross_node_avoidable"]["total"] == 0 and doc["unsupported_metrics"] == {}
    assert mets["cross_node_unchecked"]["total"] == 0
    seen = report.totals(intervals)["migrate"]["avoid_seen"]
    migrations = mets["same_node_migrations"]["total"] + mets["cross_node_migrations"]["total"]
    assert seen[E.SEEN_EXAMINED] == migrations >= len(events) > 0
    assert seen[E.SEEN_CROSS_CHECKED] == 0
    flips = sorted((e for e in events if e["comm"] == "affinityflip"), key=lambda e: e["ts"])
    assert len(flips) >= 15
    for e in flips:     # pinned to one CPU at a time: the destination is all it may use
        assert e["allowed"] == 1 << e["dest_cpu"] and e["orig_cpu"] != e["dest_cpu"]
        assert not e["cross_node"] and not e["avoidable"]


def test_recorded_events_reclassified_on_a_two_node_split():
    """The same moves, as if CPU 0 and CPU 1 were on different nodes: with every CPU
    idle, a move pinned to its destination is still not avoidable; one allowed on both
    CPUs would have been."""
    _, _, events, _ = recording.read(RECORDED)
    split, lists, idle = {0: 0, 1: 1}, {0: [0], 1: [1]}, {0: True, 1: True}
    flips = [e for e in events if e["comm"] == "affinityflip"]
    assert all(classify.is_avoidable(e["orig_cpu"], e["dest_cpu"], split, lists, idle,
                                     e["allowed"]) is False for e in flips)
    assert all(classify.is_avoidable(e["orig_cpu"], e["dest_cpu"], split, lists, idle,
                                     0b11) is True for e in flips)


def _unsupported_meta(why):
    return {"type": "meta", "version": 1, "kernel": "6.1.0",
            "probes": {"migrate": {"available": True, "reason": "", "notes": [],
                                   "unsupported": {n: why for n in spec.AVOIDABLE_METRICS}}}}


def test_report_says_why_the_metric_is_missing(tmp_path):
    rec = interval(2)
    for key in ("avoidable", "avoid_seen"):
        del rec["probes"]["migrate"][key]
    path = write_recording(tmp_path / "r.jsonl", [rec], meta=_unsupported_meta("no BTF"))
    doc = report.summarize(*recording.read(path))
    assert "cross_node_avoidable" not in doc["metrics"] and "avoidable_matrix" not in doc
    assert doc["unsupported_metrics"]["cross_node_avoidable.wake"] == "no BTF"
    text = report_text(doc)
    assert "cross_node_avoidable: no BTF" in text and "cross_node_avoidable.wake:" not in text
    res = CliRunner().invoke(main, ["report", "--json", str(path)])
    assert json.loads(res.output)["unsupported_metrics"]["cross_node_avoidable"] == "no BTF"


def test_a_recording_with_a_malformed_unsupported_map_is_bad_data(tmp_path):
    meta = _unsupported_meta("x")
    meta["probes"]["migrate"]["unsupported"] = ["cross_node_avoidable"]
    path = write_recording(tmp_path / "r.jsonl", [interval(2)], meta=meta)
    with pytest.raises(DataError, match="line 1: meta: probe 'migrate': unsupported is not"):
        recording.read(path)


def test_a_recording_whose_avoidable_map_lacks_a_cause_is_bad_data(tmp_path):
    rec = interval(2)
    del rec["probes"]["migrate"]["avoidable"]["numa"]
    path = write_recording(tmp_path / "r.jsonl", [rec])
    with pytest.raises(DataError, match="line 2: probe 'migrate': not what this probe"):
        recording.read(path)


def test_top_shows_avoidable_only_when_measured():
    view = report.top_view(interval(2), TWO_BY_TWO)
    assert view["avoidable"][0] == ("wake", 3)
    assert top_text(view).splitlines()[-1] == "cross-node avoidable: 3 (wake 3)"
    rec = interval(2)
    del rec["probes"]["migrate"]["avoidable"]
    assert "avoidable" not in top_text(report.top_view(rec, TWO_BY_TWO))


def test_compare_reads_the_metric_from_recordings(tmp_path):
    paths = {"a": [], "b": []}
    for arm, counts in (("a", (9, 8, 10)), ("b", (1, 2, 1))):
        for i, n in enumerate(counts):
            rec = interval(2)
            rec["probes"]["migrate"]["avoidable"]["newidle"][1][0] = n
            paths[arm].append(write_recording(tmp_path / f"{arm}{i}.jsonl", [rec]))
    runs = compare.runs_from_recordings(paths["a"], paths["b"])
    m = compare.metrics(runs, tmp_path)["cross_node_avoidable"]
    assert m["a"]["median"] == 12 and m["b"]["median"] == 4    # + the 3 wake ones of interval()
