"""Probes without bcc or root: the C/Python mirror, parameters, availability,
classification (6.1 and 6.12 enum layouts), interval math, recordings, renderers."""

import ctypes
import io
import json
import os
import re
import stat
import tarfile

import pytest
from click.testing import CliRunner
from helpers import TASK_BTF, btf_blob, golden, interval, one_line, write_recording

from vnuma_sched.cli.main import main
from vnuma_sched.cli.probes import _split_top_args, check_record_args
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.probes import catalog, classify, kheaders, recording, report, spec
from vnuma_sched.probes import events as E
from vnuma_sched.probes.session import Session
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
    for i, name in enumerate(E.SEEN_NAMES):
        assert d[f"SEEN_{name.upper()}"] == i
    assert d["NR_SEEN"] == E.NR_SEEN
    text = (E.BPF_DIR / "vnuma.h").read_text()
    body = text[text.index("struct migrate_event {"):].split("};")[0]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S)
    c_fields = [ln.split()[-1].rstrip(";").split("[")[0] for ln in body.splitlines()[1:]
                if ln.strip()]
    assert c_fields == [f for f, _ in E.MigrateEvent._fields_]
    assert E.MigrateEvent.__dict__["comm"].size == 16
    assert E.MigrateEvent.__dict__["allowed"].offset == 48 and ctypes.sizeof(E.MigrateEvent) == 56


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


def make_tracefs(root, tracepoints, kprobes=False, symbols=(), migrate_comm=True, btf=None):
    (root / "sys/kernel/tracing/events").mkdir(parents=True, exist_ok=True)
    if btf is not None:
        (root / "sys/kernel/btf").mkdir(parents=True, exist_ok=True)
        (root / "sys/kernel/btf/vmlinux").write_bytes(btf)
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
                                 "kvm_kick_cpu", "__kvm_debug_vcpu_is_preempted",
                                 "__raw_callee_save___kvm_vcpu_is_preempted"],
                        btf=btf_blob(TASK_BTF))
    assert avail(root, "ipi").flags == {"HAVE_IPI_SEND_CPU": 1}
    m = avail(root, "migrate")
    assert m.flags == {"HAVE_MIGRATE_COMM": 1, "HAVE_NUMA_TP": 1, "BALANCE_FN_KPROBE": 1,
                       "HAVE_AVOIDABLE": 1, "TASK_PID_OFF": 1264, "TASK_COMM_OFF": 1752,
                       "TASK_CPUS_PTR_OFF": 800, "TASK_CPU_OFF": 20, "TASK_STATE_OFF": 24}
    assert m.attach == {"balance": "sched_balance_rq", "migrate_raw": "sched_migrate_task"}
    assert m.unsupported == {} and m.notes == []
    p = avail(root, "preempt")
    # both implementations present: the probe hooks both, only the installed one fires
    assert p.ok and p.attach == {"preempted": ("__raw_callee_save___kvm_vcpu_is_preempted",
                                               "__kvm_debug_vcpu_is_preempted")}
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
    assert check_record_args(("migrate", "ipi"), ["sh", "-c", "x"]) == ["migrate", "ipi"]
    with pytest.raises(BadInput, match="unknown probe 'sh'.*goes after '--'"):
        check_record_args(("migrate", "sh"), None)
    with pytest.raises(BadInput, match="unknown probe 'nope'"):
        catalog.select(["nope"])


def test_log2_hist_labels():
    lines = log2_hist_lines([1, 2, 4])
    assert lines[1].split(":")[0].split() == ["0", "->", "0"]
    assert lines[3].split(":")[0].split() == ["2", "->", "3"]


# --- record: no overwrite, no stray command, no root for steal ----------------------

def record(root, *args):
    argv = (["--root", str(root)] if root else []) + ["record", *args]
    return CliRunner().invoke(main, argv)


QUICK = ("--duration", "0.1", "--interval", "0.05")


def test_record_does_not_overwrite_without_force(tmp_path, fixture_root):
    out = tmp_path / "run.jsonl"
    out.write_text("keep me\n")
    res = record(fixture_root / "qemu-2node", "-o", str(out), *QUICK, "steal")
    err = one_line(res, 2, f"-o {out}: exists; --force overwrites it")
    assert err.count(str(out)) == 1 and out.read_text() == "keep me\n"
    res = record(fixture_root / "qemu-2node", "-o", str(out), "--force", *QUICK, "steal")
    assert res.exit_code == 0, res.output
    meta, intervals, _, end = recording.read(out)
    assert intervals and end["exit_code"] == 0


