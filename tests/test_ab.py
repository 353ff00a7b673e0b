"""A/B: arm parsing, per-run records to statistics, table and plot (no guest)."""

import json
import os
import re
import shutil
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import DATA, golden, interval, one_line, write_recording

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.experiments import ab, arms, compare
from vnuma_sched.experiments.workloads import build
from vnuma_sched.kernel import vm
from vnuma_sched.probes.spec import PRIMARY
from vnuma_sched.render import ab_text
from vnuma_sched.runner import Runner
from vnuma_sched.system.sysroot import SysRoot
from vnuma_sched.system.topology import read_topology
from vnuma_sched.tunables import profile as P

AB_DATA = DATA / "ab"


def parse(spec, name="a"):
    return arms.parse_arm(name, spec, P.search_path())


def test_arm_kinds():
    arm = parse("kernel.numa_balancing=3 /sys/module/haltpoll/parameters/"
                "guest_halt_poll_ns=0, nopvspin relax_domain_level=4 mitigations=off")
    assert arm.knobs == {"kernel.numa_balancing": "3"}
    assert arm.paths == {"/sys/module/haltpoll/parameters/guest_halt_poll_ns": "0"}
    assert arm.boot == ["nopvspin", "relax_domain_level=4", "mitigations=off"]


def test_arm_profile_expands_runtime_and_boot():
    arm = parse("vnuma-guest-dedicated")
    assert arm.knobs["kvm_guest.idle_halt_hint"] == "on"
    assert arm.boot == ["cpuidle_haltpoll.force"]


@pytest.mark.parametrize("spec,needle", [
    ("kernel.numa_balancing=9", "outside 0..3"),
    ("/etc/passwd=1", "only /proc/sys/ and /sys/module/"),
    ("/proc/sys/../../etc/x=1", "only /proc/sys/"),
    ("no-such-profile", "profile 'no-such-profile' not found"),
    ("", "empty arm"),
    ("bad$param=1", "not a knob, path, boot parameter or profile"),
])
def test_bad_arms(spec, needle):
    with pytest.raises(BadInput, match=needle.replace("(", r"\(").replace("$", r"\$")):
        parse(spec)


def test_boot_per_run_only_when_boot_params_differ():
    same = parse("kernel.numa_balancing=0"), parse("kernel.numa_balancing=3", "b")
    assert not arms.needs_boot_per_run(*same)
    assert arms.needs_boot_per_run(parse("nopvspin"), parse("kernel.numa_balancing=0", "b"))
    assert arms.needs_boot_per_run(*same, parse("nopvspin kernel.numa_balancing=0", "c"))
    assert not arms.needs_boot_per_run(parse("nopvspin mitigations=off"),
                                       parse("mitigations=off,nopvspin", "b"))


def test_order_interleaves_and_rotates():
    assert ab.order(["a", "b"], 3) == ["a", "b", "a", "b", "a", "b"]
    assert ab.order(["ref", "off", "on"], 2, 1) == ["off", "on", "ref", "off", "on", "ref"]
    assert ab.order(["ref", "off", "on"], 1, 5) == ["on", "ref", "off"]


def test_schedule_spreads_runs_over_boots_each_starting_with_the_next_arm():
    names = ["ref", "off", "on"]
    sched = ab.schedule(names, 7, 3)
    assert sched == [["ref", "off", "on"] * 3, ["off", "on", "ref"] * 2,
                     ["on", "ref", "off"] * 2]
    assert Counter(a for boot in sched for a in boot) == {"ref": 7, "off": 7, "on": 7}
    assert [boot[0] for boot in ab.schedule(names, 8, 4)] == ["ref", "off", "on", "ref"]
    assert ab.schedule(["a", "b"], 5, 1) == [["a", "b"] * 5]


@pytest.mark.parametrize("runs,boots,needle", [(2, 3, "--runs 2 is fewer than --boots 3"),
                                               (5, 0, "--boots 0: at least 1"),
                                               (5, -1, "--boots -1: at least 1")])
def test_schedule_refuses(runs, boots, needle):
    with pytest.raises(BadInput, match=re.escape(needle)):
        ab.schedule(["a", "b"], runs, boots)


