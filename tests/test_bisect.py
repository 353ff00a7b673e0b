"""bisect: the verdict rules (table), and whole bisects over a synthetic repository
whose 'kernel' is the fake Makefile and whose metric comes from a file."""

import json
import math
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import DATA, FAKE_KERNEL, git, one_line

from vnuma_sched.bisect import drive, measure, options, state
from vnuma_sched.bisect import verdict as V
from vnuma_sched.bisect.measure import Guest
from vnuma_sched.bisect.source import SkipCommit
from vnuma_sched.cli.bisect import METRICS_HELP, _options, bisect_step
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.experiments import ab as abmod
from vnuma_sched.kernel import vm as vmmod
from vnuma_sched.probes.spec import METRICS
from vnuma_sched.system.topology import Node, Topology

# --- the verdict function ------------------------------------------------------------

@pytest.mark.parametrize("values, threshold, bad_above, expected", [
    ([10, 11, 12, 13, 14], 20, True, V.GOOD),
    ([30, 31, 29, 33, 28], 20, True, V.BAD),
    ([10, 30, 12, 31, 29], 20, True, V.UNDECIDED),      # the interval straddles
    ([19, 20, 21, 22, 23], 20, True, V.UNDECIDED),      # touching is not crossing
    ([30, 31, 29, 33, 28], 20, False, V.GOOD),          # lower is worse
    ([10, 11, 12, 13, 14], 20, False, V.BAD),
    ([5], 20, True, V.GOOD),
    ([25], 20, True, V.BAD),
    # n = 10: the interval drops the most extreme value on each side (coverage 0.98)
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 100], 50, True, V.GOOD),
    ([1, 60, 70, 80, 90, 95, 96, 97, 98, 99], 50, True, V.BAD),
    # n = 5 keeps the whole range: one outlier makes it undecided
    ([1, 2, 3, 4, 100], 50, True, V.UNDECIDED),
])
def test_verdict_table(values, threshold, bad_above, expected):
    assert V.decide(values, threshold, bad_above).verdict == expected


@pytest.mark.parametrize("n", range(1, 16))
def test_median_interval_coverage_is_the_binomial_one(n):
    lo, hi, cov = V.median_interval(list(range(n)))
    k = lo + 1
    assert hi == n - k
    exact = 1 - 2 * sum(math.comb(n, i) for i in range(k)) / 2 ** n
    assert cov == pytest.approx(exact)
    # the narrowest interval that reaches the level, or the whole range
    assert cov >= V.LEVEL or k == 1
    if k + 1 <= (n + 1) // 2:
        assert V.median_coverage(n, k + 1) < V.LEVEL


def test_endpoints_threshold_and_refusals():
    good, bad = [100, 98, 103, 101, 99], [150, 148, 153, 151, 149]
    ep = V.endpoints(good, bad)
    # separated runs: the middle of the gap between them (103 and 148), not of the medians
    assert (ep.good_median, ep.bad_median, ep.threshold, ep.bad_above) == (100, 150, 125.5, True)
    assert V.endpoints(bad, good).threshold == 125.5
    # a skewed bad end: [0]*5 against runs of 6276..19752 (seen in a guest) must not put the
    # threshold inside the bad runs, as the midway of the medians (8207) does
    assert V.endpoints([0] * 5, [19752, 7484, 19609, 16414, 6276]).threshold == 3138
    # overlapping runs: midway between the medians
    assert V.endpoints([100, 98, 130, 101, 99], [150, 120, 153, 151, 149]).threshold == 125
    assert ep.p <= V.ALPHA
    assert V.endpoints(bad, good).bad_above is False
    assert V.endpoints(good, bad, threshold=110).threshold == 110
    with pytest.raises(V.EndpointsAlike):
        V.endpoints(good, [101, 97, 104, 100, 98])
    with pytest.raises(ValueError, match="not between"):
        V.endpoints(good, bad, threshold=160)
    with pytest.raises(ValueError, match="above the good"):
        V.endpoints(good, bad, bad_above=False)
    assert V.min_runs_for() == 4   # 3 vs 3 cannot reach p <= 0.05
    with pytest.raises(V.EndpointsAlike):
        V.endpoints([1, 2, 3], [7, 8, 9])
    assert [V.estimate_steps(n) for n in (1, 2, 3, 8, 9)] == [0, 1, 2, 3, 4]


def test_unknown_metric_is_refused_with_suggestions():
    with pytest.raises(Exception, match="unknown metric.*did you mean.*cross_node_migrations"):
        options.Options(metric="cross_node_migration").check()
    assert options.Options(metric="workload_score").worse_above() is False
    assert options.Options(metric="halts").worse_above() is True