def test_record_does_not_write_through_a_symlink(tmp_path, fixture_root):
    target = tmp_path / "target"
    target.write_text("keep me\n")
    link = tmp_path / "run.jsonl"
    link.symlink_to(target)
    res = record(fixture_root / "qemu-2node", "-o", str(link), "--force", *QUICK, "steal")
    one_line(res, 2, f"-o {link}: is a symbolic link")
    assert target.read_text() == "keep me\n"


@pytest.mark.parametrize("words, needle", [
    (["stael"], "unknown probe 'stael': known are ipi, halt"),
    (["steal", "echo", "hi"], "unknown probe 'echo'"),
])
def test_record_runs_a_command_only_after_dashes(tmp_path, fixture_root, words, needle):
    out = tmp_path / "run.jsonl"
    res = record(fixture_root / "qemu-2node", "-o", str(out), *QUICK, *words)
    err = one_line(res, 2, needle, "a command to record goes after '--'")
    if words == ["stael"]:
        assert "did you mean 'steal'?" in err
    assert not out.exists()


def test_record_a_command_after_dashes(tmp_path, fixture_root):
    out = tmp_path / "run.jsonl"
    res = record(fixture_root / "qemu-2node", "-o", str(out), "--interval", "0.05", "steal",
                 "--", "sh", "-c", "exit 3")
    assert res.exit_code == 3, res.output
    meta, _, _, end = recording.read(out)
    assert meta["command"] == ["sh", "-c", "exit 3"] and end["exit_code"] == 3


@pytest.mark.parametrize("command, code, needle", [
    (["--", "no-such-command-vnuma"], 5, "no-such-command-vnuma: command not found"),
    (["--"], 2, "nothing after '--'"),
])
def test_record_command_problems_leave_no_file(tmp_path, fixture_root, command, code,
                                               needle):
    out = tmp_path / "run.jsonl"
    res = record(fixture_root / "qemu-2node", "-o", str(out), *QUICK, "steal", *command)
    one_line(res, code, needle)
    assert not out.exists()


def test_record_into_a_missing_folder_before_loading_probes(tmp_path, fixture_root,
                                                            monkeypatch):
    def no_session(*args, **kw):
        raise AssertionError("probes were loaded")

    monkeypatch.setattr(Session, "start", no_session)
    out = tmp_path / "missing" / "run.jsonl"
    res = record(fixture_root / "qemu-2node", "-o", str(out), *QUICK, "steal")
    err = one_line(res, 2, f"-o {out}: its folder does not exist")
    assert err.count(str(out)) == 1 and not out.parent.exists()