def test_named_arms_split_at_the_first_equals_sign():
    named = arms.named_specs(["ref=vnuma_debug.emulate_halt_preempted=0",
                              "off=kvm_guest.idle_halt_hint=off",
                              "on-2=kvm_guest.idle_halt_hint=on"])
    assert named == [("ref", "vnuma_debug.emulate_halt_preempted=0", "--arm ref"),
                     ("off", "kvm_guest.idle_halt_hint=off", "--arm off"),
                     ("on-2", "kvm_guest.idle_halt_hint=on", "--arm on-2")]
    got = arms.parse_arms(named, P.search_path())
    assert [a.name for a in got] == ["ref", "off", "on-2"]
    assert got[0].knobs == {"vnuma_debug.emulate_halt_preempted": "0"}
    assert got[2].knobs == {"kvm_guest.idle_halt_hint": "on"}
    assert arms.named_specs([], "x=1", "y=2") == [("a", "x=1", "--a"), ("b", "y=2", "--b")]


@pytest.mark.parametrize("opts,a,b,needle", [
    (["ref=x=1", "ref=x=2"], None, None, "--arm ref: the name is given twice"),
    (["Ref=x=1", "b=x=2"], None, None, "--arm 'Ref': a name is a lower-case letter"),
    (["r" * 17 + "=x=1", "b=x=2"], None, None, "a name is a lower-case letter"),
    (["1st=x=1", "b=x=2"], None, None, "--arm '1st'"),
    (["=x=1", "b=x=2"], None, None, "--arm '': a name"),
    (["nopvspin", "b=x=2"], None, None, "--arm 'nopvspin': expected NAME=SPEC"),
    (["only=x=1"], None, None, "1 arm(s): give 2 to 8"),
    ([f"a{i}=x=1" for i in range(9)], None, None, "9 arm(s): give 2 to 8"),
    ([], None, None, "0 arm(s)"),
    (["on=x=1"], "x=1", None, "give one form, not both"),
    ([], "x=1", None, "--a and --b go together"),
    ([], None, "x=1", "--a and --b go together"),
])
def test_named_arms_refused(opts, a, b, needle):
    with pytest.raises(BadInput, match=re.escape(needle)):
        arms.named_specs(opts, a, b)


def test_an_empty_named_arm_names_its_option():
    with pytest.raises(BadInput, match="^--arm on: empty arm$"):
        arms.parse_arms(arms.named_specs(["ref=x=1", "on= ,"]), P.search_path())
    with pytest.raises(BadInput, match=re.escape("--arm ref 'kernel.numa_balancing=9'")):
        arms.parse_arms(arms.named_specs(["ref=kernel.numa_balancing=9", "b=x=1"]),
                        P.search_path())


def test_workload_kinds(tmp_path):
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 1000, 64)
    assert wl["argv"] == ["perf", "bench", "sched", "pipe", "-l", "1000"]
    assert wl["env"] == {"OMP_NUM_THREADS": "4", "GOMP_SPINCOUNT": "0"}
    assert ab.workload("cmd:sleep 1", tmp_path, None, 1, 0, 1, 8)["argv"] == ["sleep", "1"]
    with pytest.raises(BadInput, match="--workload"):
        ab.workload("nope", tmp_path, None, 1, 0, 1, 8)


def test_results_from_recorded_runs(tmp_path):
    """A two-arm directory from before named arms and boots: plan arms a and b, runs
    without a boot index; the same statistics as before, now per arm."""
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    doc = ab.results(out)
    assert set(doc) >= {"arms", "metrics", "kernel", "topology", "workload"}
    assert doc["reference"] == "a" and doc["boots"] == 1 and "pool" not in doc["note"]
    m = doc["metrics"]["cross_node_migrations"]
    assert list(m) == ["a", "b"] and m["a"]["median"] == 9 and m["b"]["median"] == 5
    assert m["a"]["n"] == m["b"]["n"] == 2 and "ratio" not in m["a"]
    assert m["b"]["ratio"] == pytest.approx(5 / 9) and m["b"]["p"] == 1.0
    assert m["b"]["ci95"] == pytest.approx([0.2857, 1.5], abs=1e-3)
    assert m["a"]["boot_medians"] == [9] and m["a"]["between_boots_iqr"] is None
    assert m["a"]["within_boot_iqr"] == 5.0   # 14 and 4: IQR = half the range
    assert "workload_score" in doc["metrics"]
    assert json.loads((out / "results.json").read_text())["runs"] == 4


def test_compare_of_a_two_arm_directory_is_unchanged(tmp_path):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    res = CliRunner().invoke(main, ["compare", str(out)])
    assert res.exit_code == 0, res.output
    golden("compare-ab-two-arms.txt", res.output)


