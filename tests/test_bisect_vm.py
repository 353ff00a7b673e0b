"""vm tier: a real bisect over real 6.12 commits, built and booted as 2x2 guests.

The history is Debian's 6.12 base with the project's series applied one patch
per commit, then its debug series (the old-host emulation), then a test commit
that switches the emulation on once the guest has booted, then a test commit
that only touches documentation. Bisecting idle_rejected_preempted of the
omp-barrier workload (idle-halt hint off on the command line, so that "auto"
does not correct the emulated host) between the debug patch and the top must
name the emulation commit.

The effect is decisive by construction: without the emulation a TCG guest
never reports an idle vCPU as preempted (0 per run), with it every idle
wake-up placement can be refused (thousands per run). A bisect on
cross_node_migrations of the (since dropped) newidle damping commit was too
small an effect against the run-to-run and boot-to-boot spread to carry a
test that must pass on every machine (README)."""

import json
import os
import shutil
import subprocess

import pytest
from helpers import CACHE, REPO, VNUMA

from vnuma_sched.kernel import patches as P

pytestmark = pytest.mark.vm

EMULATION_ON = "x86/debug: Emulate the old host once booted"
DOCS_ONLY = "Documentation: Note the bisect test"
FIXED = {"GIT_AUTHOR_NAME": "vnuma-sched test", "GIT_AUTHOR_EMAIL": "test@vnuma-sched",
         "GIT_COMMITTER_NAME": "vnuma-sched test", "GIT_COMMITTER_EMAIL": "test@vnuma-sched",
         "GIT_AUTHOR_DATE": "@1767225600 +0000", "GIT_COMMITTER_DATE": "@1767225600 +0000"}
FRAGMENTS = [REPO / "kconfig" / "vnuma-guest.config", REPO / "kconfig" / "series-test.config"]
HINT_OFF = "kvm_guest.idle_halt_hint=off"

EMULATION_DEFAULT = """
static int __init kvm_debug_emulate_once_booted(void)
{
	mutex_lock(&kvm_idle_hint_lock);
	emulate_halt_preempted = true;
	kvm_idle_hint_update();
	mutex_unlock(&kvm_idle_hint_lock);
	return 0;
}
late_initcall(kvm_debug_emulate_once_booted);
"""


def git(tree, *args):
    env = {**os.environ, **FIXED}
    return subprocess.run(["git", *args], cwd=tree, check=True, capture_output=True,
                          text=True, env=env).stdout.strip()


def emulation_on_by_default(tree):
    kvm = tree / "arch" / "x86" / "kernel" / "kvm.c"
    text = kvm.read_text()
    anchor = "void __init kvm_debug_halt_preempted_init(void)"
    assert text.count(anchor) == 1, anchor
    kvm.write_text(text.replace(anchor, EMULATION_DEFAULT.lstrip() + "\n" + anchor))
    git(tree, "commit", "-q", "-a", "-m", EMULATION_ON, "-m",
        "vnuma_debug.emulate_halt_preempted on after boot, without the parameter (test "
        "commit; a late initcall, so that early boot and CPU bring-up run as before).")


def docs_only(tree):
    doc = tree / "Documentation" / "scheduler" / "sched-debug.rst"
    doc.write_text(doc.read_text() + "\n.. The vnuma_sched bisect test changes only this.\n")
    git(tree, "commit", "-q", "-a", "-m", DOCS_ONLY, "-m", "Test commit: no code change.")


def order(series):
    """The series, its debug patch, the two test commits: the subjects newest first."""
    return [DOCS_ONLY, EMULATION_ON, *[p.subject for p in series.patches][::-1]]


@pytest.fixture(scope="module")
def history(tree_612):
    """(repo, {subject: sha}); deterministic hashes, rebuilt only when missing."""
    repo = CACHE / "bisect-test" / "linux-6.12"
    series = P.load_series("6.12", debug=True)
    if not (repo / ".git").is_dir():
        repo.parent.mkdir(parents=True, exist_ok=True)
        git(repo.parent, "clone", "-q", "--shared", str(tree_612), str(repo))
    want = order(series)
    subjects = git(repo, "log", "--format=%s", f"-{len(want)}", "HEAD").splitlines()
    if subjects != want or git(repo, "status", "--porcelain", "--untracked-files=no"):
        git(repo, "checkout", "-q", "-f", "-B", "bisect-test", "vnuma-base")
        for patch in series.patches:
            git(repo, "am", "-q", "--committer-date-is-author-date", str(patch.path))
        emulation_on_by_default(repo)
        docs_only(repo)
    shas = dict(line.split(" ", 1)[::-1] for line in
                git(repo, "log", "--format=%H %s", f"-{len(want)}", "HEAD").splitlines())
    return repo, shas


def test_bisect_names_the_commit_that_turned_the_emulation_on(history, tmp_path):
    repo, shas = history
    series = P.load_series("6.12", debug=True)
    good = shas[series.patches[-1].subject]         # the debug patch: emulation built in, off
    bad = git(repo, "rev-parse", "HEAD")             # the docs-only commit on top of it
    # builds stay cached; the measurements must be made by this run, not reused
    shutil.rmtree(CACHE / "bisect" / "results", ignore_errors=True)
    res = subprocess.run(
        [VNUMA, "bisect", "run", "--tree", str(repo), "--good", good, "--bad", bad,
         "--metric", "idle_rejected_preempted", "--workload", "omp-barrier",
         "--threads", "4", "--iterations", "3000", "--runs", "5", "--max-runs", "10",
         "--boots", "2",
         *[a for f in FRAGMENTS for a in ("--fragment", str(f))],
         "--topology", "2x2", "--append", HINT_OFF, "--log", str(tmp_path / "bisect.log"),
         "--json"],
        capture_output=True, text=True, timeout=3600)
    print(res.stderr[-6000:])
    assert res.returncode == 0, res.stderr[-3000:]
    doc = json.loads(res.stdout)
    fb = doc["first_bad"]
    assert fb["subject"] == EMULATION_ON
    assert fb["commit"] == shas[EMULATION_ON]
    assert fb["parent"] == good
    ep = doc["endpoints"]
    assert ep["good_median"] == 0 and ep["bad_median"] > 100 and doc["bad_when"] == "above"
    assert f"# first bad commit: [{fb['commit']}]" in doc["git_log"]
    # the one step is the test commit; the bad end only adds documentation, so the
    # step's kernel is the bad end's image and its runs are reused, not measured again
    tested = {s["commit"]: s for s in doc["steps"]}
    assert list(tested) == [fb["commit"]]
    assert tested[fb["commit"]]["reused_from"] == bad
    # each end was measured in two boots (3 runs and 2), not in one
    measured = [json.loads(f.read_text())["records"]
                for f in (CACHE / "bisect" / "results").glob("*/*.json")]
    assert len(measured) == 2
    for recs in measured:
        assert [r["boot"] for r in recs[:5]] == [0, 0, 0, 1, 1]
    assert git(repo, "rev-parse", "HEAD") == bad
    assert git(repo, "symbolic-ref", "--short", "HEAD") == "bisect-test"
    assert not (repo / ".git" / "BISECT_START").exists()
    # the text report of the same bisect, from its log
    text = subprocess.run([VNUMA, "bisect", "replay", str(tmp_path / "bisect.log"),
                           "--tree", str(repo)], capture_output=True, text=True,
                          timeout=3600)
    print(text.stdout)
    assert text.returncode == 0, text.stderr[-2000:]
    assert f"first bad commit: {fb['commit']} {EMULATION_ON}" in text.stdout