def test_record_steal_needs_no_root(tmp_path, monkeypatch):
    """steal reads /proc/stat: allowed without root on the live system; BPF probes not."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    out = tmp_path / "steal.jsonl"
    res = record(None, "-o", str(out), *QUICK, "steal")
    assert res.exit_code == 0, res.output
    assert "steal" in recording.read(out)[1][0]["probes"]
    res = record(None, "-o", str(tmp_path / "m.jsonl"), *QUICK, "migrate")
    one_line(res, 4, "needs root")
    res = CliRunner().invoke(main, ["top", "--json", "steal", "0.05", "1"])
    assert res.exit_code == 0, res.output
    assert "steal" in json.loads(res.stdout.splitlines()[-1])["probes"]


# --- recordings: bad data is exit 3 naming file and line ----------------------------

def _lines(path):
    return [json.loads(ln) for ln in path.read_text().splitlines()]


def _rewrite(path, recs):
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))


def _set_dt(recs):
    recs[1]["dt"] = "1"


def _ipi_string(recs):
    recs[1]["probes"]["ipi"]["per_cpu"][0][0] = "3"


def _no_cause(recs):
    del recs[1]["probes"]["migrate"]["matrix"]["wake"]


def _other_size(recs):
    recs[2]["probes"]["steal"]["ms"].append(1)


def _version(recs):
    recs[0]["version"] = 2


def _no_version(recs):
    del recs[0]["version"]


def _probe_status(recs):
    recs[0]["probes"] = {"ipi": {"available": False}}


def _bool_counter(recs):
    recs[1]["probes"]["halt"]["hist"][0] = True


def _nan_counter(recs):
    recs[1]["probes"]["preempt"]["rejected"][0] = float("nan")


def _end_lost(recs):
    recs[-1]["lost"] = "3"


def _listing_in_metrics(recs):
    recs[1]["probes"]["migrate"]["wake_place"] = [[1], [2]]


@pytest.mark.parametrize("change, needle", [
    (_set_dt, "line 2: interval without probes or a number of seconds"),
    (_ipi_string, "line 2: ipi.per_cpu[0][0] is '3', not a counter"),
    (_no_cause, "line 2: probe 'migrate': not what this probe records"),
    (_other_size, "line 3: probe 'steal': other fields or sizes than in the first"),
    (_version, "line 1: recording version 2 is not supported (this vnuma-sched reads "
               "version 1)"),
    (_no_version, "line 1: recording version None is not supported"),
    (_probe_status, "line 1: meta: probe 'ipi': expected available and a reason"),
    (_bool_counter, "line 2: halt.hist[0] is True, not a counter"),
    (_nan_counter, "line 2: preempt.rejected[0] is nan, not a counter"),
    (_end_lost, "line 4: end: lost is not a count"),
    (_listing_in_metrics, "line 2: probe 'migrate': not what this probe records"),
])
def test_recordings_with_wrong_types_name_file_and_line(tmp_path, change, needle):
    rec = write_recording(tmp_path / "r.jsonl", [interval(2), interval(2)])
    recs = _lines(rec)
    change(recs)
    _rewrite(rec, recs)
    with pytest.raises(DataError, match=re.escape(needle)):
        recording.read(rec)
    err = one_line(CliRunner().invoke(main, ["report", str(rec)]), 3, f"{rec}: {needle}")
    assert err.count(str(rec)) == 1


def test_a_binary_recording_is_bad_data(tmp_path):
    rec = tmp_path / "r.jsonl"
    rec.write_bytes(b'{"type": "meta", "version": 1}\n\x89PNG\r\n\x1a\n\x00\xff')
    one_line(CliRunner().invoke(main, ["report", str(rec)]), 3,
             f"{rec}: line 2: not UTF-8 text; not a recording")


# --- kernel headers for bcc: a private directory, a checked archive ----------------

def _tar(path, members):
    """A tar.xz of (TarInfo, bytes or None) pairs."""
    with tarfile.open(path, "w:xz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _info(name, kind=tarfile.REGTYPE, mode=0o644, **kw):
    info = tarfile.TarInfo(name)
    info.type, info.mode = kind, mode
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def test_private_dir_is_made_0700(tmp_path):
    d = kheaders.private_dir(tmp_path / "p")
    assert stat.S_IMODE(d.stat().st_mode) == 0o700 and d.stat().st_uid == os.geteuid()
    assert kheaders.private_dir(d) == d   # again: it is ours and safe


@pytest.mark.parametrize("prepare, needle", [
    (lambda p: (p.mkdir(), p.chmod(0o777)), "mode 0777 is group- or world-writable"),
    (lambda p: (p.mkdir(), p.chmod(0o730)), "mode 0730 is group- or world-writable"),
    (lambda p: (p.mkdir(mode=0o700), os.chown(p, 4321, 4321)), "owned by uid 4321"),
    (lambda p: (p.parent.joinpath("elsewhere").mkdir(mode=0o700),
                p.symlink_to(p.parent / "elsewhere")), "not a directory (a link?)"),
    (lambda p: p.write_text("x"), "not a directory"),
])
def test_private_dir_refuses_what_others_could_control(tmp_path, prepare, needle):
    if "uid" in needle and os.geteuid() != 0:
        pytest.skip("chown to another user needs root")
    p = tmp_path / "p"
    prepare(p)
    with pytest.raises(DataError, match=re.escape(needle)):
        kheaders.private_dir(p)


@pytest.mark.parametrize("info, why", [
    (_info("/etc/cron.d/x"), "absolute path"),
    (_info("include/../../x"), "'..' in the path"),
    (_info("include/l", tarfile.SYMTYPE, linkname="/etc/shadow"), "a link out of it"),
    (_info("include/l", tarfile.SYMTYPE, linkname="../../etc"), "a link out of it"),
    (_info("include/h", tarfile.LNKTYPE, linkname="/etc/shadow"), "a link out of it"),
    (_info("include/null", tarfile.CHRTYPE, devmajor=1, devminor=3), "a device, fifo"),
    (_info("include/fifo", tarfile.FIFOTYPE), "a device, fifo"),
])
def test_unsafe_archive_members_are_refused(tmp_path, info, why):
    assert kheaders.check_member(info).startswith(why)
    archive = _tar(tmp_path / "k.tar.xz", [(_info("include/a.h"), b"int a;\n"),
                                           (info, None)])
    dest = kheaders.private_dir(tmp_path / "dest")
    with tarfile.open(archive) as tar, pytest.raises(DataError, match=re.escape(why)):
        kheaders.safe_members(tar, archive)
    with pytest.raises(DataError, match="refused|cannot extract"):
        kheaders.extract(archive, dest)
    assert not (tmp_path / "etc").exists() and not (tmp_path / "x").exists()


def test_links_inside_the_archive_are_kept_and_none_is_followed_out(tmp_path):
    """The kernel's kheaders.tar.xz has relative symlinks (include/dt-bindings)."""
    archive = _tar(tmp_path / "k.tar.xz", [
        (_info("include", tarfile.DIRTYPE, mode=0o755), None),
        (_info("include/a.h"), b"int a;\n"),
        (_info("include/b.h", tarfile.SYMTYPE, linkname="a.h"), None)])
    dest = kheaders.private_dir(tmp_path / "dest")
    kheaders.extract(archive, dest)
    assert (dest / "include/b.h").read_text() == "int a;\n"
    out = _tar(tmp_path / "out.tar.xz", [
        (_info("include", tarfile.DIRTYPE, mode=0o755), None),
        (_info("include/up", tarfile.SYMTYPE, linkname="."), None),
        (_info("include/up/x.h"), b"int x;\n")])
    with tarfile.open(out) as tar, pytest.raises(DataError, match="a path through a link"):
        kheaders.safe_members(tar, out)


