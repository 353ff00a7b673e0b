"""vm tier: a real bisect over real 6.12 commits, built and booted as 2x2 guests.

The history is Debian's 6.12 base with the project's series applied one patch
per commit, plus one commit after patch 5 that switches NUMA idle damping on by
default. Bisecting cross_node_migrations of the omp-barrier workload between
patch 5 (damping off) and patch 7 must name that commit."""

import json
import os
import shutil
import subprocess

import pytest
from helpers import CACHE, VNUMA

from vnuma_sched.kernel import patches as P

pytestmark = pytest.mark.vm

DEFAULT_ON = "sched/fair: Damp NUMA idle balancing by default"
FIXED = {"GIT_AUTHOR_NAME": "vnuma-sched test", "GIT_AUTHOR_EMAIL": "test@vnuma-sched",
         "GIT_COMMITTER_NAME": "vnuma-sched test", "GIT_COMMITTER_EMAIL": "test@vnuma-sched",
         "GIT_AUTHOR_DATE": "@1767225600 +0000", "GIT_COMMITTER_DATE": "@1767225600 +0000"}


def git(tree, *args):
    env = {**os.environ, **FIXED}
    return subprocess.run(["git", *args], cwd=tree, check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def damping_on_by_default(tree):
    fair = tree / "kernel" / "sched" / "fair.c"
    text = fair.read_text()
    for old, new in (
            ("static DEFINE_STATIC_KEY_FALSE(sched_numa_newidle_damp);",
             "static DEFINE_STATIC_KEY_TRUE(sched_numa_newidle_damp);"),
            ("static DEFINE_STATIC_KEY_FALSE(sched_numa_wake_damp);",
             "static DEFINE_STATIC_KEY_TRUE(sched_numa_wake_damp);"),
            ("static unsigned int sysctl_sched_numa_idle_damp;",
             "static unsigned int sysctl_sched_numa_idle_damp = SCHED_NUMA_DAMP_MASK;")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    fair.write_text(text)
    git(tree, "commit", "-q", "-a", "-m", DEFAULT_ON, "-m",
        "Both bits of sched_numa_idle_damp on from boot (test commit).")


@pytest.fixture(scope="module")
def history(tree_612):
    """(repo, {subject: sha}); deterministic hashes, rebuilt only when missing."""
    repo = CACHE / "bisect-test" / "linux-6.12"
    series = P.load_series("6.12")
    if not (repo / ".git").is_dir():
        repo.parent.mkdir(parents=True, exist_ok=True)
        git(repo.parent, "clone", "-q", "--shared", str(tree_612), str(repo))
    subjects = git(repo, "log", "--format=%s", "-9", "HEAD").splitlines()
    want = [p.subject for p in series.patches[5:]][::-1] + [DEFAULT_ON] + [
        p.subject for p in series.patches[:5]][::-1]
    if subjects[:8] != want or git(repo, "status", "--porcelain", "--untracked-files=no"):
        git(repo, "checkout", "-q", "-f", "-B", "bisect-test", "vnuma-base")
        for patch in series.patches[:5]:
            git(repo, "am", "-q", "--committer-date-is-author-date", str(patch.path))
        damping_on_by_default(repo)
        for patch in series.patches[5:]:
            git(repo, "am", "-q", "--committer-date-is-author-date", str(patch.path))
    shas = dict(line.split(" ", 1)[::-1] for line in
                git(repo, "log", "--format=%H %s", "-8", "HEAD").splitlines())
    return repo, shas


def test_bisect_names_the_commit_that_turned_damping_on(history, tmp_path):
    repo, shas = history
    series = P.load_series("6.12")
    good = shas[series.patches[4].subject]          # patch 5: damping there, off
    bad = git(repo, "rev-parse", "HEAD")             # patch 7
    head = bad
    # builds stay cached; the measurements must be made by this run, not reused
    shutil.rmtree(CACHE / "bisect" / "results", ignore_errors=True)
    res = subprocess.run(
        [VNUMA, "bisect", "run", "--tree", str(repo), "--good", good, "--bad", bad,
         "--metric", "cross_node_migrations", "--workload", "omp-barrier",
         "--threads", "8", "--iterations", "30000", "--runs", "5", "--max-runs", "10",
         "--topology", "2x2", "--log", str(tmp_path / "bisect.log"), "--json"],
        capture_output=True, text=True, timeout=3600)
    print(res.stderr[-6000:])
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    fb = doc["first_bad"]
    assert fb["subject"] == DEFAULT_ON
    assert fb["commit"] == shas[DEFAULT_ON]
    assert fb["parent"] == good
    ep = doc["endpoints"]
    assert ep["bad_median"] < ep["good_median"] and doc["bad_when"] == "below"
    assert f"# first bad commit: [{fb['commit']}]" in doc["git_log"]
    # the documentation patch builds the same kernel as the commit before it
    docs = shas[series.patches[5].subject]
    tested = {s["commit"]: s for s in doc["steps"]}
    if docs in tested and fb["commit"] in tested:
        assert tested[fb["commit"]]["reused_from"] == docs or tested[docs]["reused_from"]
    assert git(repo, "rev-parse", "HEAD") == head
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "bisect-test"
    assert not (repo / ".git" / "BISECT_START").exists()
    # the text report of the same bisect, from its log
    text = subprocess.run([VNUMA, "bisect", "replay", str(tmp_path / "bisect.log"),
                           "--tree", str(repo)], capture_output=True, text=True,
                          timeout=3600)
    print(text.stdout)
    assert text.returncode == 0, text.stderr[-2000:]
    assert f"first bad commit: {fb['commit']} {DEFAULT_ON}" in text.stdout