def test_compare_cli_writes_plot(tmp_path):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    png = tmp_path / "c.png"
    res = CliRunner().invoke(main, ["compare", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "cross_node_migrations" in res.output and "B/A" in res.output


@pytest.mark.parametrize("rec, needle", [
    ({"arm": "C", "score": 1}, "line 2: run without an arm name or score"),
    ({"arm": 3, "score": 1}, "line 2: run without an arm name"),
    ({"arm": "a", "score": 1, "boot": -1}, "line 2: boot -1 is not a boot index"),
    ({"arm": "a", "score": 1, "boot": "0"}, "line 2: boot '0' is not a boot index"),
    ({"arm": "a", "score": 1, "boot": True}, "line 2: boot True is not a boot index"),
])
def test_runs_file_errors_name_the_line(tmp_path, rec, needle):
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"type": "guest"}\n' + json.dumps({"type": "run", **rec}) + "\n")
    with pytest.raises(DataError, match=re.escape(needle)):
        compare.read_runs(bad)


def test_a_truncated_runs_file_names_the_line(tmp_path):
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"type": "run", "arm": "a", "sc')
    with pytest.raises(DataError, match="line 1: not JSON"):
        compare.read_runs(bad)


def _recording(path, cross, exit_ok=True):
    rec = interval(2)
    rec["probes"]["migrate"]["matrix"]["wake"]["busy"][0][1] = cross
    write_recording(path, [rec], meta={"type": "meta", "version": 1, "kernel": "6.12.117",
                                       "command": ["omp-barrier"], "probes": {}})
    return path


def test_compare_two_recording_sets(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i, (ca, cb) in enumerate(((10, 2), (12, 3), (11, 2))):
        _recording(tmp_path / "a" / f"r{i}.jsonl", ca)
        _recording(tmp_path / "b" / f"r{i}.jsonl", cb)
    res = CliRunner().invoke(main, ["compare", "--json", str(tmp_path / "a"),
                                    str(tmp_path / "b")])
    assert res.exit_code == 0, res.output
    m = json.loads(res.output)["metrics"]["cross_node_migrations"]
    assert m["a"]["median"] == 11 and m["b"]["median"] == 2 and m["b"]["n"] == 3
    assert m["b"]["ratio"] == pytest.approx(2 / 11)


def test_compare_rejects_other_shapes(tmp_path):
    res = CliRunner().invoke(main, ["compare", str(tmp_path)])
    assert res.exit_code == 2 and "two recording sets" in res.output


# --- bad data: exit 3 naming the file; bad options: exit 2 before any work -----------


def _only(path, probe):
    """A recording (no command) whose interval has one probe only."""
    rec = interval(2)
    rec["probes"] = {probe: rec["probes"][probe]}
    return write_recording(path, [rec])


def test_compare_of_runs_without_a_common_metric_is_bad_data(tmp_path):
    for arm, probe in (("a", "steal"), ("b", "ipi")):
        (tmp_path / arm).mkdir()
        for i in range(2):
            _only(tmp_path / arm / f"r{i}.jsonl", probe)
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b")])
    one_line(res, 3, "no metric has at least 2 values in both arms",
             "a: steal_ms; b: ipi_call_func")


@pytest.mark.parametrize("content", [b'{"arms": {"a": ', b"\x89PNG\r\n\x1a\n\x00",
                                     b"[1, 2]", b'{"arms": {"a": "x"}}',
                                     b'{"arms": {}, "workload": "x"}'])
def test_compare_with_a_corrupt_plan_names_it(tmp_path, content):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    (out / "plan.json").write_bytes(content)
    err = one_line(CliRunner().invoke(main, ["compare", str(out)]), 3,
                   f"{out / 'plan.json'}: ")
    assert err.count(str(out)) == 1


def test_compare_plot_into_a_missing_folder_is_refused_first(tmp_path, monkeypatch):
    def no_work(*args, **kw):
        raise AssertionError("computed before checking --plot")

    monkeypatch.setattr(ab, "results", no_work)
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    png = tmp_path / "missing" / "c.png"
    one_line(CliRunner().invoke(main, ["compare", str(out), "--plot", str(png)]), 2,
             f"--plot {png}: its folder does not exist")
    assert not png.parent.exists()


def _runs(path, change):
    recs = [json.loads(ln) for ln in (AB_DATA / "runs.jsonl").read_text().splitlines()]
    change(recs)
    path.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return path


@pytest.mark.parametrize("change, needle", [
    (lambda r: r[1]["metrics"].update(halts="12"), "line 2: metrics is not an object of"),
    (lambda r: r[2].update(score="fast"), "line 3: score 'fast' is not a number"),
    (lambda r: r[2].update(score=True), "line 3: score True is not a number"),
    (lambda r: r[1].update(metrics=[1]), "line 2: metrics is not an object"),
    (lambda r: r[1].update(matrix=[[1, 2], [3]]), "line 2: matrix is not a square table"),
    (lambda r: r[3].update(matrix=[[1]]),
     "line 4: matrix of 1 nodes, earlier runs have 2 (arm a)"),
    (lambda r: r[1]["metrics"].update(halts=float("inf")), "line 2: metrics is not"),
])
def test_runs_with_wrong_types_name_the_line(tmp_path, change, needle):
    runs = _runs(tmp_path / "runs.jsonl", change)
    with pytest.raises(DataError, match=re.escape(needle)):
        compare.read_runs(runs)
    shutil.copy(AB_DATA / "plan.json", tmp_path / "plan.json")
    one_line(CliRunner().invoke(main, ["compare", str(tmp_path)]), 3, f"{runs}: {needle}")


def test_a_binary_runs_file_is_bad_data(tmp_path):
    (tmp_path / "runs.jsonl").write_bytes(b"\xff\xfe\x00\x01")
    one_line(CliRunner().invoke(main, ["compare", str(tmp_path)]), 3,
             "line 1: not UTF-8 text; not a runs file")


def test_recordings_of_different_node_counts(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for i in range(2):
        _recording(tmp_path / "a" / f"r{i}.jsonl", 10 + i)
        _recording(tmp_path / "b" / f"r{i}.jsonl", 2 + i)
    rec = interval(4)
    write_recording(tmp_path / "b" / "r9.jsonl", [rec],
                    meta={"type": "meta", "version": 1, "command": ["x"], "probes": {}})
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "a"), str(tmp_path / "b"),
                                    "--plot", str(tmp_path / "c.png")])
    one_line(res, 3, f"{tmp_path / 'b' / 'r9.jsonl'}: a 4-node migration matrix")