def test_safe_members_drop_set_id_bits_and_owners(tmp_path):
    archive = _tar(tmp_path / "k.tar.xz", [
        (_info("include", tarfile.DIRTYPE, mode=0o777), None),
        (_info("include/a.h", mode=0o4777, uid=4321, gid=4321, uname="nobody"), b"int a;\n")])
    dest = kheaders.private_dir(tmp_path / "dest")
    with tarfile.open(archive) as tar:
        members = kheaders.safe_members(tar, archive)
        tar.extractall(dest, members=members)
    st = (dest / "include/a.h").stat()
    assert stat.S_IMODE(st.st_mode) == 0o755 and st.st_uid == os.geteuid()
    assert stat.S_IMODE((dest / "include").stat().st_mode) == 0o755


def _headers_root(tmp_path, release="6.1.0-test"):
    root = tmp_path / "root"
    (root / "proc/sys/kernel").mkdir(parents=True)
    (root / "sys/kernel").mkdir(parents=True)
    (root / "run").mkdir()
    _tar(root / "sys/kernel/kheaders.tar.xz",
         [(_info("include", tarfile.DIRTYPE, mode=0o755), None),
          (_info("include/linux.h"), b"#define X 1\n")])
    return SysRoot(root), release


def test_kernel_headers_go_to_a_private_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    sysroot, release = _headers_root(tmp_path)
    dest = kheaders.ensure_kernel_headers(sysroot, release)
    assert dest == sysroot.path(f"/run/vnuma_sched/kheaders/kheaders-{release}")
    assert (dest / "include/linux.h").read_text() == "#define X 1\n"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o700
    assert stat.S_IMODE(dest.parent.stat().st_mode) == 0o700
    # the tunables' journal and lock live in the parent: it stays readable for status
    assert stat.S_IMODE(dest.parent.parent.stat().st_mode) == 0o755
    assert kheaders.ensure_kernel_headers(sysroot, release) == dest   # extracted once
    assert [p.name for p in dest.parent.iterdir()] == [dest.name]   # no temp left


def test_kernel_headers_refuse_a_directory_made_by_someone_else(tmp_path, monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    sysroot, release = _headers_root(tmp_path)
    planted = sysroot.path(f"/run/vnuma_sched/kheaders/kheaders-{release}")
    planted.mkdir(parents=True)
    planted.chmod(0o777)
    with pytest.raises(DataError, match="group- or world-writable"):
        kheaders.ensure_kernel_headers(sysroot, release)
    assert list(planted.iterdir()) == []
    with pytest.raises(DataError, match="unexpected kernel release"):
        kheaders.ensure_kernel_headers(sysroot, "../../etc")


def test_no_extraction_when_bcc_finds_headers(tmp_path, monkeypatch):
    sysroot, release = _headers_root(tmp_path)
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/usr/src/mine")
    assert kheaders.ensure_kernel_headers(sysroot, release) is None
    monkeypatch.delenv("BCC_KERNEL_SOURCE")
    (sysroot.path(f"/lib/modules/{release}/build")).mkdir(parents=True)
    assert kheaders.ensure_kernel_headers(sysroot, release) is None
    assert not sysroot.path("/run/vnuma_sched").exists()


def test_kernel_source_is_set_only_around_the_call(monkeypatch):
    monkeypatch.delenv("BCC_KERNEL_SOURCE", raising=False)
    with kheaders.kernel_source("/run/vnuma_sched/kheaders-x"):
        assert os.environ["BCC_KERNEL_SOURCE"] == "/run/vnuma_sched/kheaders-x"
    assert "BCC_KERNEL_SOURCE" not in os.environ
    monkeypatch.setenv("BCC_KERNEL_SOURCE", "/theirs")
    with pytest.raises(KeyboardInterrupt), kheaders.kernel_source("/ours"):
        raise KeyboardInterrupt
    assert os.environ["BCC_KERNEL_SOURCE"] == "/theirs"