def test_step_command_line_reproduces_the_options(tmp_path):
    opts = options.Options(metric="workload_score", runs=4, threshold=1234567.125, bad_above=False,
                           fragments=[str(frag(tmp_path))], carry_patches=True,
                           append=["x=1"],
                           measure_cmd="lab-measure --fast")

    ctx = bisect_step.make_context("step", opts.step_args())
    kw = dict(ctx.params)
    again = _options(kw, kw.pop("threshold"), kw.pop("bad_when"))
    assert again == opts


# --- a synthetic kernel history ------------------------------------------------------

def commit(tree, message, **files):
    for name, text in files.items():
        if text is None:
            (tree / name).unlink()
        else:
            (tree / name).write_text(text)
    git(tree, "add", "-A")
    git(tree, "commit", "-q", "-m", message)
    return git(tree, "rev-parse", "HEAD")


@pytest.fixture
def history(tmp_path, monkeypatch):
    """c0 good (value 100) .. c8: c2 changes the image (value 101, still good), c4 does
    not build (fixed in c5, same tree as c3), c6 raises the metric to 150 (the first bad
    commit); README-only commits give images identical to their parents'."""
    t = tmp_path / "linux"
    shutil.copytree(FAKE_KERNEL, t)
    git(t, "init", "-q", "-b", "main")
    c = [commit(t, "base", metric="value=100\n")]
    c.append(commit(t, "docs: one", README="1\n"))
    c.append(commit(t, "sched: add a helper", helper="x\n", metric="value=101\n"))
    c.append(commit(t, "docs: two", README="2\n"))
    c.append(commit(t, "sched: break the build", BROKEN="1\n"))
    c.append(commit(t, "sched: fix the build", BROKEN=None))
    c.append(commit(t, "sched/fair: move wake-ups across nodes", metric="value=150\n"))
    c.append(commit(t, "docs: three", README="3\n"))
    c.append(commit(t, "docs: four", README="4\n"))
    monkeypatch.setenv("VNUMA_SCHED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_MEASURE_LOG", str(tmp_path / "measured"))
    monkeypatch.delenv("FAKE_MEASURE_ABORT", raising=False)
    return t, c


def frag(tmp_path):
    p = tmp_path / "guest.config"
    p.write_text("# why: test\nCONFIG_SMP=y\n")
    return p


MEASURE = f"{sys.executable} {DATA / 'fake_measure.py'}"


def bisect(tree, *args, extra=(), measure=True):
    """'bisect ARGS --tree TREE': run with the fake lab; replay gives the command again
    (a log's header is not trusted) unless ``measure`` is False."""
    argv = ["bisect", *args, "--tree", str(tree)]
    if args[0] == "run":
        argv += ["--metric", "cross_node_migrations", "--runs", "5",
                 "--measure-cmd", MEASURE, "--fragment", str(frag(tree.parent))]
    elif args[0] == "replay" and measure:
        argv += ["--measure-cmd", MEASURE]
    return CliRunner().invoke(main, [*argv, *extra])


def untouched(tree, head):
    assert git(tree, "symbolic-ref", "--short", "HEAD") == "main"
    assert git(tree, "rev-parse", "HEAD") == head
    assert git(tree, "status", "--porcelain") == ""
    assert not (tree / ".git" / "BISECT_START").exists()


def measured(tmp_path):
    p = tmp_path / "measured"
    return p.read_text().split() if p.exists() else []


def test_bisect_run_names_the_first_bad_commit(history, tmp_path):
    tree, c = history
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8], extra=["--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    fb = doc["first_bad"]
    assert fb["commit"] == c[6]
    assert fb["subject"] == "sched/fair: move wake-ups across nodes"
    assert fb["at"]["verdict"] == "bad" and fb["at"]["median"] == 150
    assert fb["parent"] == c[5] and fb["at_parent"]["median"] == 101
    assert (doc["threshold"], doc["bad_when"]) == (125.5, "above")
    by_commit = {s["commit"]: s for s in doc["steps"]}
    # git tests c4 first: it does not build, so it is skipped
    assert by_commit[c[4]]["verdict"] == "skip"
    assert "build failed" in by_commit[c[4]]["reason"]
    # README-only commits give the same image: measured once per distinct image
    calls = measured(tmp_path)
    assert len(calls) == len(set(calls))
    # c7 and c8 only touch the README: c6 (always tested, it is the answer) has the bad
    # endpoint's image and reuses its runs, measured before git bisect started
    assert by_commit[c[6]]["reused_from"] == c[8] and c[6] not in calls
    assert calls[:2] == [c[0], c[8]]
    assert not {s["commit"] for s in doc["steps"] if s.get("reused_from")} & set(calls)
    assert f"first bad commit: [{c[6]}]" in doc["git_log"]
    log = Path(doc["log_file"]).read_text()
    assert log.startswith(state.HEADER) and "git bisect start" in log
    untouched(tree, c[8])


def test_bisect_run_text_shows_progress_result_and_log(history):
    tree, c = history
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8])
    assert res.exit_code == 0, res.stderr
    assert "endpoints differ: cross_node_migrations 100 -> 150" in res.stderr
    assert "step 1 of about 3" in res.stderr
    assert f"first bad commit: {c[6]} sched/fair: move wake-ups across nodes" in res.stdout
    assert "at it:         median 150" in res.stdout
    assert f"at its parent {c[5][:12]}: median 101" in res.stdout
    assert "git bisect log:" in res.stdout and "# good: [" in res.stdout


