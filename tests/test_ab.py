"""A/B: arm parsing, per-run records to statistics, table and plot (no guest)."""

import json
import re
import shutil

import pytest
from click.testing import CliRunner
from helpers import DATA, interval, one_line, write_recording

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, DataError
from vnuma_sched.experiments import ab, arms, compare
from vnuma_sched.tunables import profile as P

AB_DATA = DATA / "ab"


def parse(spec, name="a"):
    return arms.parse_arm(name, spec, P.search_path())


def test_arm_kinds():
    arm = parse("kernel.sched_numa_idle_damp=3 /sys/module/haltpoll/parameters/"
                "guest_halt_poll_ns=0, nopvspin relax_domain_level=4 mitigations=off")
    assert arm.knobs == {"kernel.sched_numa_idle_damp": "3"}
    assert arm.paths == {"/sys/module/haltpoll/parameters/guest_halt_poll_ns": "0"}
    assert arm.boot == ["nopvspin", "relax_domain_level=4", "mitigations=off"]


def test_arm_profile_expands_runtime_and_boot():
    arm = parse("vnuma-guest-dedicated")
    assert arm.knobs["kvm_guest.idle_halt_hint"] == "on"
    assert arm.boot == ["cpuidle_haltpoll.force"]


@pytest.mark.parametrize("spec,needle", [
    ("kernel.sched_numa_idle_damp=9", "outside 0..3"),
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
    same = parse("kernel.sched_numa_idle_damp=0"), parse("kernel.sched_numa_idle_damp=3", "b")
    assert not arms.needs_boot_per_run(*same)
    assert arms.needs_boot_per_run(parse("nopvspin"), parse("kernel.numa_balancing=0", "b"))


def test_order_interleaves():
    assert ab.order(3) == ["a", "b", "a", "b", "a", "b"]


def test_workload_kinds(tmp_path):
    wl = ab.workload("perf-pipe", tmp_path, None, 4, 0, 1000, 64)
    assert wl["argv"] == ["perf", "bench", "sched", "pipe", "-l", "1000"]
    assert wl["env"] == {"OMP_NUM_THREADS": "4", "GOMP_SPINCOUNT": "0"}
    assert ab.workload("cmd:sleep 1", tmp_path, None, 1, 0, 1, 8)["argv"] == ["sleep", "1"]
    with pytest.raises(BadInput, match="--workload"):
        ab.workload("nope", tmp_path, None, 1, 0, 1, 8)


def test_results_from_recorded_runs(tmp_path):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    doc = ab.results(out)
    assert set(doc) >= {"arms", "metrics", "kernel", "topology", "workload"}
    m = doc["metrics"]["cross_node_migrations"]
    assert set(m) >= {"a_median", "b_median", "ratio", "ci95", "p", "n"} and m["n"] == [2, 2]
    assert "workload_score" in doc["metrics"]
    assert json.loads((out / "results.json").read_text())["runs"] == 4


def test_compare_cli_writes_plot(tmp_path):
    out = tmp_path / "ab"
    shutil.copytree(AB_DATA, out)
    png = tmp_path / "c.png"
    res = CliRunner().invoke(main, ["compare", str(out), "--plot", str(png)])
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "cross_node_migrations" in res.output and "B/A" in res.output


def test_runs_file_errors_name_the_line(tmp_path):
    bad = tmp_path / "runs.jsonl"
    bad.write_text('{"type": "guest"}\n{"type": "run", "arm": "c", "score": 1}\n')
    with pytest.raises(DataError, match="line 2: run without arm a/b"):
        compare.read_runs(bad)
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
    assert m["a_median"] == 11 and m["b_median"] == 2 and m["n"] == [3, 3]


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
             "A: steal_ms; B: ipi_call_func")


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
    (lambda r: r[2].update(matrix=[[1]]), "line 3: matrix of 1 nodes, earlier runs have 2"),
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