# --- named arms and several boots, with a fake guest -----------------------------------

BASE = {"ref": 10, "off": 20, "on": 5}


class FakeGuest:
    """vm.run for 'ab': runs the plan's order as the guest agent does, with known numbers:
    cross_node_migrations = the arm's base + 100 per boot + the arm's run number in the
    boot; halts is 7 everywhere. Keeps each boot's plan, command line and timeout."""

    def __init__(self):
        self.plans, self.appends, self.timeouts = [], [], []

    def __call__(self, image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        plan = json.loads(Path(cmd[-1]).read_text())
        boot = len(self.plans)
        self.plans.append(plan)
        self.appends.append(list(append))
        self.timeouts.append(timeout)
        recs = [{"type": "guest", "kernel": "6.12.117+", "topology": {"nodes": []},
                 "probes": {"migrate": {"available": True, "reason": ""}}}]
        seen = Counter()
        for i, name in enumerate(plan["order"]):
            arm = plan["arms"][name]   # what the guest agent reads of an arm
            assert set(arm) >= {"knobs", "paths"}
            v = BASE.get(name, 1) + 100 * boot + seen[name]
            seen[name] += 1
            recs.append({"type": "run", "index": i, "arm": name, "seconds": 1.0,
                         "score": 1000.0 + v, "matrix": [[v, 1], [1, v]],
                         "metrics": {"cross_node_migrations": v, "halts": 7}})
        return vm.VmResult("exited", 0, accel, 1.0,
                           stdout="".join(json.dumps(r) + "\n" for r in recs))


def _arms(*items):
    return arms.parse_arms(arms.named_specs(list(items)), P.search_path())


THREE = ("ref=kernel.numa_balancing=0", "off=kvm_guest.idle_halt_hint=off",
         "on=kvm_guest.idle_halt_hint=on")


def _run(tmp_path, monkeypatch, arm_list, runs, boots):
    guest, said = FakeGuest(), []
    monkeypatch.setattr(vm, "run", guest)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    doc = ab.run("bzImage", None, wl, arm_list, runs, boots, tmp_path / "out", None,
                 said.append, "tcg", 60, ["console=ttyS0"])
    return doc, guest, said


def test_three_arms_over_two_boots(tmp_path, monkeypatch):
    doc, guest, said = _run(tmp_path, monkeypatch, _arms(*THREE), 4, 2)
    assert [p["order"] for p in guest.plans] == [["ref", "off", "on"] * 2,
                                                 ["off", "on", "ref"] * 2]
    assert all(list(p["arms"]) == ["ref", "off", "on"] and p["reference"] == "ref"
               for p in guest.plans)
    assert [p["boot"] for p in guest.plans] == [0, 1] and guest.timeouts == [360, 360]
    assert guest.appends == [["console=ttyS0"]] * 2
    runs = [json.loads(ln) for ln in (tmp_path / "out" / "runs.jsonl").read_text().splitlines()]
    run_recs = [r for r in runs if r["type"] == "run"]
    assert [r["boot"] for r in run_recs] == [0] * 6 + [1] * 6
    assert [r["index"] for r in run_recs] == list(range(12))
    assert [r["boot"] for r in runs if r["type"] == "guest"] == [0, 1]
    assert any("2 boots, 12 runs" in s and "ref off on ... | off on ref ..." in s for s in said)

    assert doc["reference"] == "ref" and doc["boots"] == 2 and doc["runs"] == 12
    assert doc["mode"] == "2 boots" and "pool all runs of an arm" in doc["note"]
    m = doc["metrics"]["cross_node_migrations"]
    assert list(m) == ["ref", "off", "on"]
    # ref: boot 0 runs 10, 11; boot 1 runs 110, 111
    assert m["ref"]["median"] == 60.5 and m["ref"]["n"] == 4
    assert m["ref"]["boot_medians"] == [10.5, 110.5]
    assert m["ref"]["between_boots_iqr"] == 50.0 and m["ref"]["within_boot_iqr"] == 0.5
    assert m["ref"]["boots_dominate"] is True and "ratio" not in m["ref"]
    # every other arm against the reference, not against its neighbour
    assert m["off"]["ratio"] == pytest.approx(70.5 / 60.5)
    assert m["on"]["ratio"] == pytest.approx(55.5 / 60.5)
    assert m["off"]["u"] == 4 and m["on"]["u"] == 12   # U of the reference's values
    assert m["off"]["ci95"][0] <= m["off"]["ratio"] <= m["off"]["ci95"][1]
    h = doc["metrics"]["halts"]
    assert h["on"]["ratio"] == 1 and h["ref"]["between_boots_iqr"] == 0
    assert h["ref"]["boots_dominate"] is False
    assert json.loads((tmp_path / "out" / "results.json").read_text()) == doc


def test_arms_differing_in_boot_parameters_boot_once_per_run(tmp_path, monkeypatch):
    arm_list = _arms("ref=kernel.numa_balancing=0", "pv=nopvspin",
                     "mit=mitigations=off kernel.numa_balancing=0")
    doc, guest, said = _run(tmp_path, monkeypatch, arm_list, 2, 2)
    assert [p["order"] for p in guest.plans] == [["ref"], ["pv"], ["mit"],
                                                 ["pv"], ["mit"], ["ref"]]
    assert [a[1:] for a in guest.appends] == [[], ["nopvspin"], ["mitigations=off"],
                                              ["nopvspin"], ["mitigations=off"], []]
    assert guest.timeouts == [60] * 6
    assert any("one boot per run, so 6 boots" in s and "not --boots 2" in s for s in said)
    assert doc["mode"] == "boot per run" and doc["boots"] == 6
    ref = doc["metrics"]["cross_node_migrations"]["ref"]
    assert ref["boot_medians"] == [10, 510] and ref["within_boot_iqr"] is None


def test_arms_with_the_same_boot_parameters_share_boots_beside_one_that_boots_alone(
        tmp_path, monkeypatch):
    # the problem-2 comparison: two run-time arms and one with a boot parameter
    arm_list = _arms("off=feature.NUMA_WAKE_PREV=0", "wake=feature.NUMA_WAKE_PREV=1",
                     "relax=feature.NUMA_WAKE_PREV=0 relax_domain_level=3")
    doc, guest, said = _run(tmp_path, monkeypatch, arm_list, 4, 2)
    assert [p["order"] for p in guest.plans] == [["off", "wake", "off", "wake"], ["relax"],
                                                 ["relax"], ["wake", "off", "wake", "off"],
                                                 ["relax"], ["relax"]]
    assert [a[1:] for a in guest.appends] == [[], ["relax_domain_level=3"],
                                              ["relax_domain_level=3"], [],
                                              ["relax_domain_level=3"],
                                              ["relax_domain_level=3"]]
    assert doc["mode"] == "boot per run (relax); 2 boots (off wake)" and doc["boots"] == 6
    assert any(s.startswith("6 boots: boot per run (relax); 2 boots (off wake)")
               for s in said)
    m = doc["metrics"]["cross_node_migrations"]
    assert [m[a]["n"] for a in ("off", "wake", "relax")] == [4, 4, 4]
    assert len(m["off"]["boot_medians"]) == 2 and len(m["relax"]["boot_medians"]) == 4


def test_two_arms_in_one_boot_keep_the_old_plan(tmp_path, monkeypatch):
    arm_list = arms.parse_arms(arms.named_specs([], "kernel.numa_balancing=0",
                                                "kernel.numa_balancing=3"),
                               P.search_path())
    doc, guest, said = _run(tmp_path, monkeypatch, arm_list, 3, 1)
    (plan,) = guest.plans
    assert plan["order"] == ["a", "b"] * 3 and plan["mode"] == "one boot"
    assert set(plan) >= {"arms", "order", "workload", "probes", "mode"}
    assert doc["boots"] == 1 and "pool" not in doc["note"]
    assert any(s.startswith("one boot, 6 runs") for s in said)
    assert "A: kernel.numa_balancing=0   B: kernel.numa_balancing=3" in \
        ab_text(doc, PRIMARY)


def test_three_arm_text_compares_each_with_the_reference(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, _arms(*THREE), 4, 2)
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    golden("compare-ab-three-arms.txt", res.output)
    lines = res.output.splitlines()
    assert max(map(len, lines)) < 100
    row = next(i for i, ln in enumerate(lines) if ln.startswith("cross_node_migrations "))
    assert lines[row].split() == ["cross_node_migrations", "ref", "60.5"]
    assert lines[row + 1].split()[:3] == ["off", "70.5", "1.17"]
    assert lines[row + 2].split()[:3] == ["on", "55.5", "0.917"]
    spread = lines[next(i for i, ln in enumerate(lines) if ln.startswith("spread")):]
    assert any(ln.split() == ["cross_node_migrations", "ref", "50", "0.5", "boots", "dominate"]
               for ln in spread)
    assert any(ln.split() == ["halts", "ref", "0", "0"] for ln in spread)


def test_compare_json_and_plot_of_three_arms(tmp_path, monkeypatch):
    _run(tmp_path, monkeypatch, _arms(*THREE), 4, 2)
    res = CliRunner().invoke(main, ["compare", "--json", str(tmp_path / "out")])
    doc = json.loads(res.output)
    assert doc["reference"] == "ref" and set(doc["metrics"]["halts"]) == {"ref", "off", "on"}
    png = tmp_path / "c.png"
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "out"), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000