def test_a_broken_build_is_skipped_and_reported(history, tmp_path):
    """c2..c6: git tests c4 first, which does not build: skip it and still find c6."""
    tree, c = history
    res = bisect(tree, "run", "--good", c[2], "--bad", c[6], extra=["--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["first_bad"]["commit"] == c[6]
    skipped = [s for s in doc["steps"] if s["verdict"] == "skip"]
    assert [s["commit"] for s in skipped] == [c[4]]
    assert "kernel/sched/fair.c:42:7: error" in skipped[0]["reason"]
    assert f"git bisect skip {c[4]}" in doc["git_log"]


def test_endpoints_that_do_not_differ_are_refused(history, tmp_path):
    tree, c = history
    res = bisect(tree, "run", "--good", c[0], "--bad", c[5])
    assert res.exit_code == 1
    err = res.stderr.strip().splitlines()[-1]
    assert "do not differ significantly in cross_node_migrations: median 100 at" in err
    assert "bad/good 1.01" in err and "5 runs each" in err
    untouched(tree, c[8])


@pytest.mark.parametrize("case, message", [
    ("not-ancestor", "is not an ancestor of"),
    ("unknown-metric", "unknown metric"),
    ("dirty", "uncommitted changes"),
    ("foreign-bisect", "a bisect that vnuma-sched did not start is in progress"),
    ("no-such-commit", "no such commit"),
    ("same", "are the same commit"),
    ("both-thresholds", "exclude each other"),
])
def test_bad_input_is_one_line_and_changes_nothing(history, tmp_path, case, message):
    tree, c = history
    good, bad, extra = c[0], c[8], []
    if case == "not-ancestor":
        good, bad = c[8], c[0]
    elif case == "unknown-metric":
        extra = ["--metric", "cross_node"]
    elif case == "dirty":
        (tree / "README").write_text("local edit\n")
    elif case == "foreign-bisect":
        git(tree, "bisect", "start", c[8], c[0])
    elif case == "no-such-commit":
        good = "v9.9"
    elif case == "same":
        good = bad
    elif case == "both-thresholds":
        extra = ["--threshold", "120", "--auto-threshold"]
    before = git(tree, "rev-parse", "HEAD")
    bisect_log = git(tree, "bisect", "log") if case == "foreign-bisect" else None
    res = bisect(tree, "run", "--good", good, "--bad", bad, extra=extra)
    assert res.exit_code == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert measured(tmp_path) == []
    assert git(tree, "rev-parse", "HEAD") == before
    if case == "foreign-bisect":
        assert git(tree, "bisect", "log") == bisect_log
    elif case == "dirty":
        assert (tree / "README").read_text() == "local edit\n"
    else:
        untouched(tree, c[8])


def test_replay_goes_on_from_a_log_without_measuring_its_steps(history, tmp_path):
    tree, c = history
    first = json.loads(bisect(tree, "run", "--good", c[0], "--bad", c[8],
                              extra=["--json"]).stdout)
    log = Path(first["log_file"]).read_text().splitlines()
    # keep the header, the start and the first step's verdict: replay must go on
    step_lines = [i for i, ln in enumerate(log) if ln.startswith("git bisect ")]
    cut = tmp_path / "cut.log"
    cut.write_text("\n".join(log[:step_lines[1] + 1]) + "\n")
    (tmp_path / "measured").unlink()
    res = bisect(tree, "replay", str(cut), extra=["--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["first_bad"]["commit"] == c[6]
    replayed = log[step_lines[1]].split()[-1]
    assert replayed not in measured(tmp_path)
    untouched(tree, c[8])


def test_replay_refuses_a_log_it_did_not_write(history, tmp_path):
    tree, c = history
    git(tree, "bisect", "start", c[8], c[0])
    plain = tmp_path / "plain.log"
    plain.write_text(git(tree, "bisect", "log") + "\n")
    git(tree, "bisect", "reset")
    res = bisect(tree, "replay", str(plain))
    assert res.exit_code == 2
    assert "not a vnuma-sched bisect log" in res.stderr
    untouched(tree, c[8])


def test_an_aborted_step_stops_the_bisect_and_resume_goes_on(history, tmp_path,
                                                            monkeypatch):
    tree, c = history
    monkeypatch.setenv("FAKE_MEASURE_ABORT", ",".join(c[1:8]))   # the lab fails mid-way
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8])
    assert res.exit_code == 1
    assert "--measure-cmd exited 3: lab unreachable (aborting the bisect)" in res.stderr
    assert "no first bad commit: --measure-cmd exited 3: lab unreachable" in res.stdout
    untouched(tree, c[8])
    monkeypatch.delenv("FAKE_MEASURE_ABORT")
    res = bisect(tree, "resume", extra=["--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    untouched(tree, c[8])


def test_resume_without_a_bisect(history):
    tree, c = history
    res = bisect(tree, "resume")
    assert res.exit_code == 2 and "no vnuma-sched bisect to resume" in res.stderr


def test_interrupted_bisect_resumes(history, tmp_path, monkeypatch):
    """Ctrl-C during git bisect run: the tree is reset, the log kept; resume replays it."""

    tree, c = history
    real_stream = drive.stream

    def interrupted(argv, log_path, on_line, cwd=None, env=None):
        def on(line):
            on_line(line)
            if "-> good" in line or "-> bad" in line:
                raise KeyboardInterrupt
        return real_stream(argv, log_path, on, cwd, env)

    monkeypatch.setattr(drive, "stream", interrupted)
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8])
    assert res.exit_code == 130
    assert f"interrupted; go on with: vnuma-sched bisect resume --tree {tree} (log: " \
        in res.stderr
    untouched(tree, c[8])
    monkeypatch.setattr(drive, "stream", real_stream)
    done = measured(tmp_path)
    res = bisect(tree, "resume", extra=["--json"])
    assert res.exit_code == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["first_bad"]["commit"] == c[6]
    assert len(doc["steps"]) >= 2 and doc["steps"][0]["commit"] == c[4]
    assert measured(tmp_path)[:len(done)] == done and len(set(measured(tmp_path))) == len(
        measured(tmp_path))   # what was measured before the interruption is not again
    untouched(tree, c[8])


def test_resume_a_bisect_left_in_progress(history, tmp_path):
    """A killed 'bisect run' leaves git's bisect and the state behind: resume goes on."""
    tree, c = history
    git(tree, "bisect", "start", "--no-checkout", c[8], c[0])
    git_dir = tree / ".git"
    opts = options.Options(metric="cross_node_migrations", threshold=125, bad_above=True,
                           measure_cmd=f"{sys.executable} {DATA / 'fake_measure.py'}",
                           fragments=[str(frag(tmp_path))])
    state.save(git_dir, {"status": "bisecting", "tree": str(tree), "start": "main",
                         "good": c[0], "bad": c[8], "candidates": 8, "estimate": 3,
                         "steps": [], "options": opts.to_dict()})
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8])
    assert res.exit_code == 2 and "bisect resume --tree" in res.stderr
    res = bisect(tree, "resume", extra=["--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    untouched(tree, c[8])


def test_step_under_plain_git_bisect_run(history, tmp_path):
    """The CI use: git bisect run vnuma-sched bisect step ... in a normal bisect."""
    tree, c = history
    git(tree, "bisect", "start", c[8], c[0])
    step = [sys.executable, "-m", "vnuma_sched", "bisect", "step", "--metric",
            "cross_node_migrations", "--threshold", "125", "--runs", "3",
            "--measure-cmd", f"{sys.executable} {DATA / 'fake_measure.py'}",
            "--fragment", str(frag(tmp_path))]
    res = subprocess.run(["git", "bisect", "run", *step], cwd=tree, capture_output=True,
                         text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{c[6]} is the first bad commit" in res.stdout
    git(tree, "bisect", "reset")


@pytest.mark.parametrize("args, code, message", [
    (["--metric", "nope", "--threshold", "1"], 128, "unknown metric"),
    (["--metric", "halts"], 128, "Missing option '--threshold'"),   # not 2 (= bad)
    (["--metric", "halts", "--threshold", "x"], 128, "is not a valid float"),
    (["--metric", "halts", "--threshold", "nan"], 128, "expected a finite number"),
    (["--metric", "cross_node_migrations", "--threshold", "1", "--carry-patches"], 125,
     "series does not apply"),
    (["--metric", "cross_node_migrations", "--threshold", "1",
      "--measure-cmd", "/nonexistent/lab"], 128, "command not found"),
])
def test_step_exit_codes(history, tmp_path, args, code, message):
    tree, c = history
    res = subprocess.run([sys.executable, "-m", "vnuma_sched", "bisect", "step", *args,
                          "--fragment", str(frag(tmp_path))], cwd=tree,
                         capture_output=True, text=True)
    assert res.returncode == code, res.stderr
    assert message in res.stderr + res.stdout


def test_step_too_noisy_is_a_skip_after_max_runs(history, tmp_path):
    tree, c = history
    commit(tree, "noisy", metric="value=125\nnoise=40\n")
    res = subprocess.run([sys.executable, "-m", "vnuma_sched", "bisect", "step", "--metric",
                          "cross_node_migrations", "--threshold", "125", "--runs", "3",
                          "--max-runs", "7", "--json",
                          "--measure-cmd", f"{sys.executable} {DATA / 'fake_measure.py'}",
                          "--fragment", str(frag(tmp_path))], cwd=tree,
                         capture_output=True, text=True)
    assert res.returncode == 125, res.stderr
    entry = json.loads(res.stdout)
    assert entry["n"] == 7 and entry["reason"] == "too noisy after 7 runs"
    assert "more run(s)" in res.stderr


def test_replaying_a_finished_log_reports_the_same_result(history, tmp_path):
    tree, c = history
    first = json.loads(bisect(tree, "run", "--good", c[0], "--bad", c[8],
                              extra=["--json"]).stdout)
    done = measured(tmp_path)
    res = bisect(tree, "replay", first["log_file"])
    assert res.exit_code == 0, res.stderr
    assert f"first bad commit: {c[6]} sched/fair: move wake-ups across nodes" in res.stdout
    assert measured(tmp_path) == done
    assert "the log already names the first bad commit" in res.stderr
    assert res.stdout.count("# first bad commit:") == 1 and "running" not in res.stderr
    untouched(tree, c[8])


def test_stay_leaves_the_tree_on_the_first_bad_commit(history):
    tree, c = history
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8], extra=["--stay"])
    assert res.exit_code == 0, res.stderr
    assert git(tree, "rev-parse", "HEAD") == c[6]
    assert not (tree / ".git" / "BISECT_START").exists()
    git(tree, "checkout", "-q", "main")


def test_guest_measurement_loads_only_the_probe_the_metric_needs():
    def probes(metric):
        return Guest({}, None, metric, None, "tcg", 10, [], None).probes

    assert probes("cross_node_migrations.wake") == ["migrate"]
    assert probes("idle_rejected_preempted") == ["preempt"]
    assert probes("workload_score") == ["steal"]   # no eBPF compile in the guest


def test_bisect_in_a_linked_worktree(history, tmp_path):
    tree, c = history
    wt = tmp_path / "wt"
    git(tree, "worktree", "add", "-q", "-b", "topic", str(wt), c[8])
    res = bisect(wt, "run", "--good", c[0], "--bad", c[8], extra=["--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    assert git(wt, "symbolic-ref", "--short", "HEAD") == "topic"
    untouched(tree, c[8])


def test_only_skipped_commits_left_lists_the_candidates(tmp_path, monkeypatch):
    t = tmp_path / "linux"
    shutil.copytree(FAKE_KERNEL, t)
    git(t, "init", "-q", "-b", "main")
    c = [commit(t, "base", metric="value=100\n"),
         commit(t, "sched: break the build", BROKEN="1\n"),
         commit(t, "sched: fix it, and regress", BROKEN=None, metric="value=150\n")]
    monkeypatch.setenv("VNUMA_SCHED_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FAKE_MEASURE_LOG", str(tmp_path / "measured"))
    res = bisect(t, "run", "--good", c[0], "--bad", c[2], extra=["--json"])
    assert res.exit_code == 1, res.stderr
    doc = json.loads(res.stdout)
    assert "first_bad" not in doc
    assert doc["error"] == "only skipped commits are left"
    assert sorted(doc["candidates"]) == sorted(c[1:])
    untouched(t, c[2])


def test_replay_into_a_tree_without_those_commits(history, tmp_path):
    tree, c = history
    first = json.loads(bisect(tree, "run", "--good", c[0], "--bad", c[8],
                              extra=["--json"]).stdout)
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    commit(other, "unrelated", README="x\n")
    res = bisect(other, "replay", first["log_file"])
    assert res.exit_code == 2
    assert f"good commit {c[0][:12]}: no such commit in {other}" in res.stderr
    assert not (other / ".git" / "BISECT_START").exists()


def test_help_lists_every_metric():
    words = {w.strip(".") for w in re.findall(r"[\w.]+", METRICS_HELP)}
    for name in METRICS:
        kind, _, cause = name.partition(".")
        assert (f"{kind}.CAUSE" in words and cause in words) if cause else name in words, name


# --- hostile or broken input: refused before the tree is touched ---------------------

def finished_log(tree, c, tmp_path):
    """A log of a whole bisect, its header as a dict, and the measured list reset."""
    first = json.loads(bisect(tree, "run", "--good", c[0], "--bad", c[8],
                              extra=["--json"]).stdout)
    text = Path(first["log_file"]).read_text()
    (tmp_path / "measured").unlink()
    head, rest = text.split("\n", 1)
    return json.loads(head[len(state.HEADER):]), rest


def synthetic_log(c, tmp_path):
    """The header and start line a 'bisect run' of c0..c8 writes, without running it."""
    opts = options.Options(metric="cross_node_migrations", threshold=125.0, bad_above=True,
                           measure_cmd=MEASURE, fragments=[str(frag(tmp_path))])
    endpoints = {"good_median": 100, "bad_median": 150, "ratio": 1.5, "ci95": [1.4, 1.6],
                 "p": 0.008, "bad_above": True, "threshold": 125.0,
                 "good": [100, 98, 103, 99, 102], "bad": [150, 148, 153, 149, 152]}
    header = {"options": opts.to_dict(), "good": c[0], "bad": c[8], "endpoints": endpoints}
    return header, f"git bisect start '--no-checkout' '{c[8]}' '{c[0]}'\n"


def write_log(path, header, rest):
    path.write_text(state.HEADER + json.dumps(header) + "\n" + rest)
    return path


@pytest.mark.parametrize("field, value, needle", [
    ("threshold", "x", "--threshold 'x': expected a finite number"),
    ("threshold", None, "no --threshold"),
    ("threshold", float("nan"), "--threshold nan"),
    ("bad_above", "yes", "--bad-when 'yes'"),
    ("runs", "5", "--runs '5': expected an integer in 1..100"),
    ("jobs", 10 ** 6, "--jobs 1000000"),
    ("append", "x=1", "--append 'x=1': expected a list of strings"),
    ("measure_cmd", "lab 'unbalanced", "--measure-cmd"),
    ("accel", "whpx", "--accel 'whpx'"),
    ("fragments", ["relative.config"], "expected an absolute path"),
])
def test_replay_checks_the_whole_header_first(history, tmp_path, field, value, needle):
    tree, c = history
    header, rest = synthetic_log(c, tmp_path)
    header["options"][field] = value
    log = write_log(tmp_path / "edited.log", header, rest)
    res = bisect(tree, "replay", str(log), extra=["--trust-log"], measure=False)
    err = one_line(res, 3, f"{log}: malformed header line: ", needle)
    assert err.count(str(log)) == 1
    assert measured(tmp_path) == []
    untouched(tree, c[8])


@pytest.mark.parametrize("change, needle", [
    (lambda h: h.update(good="--output=/tmp/x"), "good: expected a full commit id"),
    (lambda h: h.update(bad=None), "bad: expected a full commit id"),
    (lambda h: h.update(endpoints={"good": "x"}), "endpoints: good is not a list"),
    (lambda h: h["endpoints"].update(good_median="?"), "good_median is not a number"),
    (lambda h: h.update(options=[1]), "options: expected an object"),
    (lambda h: h["options"].update(shell="rm -rf /"), "unexpected bisect options: ['shell']"),
])
def test_replay_checks_commits_and_endpoints(history, tmp_path, change, needle):
    tree, c = history
    header, rest = synthetic_log(c, tmp_path)
    change(header)
    log = write_log(tmp_path / "edited.log", header, rest)
    one_line(bisect(tree, "replay", str(log), extra=["--trust-log"]), 3, needle)
    untouched(tree, c[8])


def test_replay_of_a_log_that_would_check_out_the_tree(history, tmp_path):
    tree, c = history
    header, rest = synthetic_log(c, tmp_path)
    log = write_log(tmp_path / "edited.log", header, rest.replace("'--no-checkout' ", ""))
    one_line(bisect(tree, "replay", str(log)), 3, "lacks --no-checkout")
    untouched(tree, c[8])


def test_a_binary_log_is_bad_data_named_once(history, tmp_path):
    tree, c = history
    log = tmp_path / "binary.log"
    log.write_bytes(state.HEADER.encode() + b"\xff\xfe\x00garbage\n")
    err = one_line(bisect(tree, "replay", str(log)), 3, f"{log}: not a text file")
    assert err.count(str(log)) == 1
    untouched(tree, c[8])


def test_a_failure_after_git_replay_started_resets_the_bisect(history, tmp_path,
                                                            monkeypatch):
    tree, c = history
    header, rest = synthetic_log(c, tmp_path)
    log = write_log(tmp_path / "again.log", header, rest)

    def killed(git_dir, doc):
        assert (tree / ".git" / "BISECT_START").exists()   # git's replay did start
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "save", killed)
    res = bisect(tree, "replay", str(log))
    assert res.exit_code == 130, res.output
    untouched(tree, c[8])


def test_resume_with_a_malformed_state_changes_nothing(history, tmp_path):
    """A bisect left in progress whose state has threshold "x": one line, exit 3, and
    the bisect is left as it was for the user."""
    tree, c = history
    git(tree, "bisect", "start", "--no-checkout", c[8], c[0])
    before = git(tree, "bisect", "log")
    opts = options.Options(metric="cross_node_migrations", threshold=125, bad_above=True,
                           measure_cmd=MEASURE, fragments=[str(frag(tmp_path))]).to_dict()
    opts["threshold"] = "x"
    state.save(tree / ".git", {"status": "bisecting", "tree": str(tree), "start": "main",
                               "good": c[0], "bad": c[8], "candidates": 8, "estimate": 3,
                               "steps": [], "options": opts})
    one_line(bisect(tree, "resume"), 3, str(state.path(tree / ".git")),
                   "--threshold 'x'")
    assert git(tree, "bisect", "log") == before and measured(tmp_path) == []
    git(tree, "bisect", "reset")


def test_resume_replays_its_saved_log_with_the_state_commands(history, tmp_path):
    """Resume after an interruption replays the tree's own saved log: the command comes
    from the tree's state, not from the log alone, and a broken state is refused."""
    tree, c = history
    header, rest = finished_log(tree, c, tmp_path)
    doc = state.load(tree / ".git")
    assert doc["status"] == "done" and doc["log"]
    res = bisect(tree, "resume", extra=["--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    doc = state.load(tree / ".git")
    doc["options"]["runs"] = -1
    state.save(tree / ".git", doc)
    one_line(bisect(tree, "resume"), 3, "malformed bisect state", "--runs -1")
    untouched(tree, c[8])


def test_replay_runs_no_command_from_the_log_alone(history, tmp_path):
    tree, c = history
    header, rest = finished_log(tree, c, tmp_path)
    git_log = rest.split("\n")
    start = next(i for i, ln in enumerate(git_log) if ln.startswith("git bisect start"))
    log = write_log(tmp_path / "shared.log", header, "\n".join(git_log[:start + 2]) + "\n")
    one_line(bisect(tree, "replay", str(log), measure=False), 2,
                   f"would run --measure-cmd {MEASURE!r}", "--trust-log")
    assert measured(tmp_path) == []
    untouched(tree, c[8])
    res = bisect(tree, "replay", str(log), extra=["--trust-log", "--json"], measure=False)
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    untouched(tree, c[8])


def test_replay_measures_with_the_command_line_command(history, tmp_path):
    tree, c = history
    header, rest = finished_log(tree, c, tmp_path)
    git_log = rest.split("\n")
    start = next(i for i, ln in enumerate(git_log) if ln.startswith("git bisect start"))
    log = write_log(tmp_path / "shared.log", header, "\n".join(git_log[:start + 2]) + "\n")
    wrap = tmp_path / "wrap.py"
    wrap.write_text(f"import runpy\nopen({str(tmp_path / 'wrapped')!r}, 'a').write('x')\n"
                    f"runpy.run_path({str(DATA / 'fake_measure.py')!r}, run_name='__main__')\n")
    res = bisect(tree, "replay", str(log), measure=False,
                 extra=["--measure-cmd", f"{sys.executable} {wrap}", "--json"])
    assert res.exit_code == 0, res.stderr
    assert json.loads(res.stdout)["first_bad"]["commit"] == c[6]
    assert (tmp_path / "wrapped").exists()
    untouched(tree, c[8])


def test_a_cmd_workload_in_a_header_needs_confirmation():
    opts = options.Options(metric="halts", threshold=1, bad_above=True, workload="cmd:rm -rf ~")
    with pytest.raises(drive.BadInput, match="would run --workload 'cmd:rm -rf ~'"):
        drive.trusted(opts, "L")
    assert drive.trusted(opts, "L", {"workload": "perf-pipe"}).workload == "perf-pipe"
    assert drive.trusted(opts, "L", trust_log=True).workload == "cmd:rm -rf ~"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_threshold_that_is_not_finite_is_refused_up_front(history, tmp_path, value):
    tree, c = history
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8], extra=["--threshold", value])
    one_line(res, 2, "--threshold", "expected a finite number")
    assert measured(tmp_path) == []
    untouched(tree, c[8])


def test_a_log_into_a_missing_folder_is_refused_and_not_created(history, tmp_path):
    tree, c = history
    log = tmp_path / "missing" / "dir" / "x.log"
    res = bisect(tree, "run", "--good", c[0], "--bad", c[8], extra=["--log", str(log)])
    one_line(res, 2, f"--log {log}: its folder does not exist")
    assert not (tmp_path / "missing").exists() and measured(tmp_path) == []
    untouched(tree, c[8])


@pytest.mark.parametrize("which", ["--good", "--bad"])
def test_commits_that_look_like_options_are_refused(history, tmp_path, which):
    tree, c = history
    argv = {"--good": c[0], "--bad": c[8], which: "--output=/tmp/vnuma-x"}
    res = bisect(tree, "run", "--good", argv["--good"], "--bad", argv["--bad"])
    one_line(res, 2, f"{which} '--output=/tmp/vnuma-x'", "does not start with '-'")
    assert measured(tmp_path) == []
    untouched(tree, c[8])


def test_a_tree_that_looks_like_an_option_is_refused(history, tmp_path, monkeypatch):
    tree, c = history
    monkeypatch.chdir(tmp_path)
    (tmp_path / "-t").mkdir()
    res = CliRunner().invoke(main, ["bisect", "resume", "--tree", "-t"])
    one_line(res, 2, "--tree '-t'")


def test_a_bisect_may_boot_the_host_layout():
    """--topology host (a placed, Full-vNUMA guest) needs the host's topology: the
    CLI hands it over, and without it the check says so before the tree is touched."""
    opts = options.Options(metric="cross_node_migrations", topology="host")
    drive.check_backend(opts, Topology((Node(0, (0, 1), 1 << 20, (10,)),)))
    with pytest.raises(BadInput, match="host topology is not available"):
        drive.check_backend(opts)


def test_guest_measurement_spreads_its_runs_over_boots(monkeypatch, tmp_path):
    """A commit is measured in --boots boots, not one: each run record says its boot,
    and a later measurement of the same image (undecided: more runs) adds new boots."""
    boots = []

    def guest_runs(image, topo, plan, plan_path, runner, accel, timeout, append, attempt=1):
        boots.append(len(plan["order"]))
        return [{"type": "guest"}] + [{"type": "run", "metrics": {"halts": 10 * len(boots)}}
                                      for _ in plan["order"]]

    monkeypatch.setattr(abmod, "guest_runs", guest_runs)
    monkeypatch.setattr(abmod, "stage", lambda wl, io: wl)
    monkeypatch.setattr(vmmod, "choose_accel", lambda *a: ("tcg", None))
    assert measure.per_boot(5, 2) == [3, 2] and measure.per_boot(1, 2) == [1]
    topo = vmmod.parse_topology("2x2", 2048)
    g = Guest({}, topo, "halts", None, "tcg", 10, [], None, boots=2)
    results = measure.Results(tmp_path, g)
    said = []
    vals, _ = measure.measure(g, results, "img", "sha", "c1", 5, "halts", said.append)
    assert boots == [3, 2] and sorted(vals) == [10, 10, 10, 20, 20]
    assert said == ["measuring: 5 run(s) of the workload over 2 boots"]
    vals, _ = measure.measure(g, results, "img", "sha", "c1", 8, "halts", said.append)
    assert boots == [3, 2, 2, 1] and len(vals) == 8
    recs = results.load("sha")["records"]
    assert [r["boot"] for r in recs] == [0, 0, 0, 1, 1, 2, 2, 3]
    # a measurement taken with another --boots is another measurement: not reused
    assert measure.Results(tmp_path, Guest({}, topo, "halts", None, "tcg", 10, [], None,
                                           boots=1)).load("sha")["records"] == []


def test_a_bisect_boot_that_panics_is_booted_once_more(tmp_path, monkeypatch):
    """A guest panic is booted again once (said in progress); a second one skips the
    commit, as any failed boot does."""
    attempts, panics = [], [1]

    def guest_runs(image, topo, plan, plan_path, runner, accel, timeout, append, attempt=1):
        attempts.append(attempt)
        if panics:
            panics.pop()
            raise abmod.GuestFailed("guest panic (exit 255): Oops: int3 (console: c.log)",
                                    "panic", "c.log")
        return [{"type": "guest"}] + [{"type": "run", "metrics": {"halts": 3}}
                                      for _ in plan["order"]]

    monkeypatch.setattr(abmod, "guest_runs", guest_runs)
    monkeypatch.setattr(abmod, "stage", lambda wl, io: wl)
    monkeypatch.setattr(vmmod, "choose_accel", lambda *a: ("tcg", None))
    said = []
    g = Guest({}, vmmod.parse_topology("2x2", 2048), "halts", None, "tcg", 10, [], None,
              progress=said.append)
    assert [r["metrics"]["halts"] for r in g.records("img", "c1", 2, "halts")] == [3, 3]
    assert attempts == [1, 2] and len(said) == 1 and "booting it again (once)" in said[0]
    panics[:] = [1, 1]
    with pytest.raises(SkipCommit, match="guest panic"):
        g.records("img", "c1", 2, "halts")


def test_measure_command_is_told_the_boots(tmp_path):
    seen = {}

    class Runner:
        def run(self, argv, cwd=None, env=None, check=False, timeout=None):
            seen.update(env)
            return types.SimpleNamespace(returncode=0, timed_out=False, stderr="",
                                         stdout='{"score": 1}\n' * 3)

    cmd = measure.Command("lab-measure", Runner(), 10, boots=2)
    assert len(cmd.records("img", "c1", 3, "workload_score")) == 3
    assert seen["VNUMA_SCHED_BOOTS"] == "2" and seen["VNUMA_SCHED_RUNS"] == "3"