def test_plot_shows_every_arm_reference_first(tmp_path, monkeypatch):
    pytest.importorskip("matplotlib")
    _run(tmp_path, monkeypatch, _arms(*THREE), 4, 2)
    panels = []
    monkeypatch.setattr(compare, "_runs_panel", lambda ax, runs, metric, names, entry:
                        panels.append((metric, [a for a in names if a in entry])))
    _, runs, _, names = ab.read_runs(tmp_path / "out")
    mets = compare.metrics(runs, "x", names)
    compare.plot(runs, mets, names, compare.matrices(runs), tmp_path / "p.png", "t")
    assert panels == [(m, ["ref", "off", "on"]) for m in PRIMARY if m in mets]
    assert [m for m, _ in panels] == ["workload_score", "cross_node_migrations", "halts"]


def test_a_run_of_an_arm_the_plan_lacks_is_bad_data(tmp_path):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    _runs(out / "runs.jsonl", lambda r: r[2].update(arm="c"))
    one_line(CliRunner().invoke(main, ["compare", str(out)]), 3,
             f"{out / 'runs.jsonl'}: a run of arm 'c', which plan.json lacks")


def test_ab_cli_with_three_arms_and_boots(tmp_path, monkeypatch):
    guest = FakeGuest()
    monkeypatch.setattr(vm, "run", guest)
    image = tmp_path / "bzImage"
    image.write_bytes(b"MZ fake")
    out = tmp_path / "out"
    args = ["ab", "--kernel", str(image), "--workload", "perf-pipe", "--accel", "tcg",
            "--runs", "3", "--boots", "2", "--out", str(out)]
    for item in THREE:
        args += ["--arm", item]
    res = CliRunner().invoke(main, args, env={"VNUMA_SCHED_CACHE": str(tmp_path / "c")})
    assert res.exit_code == 0, res.output
    assert [p["order"] for p in guest.plans] == [["ref", "off", "on"] * 2,
                                                 ["off", "on", "ref"]]
    assert "each against the reference ref" in res.stdout and "results:" in res.stdout
    doc = json.loads((out / "results.json").read_text())
    assert doc["metrics"]["cross_node_migrations"]["on"]["n"] == 3


ARMS2 = ["--arm", "ref=kernel.numa_balancing=0", "--arm", "on=kernel.numa_balancing=3"]


@pytest.mark.parametrize("args, needle", [
    (["--arm", "ref=kernel.numa_balancing=0", "--arm", "ref=nopvspin"],
     "--arm ref: the name is given twice"),
    (["--arm", "Ref=nopvspin", "--arm", "on=nopvspin"], "--arm 'Ref': a name is"),
    (["--arm", "ref=", "--arm", "on=nopvspin"], "--arm ref: empty arm"),
    (["--arm", "ref=nopvspin"], "1 arm(s): give 2 to 8"),
    ([], "0 arm(s): give 2 to 8"),
    (["--a", "nopvspin", *ARMS2], "give one form, not both"),
    (["--b", "nopvspin"], "--a and --b go together"),
    ([*ARMS2, "--boots", "0"], "--boots 0: at least 1"),
    ([*ARMS2, "--runs", "2", "--boots", "3"], "--runs 2 is fewer than --boots 3"),
    (["--arm", "ref=kernel.numa_balancing=9", "--arm", "on=nopvspin"],
     "--arm ref 'kernel.numa_balancing=9'"),
])
def test_ab_refuses_bad_arms_before_anything(tmp_path, monkeypatch, args, needle):
    def no_work(*a, **kw):
        raise AssertionError("worked before validating")

    for name in ("run", "kernel_image", "choose_accel"):
        monkeypatch.setattr(vm, name, no_work)
    out, cache = tmp_path / "out", tmp_path / "cache"
    res = CliRunner().invoke(main, ["ab", "--kernel", str(tmp_path / "k"), "--out", str(out),
                                    *args], env={"VNUMA_SCHED_CACHE": str(cache)})
    one_line(res, 2, needle)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("out", ["/var/cache/vnuma-ab-out", "/var/tmp/ab", "/run/ab"])
def test_ab_refuses_an_out_dir_the_guest_cannot_see(tmp_path, monkeypatch, out):
    def no_work(*a, **kw):
        raise AssertionError("worked before validating")

    for name in ("run", "kernel_image", "choose_accel"):
        monkeypatch.setattr(vm, name, no_work)
    res = CliRunner().invoke(main, ["ab", "--kernel", str(tmp_path / "k"), "--out", out, *ARMS2],
                             env={"VNUMA_SCHED_CACHE": str(tmp_path / "cache")})
    one_line(res, 2, f"--out {out}: a guest cannot see")
    assert not os.path.exists(out) and list(tmp_path.iterdir()) == []


def test_guest_visible_paths_resolve_symlinks(tmp_path):
    link = tmp_path / "to-var-tmp"
    link.symlink_to("/var/tmp")
    with pytest.raises(BadInput, match="cannot see /var/tmp"):
        vm.check_guest_visible(link / "x", "--out")
    assert vm.check_guest_visible(tmp_path / "x", "--out") == (tmp_path / "x").resolve()


def test_workload_figures_are_parsed_beside_the_score():
    out = ("omp-barrier threads=8 iterations=3000 kib=256 seconds=2.5 checksum=1.0 "
           "remote_run_fraction=0.125000 iter_per_s=1200.000\n")
    assert build.figures("omp-barrier", out) == {"remote_run_fraction": 0.125}
    assert build.score("omp-barrier", out, 9.0) == 1200.0
    assert build.figures("omp-barrier", out.replace("remote_run_fraction=0.125000 ", "")) == {}
    assert build.figures("perf-pipe", out) == {}


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_omp_barrier_reports_where_its_threads_ran_against_their_memory(tmp_path):
    exe = build.omp_barrier(tmp_path, Runner())
    res = Runner().run([str(exe), "50", "64"], env={**os.environ, "OMP_NUM_THREADS": "2",
                                                  "GOMP_SPINCOUNT": "0"})
    got = build.figures("omp-barrier", res.stdout)
    assert 0.0 <= got["remote_run_fraction"] <= 1.0
    if len(read_topology(SysRoot("/")).nodes) == 1:   # one node: nothing can be remote
        assert got["remote_run_fraction"] == 0.0


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc")
def test_omp_barrier_per_thread_lines_follow_the_block_s_node(tmp_path):
    """OMP_BARRIER_PER_THREAD=1: a line per thread on stderr, stdout unchanged; with
    more iterations than HOME_EVERY the block's node is looked up again during the
    run (home_moves counts the changes NUMA balancing made)."""
    exe = build.omp_barrier(tmp_path, Runner())
    env = {**os.environ, "OMP_NUM_THREADS": "3", "GOMP_SPINCOUNT": "0"}
    res = Runner().run([str(exe), "250", "64"], env={**env, "OMP_BARRIER_PER_THREAD": "1"})
    lines = sorted(res.stderr.splitlines())
    rx = re.compile(r"thread=(\d) home=(-?\d+) on_home=([0-9.]+) node_changes=(\d+) "
                    r"home_moves=(\d+)")
    got = [rx.fullmatch(line) for line in lines]
    assert all(got) and [int(m.group(1)) for m in got] == [0, 1, 2], lines
    assert all(0.0 <= float(m.group(3)) <= 1.0 for m in got)
    assert "thread=" not in res.stdout and build.score("omp-barrier", res.stdout, 1.0) > 0
    if len(read_topology(SysRoot("/")).nodes) == 1:   # one node: nothing moves
        assert all(m.group(2) == "0" and m.group(3) == "1.000" and m.group(5) == "0"
                   for m in got)


def _panic_result(accel, console):
    res = vm.VmResult("panic", 255, accel, 1.0, console_tail=console.splitlines()[-15:],
                      panic="Kernel panic - not syncing: Fatal exception")
    res.console = console
    return res


PANIC_CONSOLE = "".join(f"boot line {i}\n" for i in range(40)) + (
    "RIP: 0010:some_function+0x1/0x2\nKernel panic - not syncing: Fatal exception\n")


def test_a_guest_that_panics_twice_keeps_both_consoles_beside_the_plan(tmp_path, monkeypatch):
    calls = []

    def panics(image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        calls.append(json.loads(Path(cmd[-1]).read_text())["boot"])
        return _panic_result(accel, PANIC_CONSOLE + f"attempt {len(calls)}\n")

    monkeypatch.setattr(vm, "run", panics)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    said = []
    with pytest.raises(ab.GuestFailed, match=r"guest panic .* \(console: .*console-boot0-2\.log\)"):
        ab.run("bzImage", None, wl, _arms(*THREE), 2, 1, tmp_path / "out", None,
               said.append, "tcg", 60, [])
    assert calls == [0, 0]      # booted once more, then given up
    assert (tmp_path / "out" / "console-boot0.log").read_text() == PANIC_CONSOLE + "attempt 1\n"
    assert (tmp_path / "out" / "console-boot0-2.log").read_text().endswith("attempt 2\n")
    assert any("booting it again (once)" in m and "console-boot0.log" in m for m in said)


def test_a_boot_that_panics_once_is_booted_again_and_said_in_the_results(tmp_path, monkeypatch):
    guest, panicked = FakeGuest(), []

    def flaky(image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        plan = json.loads(Path(cmd[-1]).read_text())
        if plan["boot"] == 1 and not panicked:
            panicked.append(1)
            return _panic_result(accel, PANIC_CONSOLE)
        return guest(image, topo, cmd, runner, accel, timeout, append, workdir)

    monkeypatch.setattr(vm, "run", flaky)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    doc = ab.run("bzImage", None, wl, _arms(*THREE), 4, 2, tmp_path / "out", None,
                 lambda m: None, "tcg", 60, [])
    assert [p["boot"] for p in guest.plans] == [0, 1]     # the retry ran boot 1's plan
    assert doc["runs"] == 12 and doc["boots"] == 2
    console = str(tmp_path / "out" / "console-boot1.log")
    assert [(r["boot"], r["console"]) for r in doc["retried"]] == [(1, console)]
    assert f"boot 2 panicked and was booted again (console: {console})" in doc["note"]
    assert json.loads((tmp_path / "out" / "results.json").read_text())["retried"] == doc["retried"]


def test_a_guest_timeout_is_not_booted_again(tmp_path, monkeypatch):
    calls = []

    def hangs(image, topo, cmd, runner, accel, timeout, append=(), workdir=None):
        calls.append(1)
        return vm.VmResult("timeout", None, accel, 1.0, console_tail=["still booting"])

    monkeypatch.setattr(vm, "run", hangs)
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 100, 64)
    with pytest.raises(ab.GuestFailed, match=r"guest timeout"):
        ab.run("bzImage", None, wl, _arms(*THREE), 2, 1, tmp_path / "out", None,
               lambda m: None, "tcg", 60, [])
    assert calls == [1]


def test_vm_result_carries_the_whole_console(tmp_path):
    text = "x\n" * 50 + "Kernel panic - not syncing: Oops\n"
    res = vm.classify(tmp_path, text, False, "tcg", 1.0)
    assert res.status == "panic" and res.console == text and len(res.console_tail) == 15


def test_one_run_per_arm_is_refused_before_anything_boots(tmp_path):
    """Statistics need two runs per arm: --runs 1 is a usage error, not hours of
    boots ending in 'nothing to compare'."""
    out = tmp_path / "out"
    res = CliRunner().invoke(main, ["ab", "--kernel", str(tmp_path), "--runs", "1",
                                    "--a", "feature.WA_IDLE=0", "--b", "feature.WA_IDLE=1",
                                    "--out", str(out)])
    assert res.exit_code == 2 and "--runs" in res.output and not out.exists()
