"""Series model, status check and apply against small synthetic git repositories."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import GIT_ENV, git, write

from vnuma_sched.cli import kernel as kernel_cli
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, Interrupted
from vnuma_sched.kernel import patches as P
from vnuma_sched.kernel import pipeline
from vnuma_sched.runner import Runner
from vnuma_sched.system import facts
from vnuma_sched.tunables.knobs import REGISTRY


@pytest.fixture
def repo_and_series(tmp_path):
    """A repo at its base commit, and a 3-patch series made from it."""
    return make_repo_and_series(tmp_path)


def make_repo_and_series(tmp_path):
    """A repo at its base commit (tagged vnuma-base), and a 3-patch 6.12 series
    under tmp_path/patches made from it, laid out as the shipped ones: a cover letter
    beside the series, and a one-patch debug series in debug/."""
    repo = tmp_path / "linux"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, "fair.c", "".join(f"line {i}\n" for i in range(1, 41)))
    write(repo, "kvm.c", "int a;\nint b;\nint c;\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    edits = [("kvm.c", "int a;\nint b2;\nint c;\n", "x86/kvm: one"),
             ("fair.c", "".join(f"line {i}\n" if i != 10 else "line ten\n"
                                for i in range(1, 41)), "sched/fair: two"),
             ("fair.c", "".join(f"line {i}\n" if i not in (10, 30) else
                                ("line ten\n" if i == 10 else "line thirty\n")
                                for i in range(1, 41)), "sched/fair: three")]
    for name, text, subject in edits:
        write(repo, name, text)
        git(repo, "commit", "-q", "-am", subject)
    pdir = tmp_path / "patches" / "6.12"
    pdir.mkdir(parents=True)
    git(repo, "format-patch", "-q", "--cover-letter", "-o", str(pdir), base)
    names = sorted(p.name for p in pdir.glob("*.patch") if p.name != P.COVER_LETTER)
    (pdir / "series").write_text(f"# base-commit: {base}\n" + "".join(
        f"{n}  # problem=2 gates=kernel.x\n" for n in names))
    write(repo, "kvm.c", "int a;\nint b2;\nint c;\nint debug;\n")
    git(repo, "commit", "-q", "-am", "x86/debug: four")
    git(repo, "format-patch", "-q", "-o", str(pdir / "debug"), "HEAD~1")
    (pdir / "debug" / "series").write_text(
        "0001-x86-debug-four.patch  # problem=1-debug gates=vnuma_debug.x\n")
    git(repo, "reset", "-q", "--hard", base)
    git(repo, "tag", "vnuma-base")
    return repo, P.load_series("6.12", tmp_path / "patches")


def states(statuses):
    return [s.state for s in statuses]


MAIN_SUBJECTS = ["x86/kvm: one", "sched/fair: two", "sched/fair: three"]


def test_series_model(repo_and_series, tmp_path):
    _, series = repo_and_series
    assert [p.subject for p in series.patches] == MAIN_SUBJECTS
    assert series.patches[0].gates == ("kernel.x",) and len(series.base_commit) == 40
    assert not series.debug and not any(p.debug for p in series.patches)
    assert series.name == "6.12" and P.series_branch(series) == "vnuma-series-6.12"
    assert series.cover == tmp_path / "patches" / "6.12" / P.COVER_LETTER
    assert P.subject(series.cover, prefix=True).startswith("[PATCH 0/3] ")


def test_debug_series_follows_the_main_series(repo_and_series, tmp_path):
    series = P.load_series("6.12", tmp_path / "patches", debug=True)
    assert [p.subject for p in series.patches] == [*MAIN_SUBJECTS, "x86/debug: four"]
    assert [p.number for p in series.patches] == [1, 2, 3, 4]
    assert [p.debug for p in series.patches] == [False, False, False, True]
    debug = series.patches[3]
    assert debug.filename == "debug/0001-x86-debug-four.patch"
    assert debug.path == tmp_path / "patches" / "6.12" / "debug" / "0001-x86-debug-four.patch"
    assert (debug.problem, debug.gates) == ("1-debug", ("vnuma_debug.x",))
    assert debug.to_dict()["debug"] is True and series.patches[0].to_dict()["debug"] is False
    assert series.debug and series.name == "6.12-debug"
    assert P.series_branch(series) == "vnuma-series-6.12-debug"
    assert series.cover == repo_and_series[1].cover     # the cover letter is the series'
    assert P.has_debug("6.12", tmp_path / "patches")


def test_the_cover_letter_and_a_missing_debug_series(repo_and_series, tmp_path):
    pdir = tmp_path / "patches" / "6.12"
    (pdir / P.COVER_LETTER).unlink()
    shutil.rmtree(pdir / "debug")
    assert P.load_series("6.12", tmp_path / "patches").cover is None
    assert not P.has_debug("6.12", tmp_path / "patches")
    with pytest.raises(BadInput, match="no debug series for 6.12"):
        P.load_series("6.12", tmp_path / "patches", debug=True)
    [only] = P.all_series(tmp_path / "patches", debug=True)   # listed without one
    assert len(only) == 3 and not only.debug


def test_a_series_that_lists_its_cover_letter_is_refused(repo_and_series, tmp_path):
    series_file = tmp_path / "patches" / "6.12" / "series"
    series_file.write_text(f"{P.COVER_LETTER}\n" + series_file.read_text())
    with pytest.raises(BadInput, match="series:1: 0000-cover-letter.patch: the cover letter"):
        P.load_series("6.12", tmp_path / "patches")


def test_check_and_apply_the_debug_series_on_top(repo_and_series, tmp_path):
    repo, _ = repo_and_series
    series = P.load_series("6.12", tmp_path / "patches", debug=True)
    assert states(P.check(repo, series, Runner())) == [P.CLEAN] * 4
    base = git(repo, "rev-parse", "HEAD")
    P.apply(repo, series, "vnuma-test", Runner(), lambda m: None)
    assert git(repo, "log", "--format=%s", f"{base}..HEAD").splitlines() == [
        "x86/debug: four", *MAIN_SUBJECTS[::-1]]
    assert states(P.check(repo, series, Runner())) == [P.APPLIED] * 4


def test_check_clean_never_touches_tree(repo_and_series):
    repo, series = repo_and_series
    head = git(repo, "rev-parse", "HEAD")
    assert states(P.check(repo, series, Runner())) == [P.CLEAN] * 3
    assert git(repo, "rev-parse", "HEAD") == head and git(repo, "status", "--porcelain") == ""


def test_check_already_applied(repo_and_series):
    repo, series = repo_and_series
    git(repo, "am", "-q", str(series.patches[0].path))
    assert states(P.check(repo, series, Runner())) == [P.APPLIED, P.CLEAN, P.CLEAN]


def test_check_conflict_names_file_and_hunk(repo_and_series):
    repo, series = repo_and_series
    write(repo, "fair.c", (repo / "fair.c").read_text().replace("line 30\n", "line XXX\n"))
    git(repo, "commit", "-q", "-am", "diverge")
    st = P.check(repo, series, Runner())
    assert states(st) == [P.CLEAN, P.CLEAN, P.CONFLICT]
    assert st[2].detail.startswith("fair.c: hunk at line")


def test_apply_creates_branch_with_all_patches(repo_and_series):
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    msgs = []
    P.apply(repo, series, "vnuma", Runner(), msgs.append)
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "vnuma"
    log = git(repo, "log", "--format=%s", f"{base}..HEAD").splitlines()
    assert log == ["sched/fair: three", "sched/fair: two", "x86/kvm: one"]
    assert len(msgs) == 3


def test_apply_skips_already_applied(repo_and_series):
    repo, series = repo_and_series
    git(repo, "am", "-q", str(series.patches[0].path))
    msgs = []
    P.apply(repo, series, "vnuma", Runner(), msgs.append)
    assert "already applied, skipped" in msgs[0]
    assert git(repo, "log", "--format=%s", "-1") == "sched/fair: three"


def snapshot(repo):
    return (git(repo, "rev-parse", "HEAD"), git(repo, "rev-parse", "--abbrev-ref", "HEAD"),
            git(repo, "status", "--porcelain"), git(repo, "branch", "--list"))


def test_conflict_leaves_repository_exactly_as_before(repo_and_series):
    repo, series = repo_and_series
    write(repo, "fair.c", (repo / "fair.c").read_text().replace("line 30\n", "line XXX\n"))
    git(repo, "commit", "-q", "-am", "diverge")
    before = snapshot(repo)
    with pytest.raises(P.ApplyFailed) as err:
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    assert "0003-sched-fair-three.patch" in str(err.value) and "fair.c" in str(err.value)
    assert snapshot(repo) == before


def test_git_am_failure_restores_head_and_branch(repo_and_series, monkeypatch):
    """Even when git am itself fails mid-series, the repository is restored."""
    repo, series = repo_and_series
    before = snapshot(repo)
    broken = series.patches[1].path
    text = broken.read_text()
    monkeypatch.setattr(P, "check", lambda *a: [P.Status(p, P.CLEAN) for p in series.patches])
    broken.write_text(text.replace("+line ten", "+line ten\n+garbage-without-context", 1)
                      .replace("@@ -7,7 +7,7 @@", "@@ -7,7 +7,9 @@"))
    with pytest.raises(P.ApplyFailed, match="repository restored"):
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    assert snapshot(repo) == before
    assert not (Path(repo) / ".git" / "rebase-apply").exists()


def test_apply_refuses_dirty_tree(repo_and_series):
    repo, series = repo_and_series
    write(repo, "kvm.c", "dirty\n")
    with pytest.raises(BadInput, match="uncommitted changes"):
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    assert "vnuma" not in git(repo, "branch", "--list")


def test_apply_refuses_operation_in_progress(repo_and_series):
    repo, series = repo_and_series
    (repo / ".git" / "BISECT_LOG").write_text("")
    with pytest.raises(BadInput, match="a bisect is in progress"):
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)


def test_apply_refuses_existing_branch(repo_and_series):
    repo, series = repo_and_series
    git(repo, "branch", "vnuma")
    with pytest.raises(BadInput, match="already exists"):
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)


def test_unknown_version():
    with pytest.raises(BadInput, match="supported are 6.1, 6.12"):
        P.load_series("5.15")


SHIPPED = [  # (file, problem, gates), main series then debug series
    ("x86-kvm-Report-vCPUs-halted-in-idle-as-not-preempted.patch", "1",
     ("kvm_guest.idle_halt_hint",)),
    ("sched-fair-Keep-wake_affine-on-the-wakee-s-node.patch", "2",
     ("feature.NUMA_WAKE_PREV",)),
    ("x86-kvm-Emulate-a-host-that-reports-halted-vCPUs-as-.patch", "1-debug",
     ("vnuma_debug.emulate_halt_preempted",)),
]
# 6.1 needs the halt paravirt operation that 6.12 already has (a backport) first.
PREREQUISITES = {"6.12": [], "6.1": [
    ("x86-paravirt-Move-halt-paravirt-calls-under-CONFIG_P.patch", "1", ())]}


def numbered(entries):
    out = []
    for i, (name, problem, gates) in enumerate(entries, 1):
        debug = problem.endswith("-debug")
        n = 1 if debug else i
        out.append((f"debug/{n:04d}-{name}" if debug else f"{n:04d}-{name}", problem, gates))
    return out


@pytest.mark.parametrize("version", ["6.12", "6.1"])
def test_shipped_series_layout(version):
    """The postable patches, a cover letter beside them, one debug patch in debug/;
    their gates are the switches facts and the knob registry know."""
    vdir = P.default_dir() / version
    want = numbered(PREREQUISITES[version] + SHIPPED)
    n = len(want) - 1
    series = P.load_series(version, debug=True)
    assert [(p.filename, p.problem, p.gates) for p in series.patches] == want
    assert [p.debug for p in series.patches] == [False] * n + [True]
    assert len(P.load_series(version)) == n
    assert {p.name for p in vdir.glob("*.patch")} == \
        {f for f, _, _ in want[:n]} | {P.COVER_LETTER}
    assert {f"debug/{p.name}" for p in (vdir / "debug").glob("*.patch")} == {want[n][0]}
    assert series.cover == vdir / P.COVER_LETTER
    assert P.subject(series.cover, prefix=True).startswith(f"[PATCH v3 0/{n}] ")
    assert {g for p in series.patches[:n] for g in p.gates} == set(facts.PATCH_GATES)
    assert all(REGISTRY[g].patch_gate for p in series.patches for g in p.gates)
    assert len(series.base_commit) == 40
    assert any(f"base-commit: {series.base_commit}" in text for text in
               (series.cover.read_text(), series.patches[0].path.read_text()))
    for p in series.patches:
        assert "\nSigned-off-by: " in p.path.read_text(), p.filename


def test_check_whole_series_applied_even_when_later_patches_change_context(repo_and_series):
    repo, series = repo_and_series
    for p in series.patches:
        git(repo, "am", "-q", str(p.path))
    assert states(P.check(repo, series, Runner())) == [P.APPLIED] * 3


def test_check_cli_exit_code_on_conflict(repo_and_series, tmp_path, monkeypatch):
    repo, series = repo_and_series
    (repo / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\n")
    write(repo, "fair.c", (repo / "fair.c").read_text().replace("line 30\n", "line XXX\n"))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "diverge")
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    res = CliRunner().invoke(main, ["--json", "patches", "check", "--tree", str(repo)])
    assert res.exit_code == 1

    doc = json.loads(res.output)
    assert [p["status"] for p in doc["patches"]] == [P.CLEAN, P.CLEAN, P.CONFLICT]


# --- faults: signals, hostile names, trees git am would refuse ------------------------

def kernel_makefile(repo):
    """Commit a Makefile that makes repo a 6.12 tree for the command line."""
    (repo / "Makefile").write_text("VERSION = 6\nPATCHLEVEL = 12\nSUBLEVEL = 117\n")
    git(repo, "add", "Makefile")
    git(repo, "commit", "-q", "-m", "Makefile")


# Runs the CLI with the scratch series as the shipped one (argv[1]: patches dir).
CLI_WITH_SERIES = """
import sys
from pathlib import Path
from vnuma_sched.cli.main import main
from vnuma_sched.kernel import patches
patches.default_dir = lambda: Path(sys.argv[1])
main(sys.argv[2:], prog_name="vnuma-sched")
"""


def slow_am_hook(repo, tmp_path):
    """An applypatch-msg hook (a git feature) that parks git am in the second patch,
    after the first one is committed on the new branch."""
    count, ready = tmp_path / "am-count", tmp_path / "am-ready"
    hook = repo / ".git" / "hooks" / "applypatch-msg"
    hook.write_text(f"""#!/bin/sh
n=$(cat {shlex.quote(str(count))} 2>/dev/null || echo 0)
n=$((n + 1))
echo $n > {shlex.quote(str(count))}
if [ $n -ge 2 ]; then touch {shlex.quote(str(ready))}; exec sleep 120; fi
""")
    hook.chmod(0o755)
    return ready


def wait_for(path, proc, seconds=60):
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_signal_during_apply_restores_everything(repo_and_series, tmp_path, how):
    """Ctrl-C (SIGINT to the whole foreground process group) or SIGTERM (to the
    process) while git am works on patch 2: HEAD, branch and tree as before, 130."""
    repo, series = repo_and_series
    kernel_makefile(repo)
    ready = slow_am_hook(repo, tmp_path)
    before = snapshot(repo)
    env = {**os.environ, **GIT_ENV, "PATH": os.environ["PATH"]}
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_SERIES, str(tmp_path / "patches"), "patches", "apply",
         "--tree", str(repo), "--branch", "vnuma"], cwd=tmp_path, env=env,
        start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, proc)
        assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "vnuma"  # really mid-series
        if how == "ctrl-c":
            os.killpg(proc.pid, signal.SIGINT)
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    errors = [ln for ln in err.splitlines() if "error:" in ln]
    assert len(errors) == 1 and "interrupted" in errors[0] and "restored" in errors[0], err
    assert "Traceback" not in err
    assert snapshot(repo) == before
    assert not (repo / ".git" / "rebase-apply").exists()
    assert not (repo / ".git" / "index.lock").exists()


def test_apply_then_restore_leaves_a_clean_tree_for_the_next_apply(repo_and_series, tmp_path):
    """After an interrupted apply the same command works (nothing half-done left)."""
    repo, series = repo_and_series
    kernel_makefile(repo)
    ready = slow_am_hook(repo, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI_WITH_SERIES, str(tmp_path / "patches"), "patches", "apply",
         "--tree", str(repo), "--branch", "vnuma"], cwd=tmp_path,
        env={**os.environ, **GIT_ENV, "PATH": os.environ["PATH"]}, start_new_session=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(ready, proc)
    os.kill(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    (repo / ".git" / "hooks" / "applypatch-msg").unlink()
    P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    assert git(repo, "log", "--format=%s", "-1") == "sched/fair: three"


@pytest.mark.parametrize("name,needle", [
    ("a..b", "not a valid git branch name"),
    ("bad name", "not a valid git branch name"),
    ("x.lock", "not a valid git branch name"),
    ("-x", "must not start with '-'"),
    ("--orphan=evil", "must not start with '-'"),
])
def test_apply_refuses_bad_branch_names_in_one_line(repo_and_series, tmp_path, monkeypatch,
                                                    name, needle):
    repo, _ = repo_and_series
    kernel_makefile(repo)
    before = snapshot(repo)
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    res = CliRunner().invoke(main, ["patches", "apply", "--tree", str(repo), "--branch", name])
    assert res.exit_code == 2, res.output
    assert needle in res.output and len(res.output.strip().splitlines()) == 1
    assert "internal error" not in res.output
    assert snapshot(repo) == before


def test_check_reports_an_untracked_file_a_patch_would_create(tmp_path, monkeypatch):
    repo, series = new_file_series(tmp_path)
    (repo / "notes.txt").write_text("mine, not committed\n")
    st = P.check(repo, series, Runner())
    assert st[-1].state == P.CONFLICT and st[-1].detail.startswith("notes.txt: ")
    assert (repo / "notes.txt").read_text() == "mine, not committed\n"
    kernel_makefile(repo)
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    res = CliRunner().invoke(main, ["patches", "check", "--tree", str(repo)])
    assert res.exit_code == 1 and "notes.txt" in res.output
    with pytest.raises(P.ApplyFailed, match="notes.txt"):
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    assert "vnuma" not in git(repo, "branch", "--list")


def new_file_series(tmp_path):
    """A repo and a one-patch series whose patch creates notes.txt."""
    repo = tmp_path / "linux"
    repo.mkdir()
    git(repo, "init", "-q")
    write(repo, "a.c", "int a;\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "base")
    base = git(repo, "rev-parse", "HEAD")
    write(repo, "notes.txt", "from the patch\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "docs: add notes")
    pdir = tmp_path / "patches" / "6.12"
    pdir.mkdir(parents=True)
    git(repo, "format-patch", "-q", "-o", str(pdir), base)
    names = sorted(p.name for p in pdir.glob("*.patch"))
    (pdir / "series").write_text(f"# base-commit: {base}\n" + "\n".join(names) + "\n")
    git(repo, "reset", "-q", "--hard", base)
    return repo, P.load_series("6.12", tmp_path / "patches")


def test_list_shows_cover_letter_series_and_debug_series(repo_and_series, tmp_path,
                                                          monkeypatch):
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    res = CliRunner().invoke(main, ["patches", "list", "--version", "6.12"])
    assert res.exit_code == 0, res.output
    text = res.output
    assert "Cover letter: [PATCH 0/3] " in text
    main_at, debug_at = text.index("Series 6.12 (base "), text.index("Debug series 6.12")
    assert main_at < text.index("sched/fair: three") < debug_at < text.index("x86/debug: four")
    doc = json.loads(CliRunner().invoke(main, ["--json", "patches", "list"]).output)
    [s612] = doc["series"]
    assert s612["cover"] == str(tmp_path / "patches" / "6.12" / P.COVER_LETTER)
    assert s612["cover_subject"].startswith("[PATCH 0/3] ")
    assert [(p["file"], p["debug"]) for p in s612["patches"]][2:] == [
        ("0003-sched-fair-three.patch", False), ("debug/0001-x86-debug-four.patch", True)]


def test_check_and_apply_take_the_debug_series_only_when_asked(repo_and_series, tmp_path,
                                                               monkeypatch):
    repo, _ = repo_and_series
    kernel_makefile(repo)
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    doc = json.loads(CliRunner().invoke(
        main, ["--json", "patches", "check", "--tree", str(repo)]).output)
    assert [p["file"] for p in doc["patches"]][-1] == "0003-sched-fair-three.patch"
    assert doc["debug"] is False
    doc = json.loads(CliRunner().invoke(
        main, ["--json", "patches", "check", "--tree", str(repo), "--debug"]).output)
    assert [p["file"] for p in doc["patches"]][-1] == "debug/0001-x86-debug-four.patch"
    assert doc["debug"] is True and {p["status"] for p in doc["patches"]} == {P.CLEAN}
    res = CliRunner().invoke(main, ["patches", "apply", "--tree", str(repo), "--branch", "t",
                                    "--debug"])
    assert res.exit_code == 0 and "and its debug series" in res.output
    assert git(repo, "log", "--format=%s", "-1") == "x86/debug: four"


def test_verify_takes_the_debug_series_by_default(repo_and_series, tmp_path, monkeypatch):
    """The default fragments enable the debug option: verify wants main + debug, and
    says so when the tree carries the main series alone."""
    repo, _ = repo_and_series
    kernel_makefile(repo)
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    P.apply(repo, P.load_series("6.12", tmp_path / "patches"), "main-only", Runner(),
            lambda m: None)
    res = CliRunner().invoke(main, ["patches", "verify", "--tree", str(repo), "--workdir",
                                    str(tmp_path / "v")])
    assert res.exit_code == 2, res.output
    assert "does not end with the 6.12-debug series" in res.output
    assert "is 'Makefile', expected 0001-x86-kvm-one.patch" in res.output
    assert "--debug/--no-debug" in res.output and not (tmp_path / "v").exists()
    help_text = CliRunner().invoke(main, ["patches", "verify", "--help"]).output
    assert "--debug / --no-debug" in help_text and "series-test.config" in help_text


def test_check_on_a_dirty_tree_says_so(repo_and_series, tmp_path, monkeypatch):
    repo, _ = repo_and_series
    kernel_makefile(repo)
    write(repo, "kvm.c", "dirty\n")
    monkeypatch.setattr(P, "default_dir", lambda: tmp_path / "patches")
    res = CliRunner().invoke(main, ["patches", "check", "--tree", str(repo)])
    assert res.exit_code == 1
    assert "tree has uncommitted changes" in res.output and "kvm.c" in res.output
    doc = json.loads(CliRunner().invoke(
        main, ["--json", "patches", "check", "--tree", str(repo)]).output)
    assert doc["dirty"] == ["kvm.c"]


def test_series_file_names_are_plain_file_names(tmp_path):
    pdir = tmp_path / "patches" / "6.12"
    pdir.mkdir(parents=True)
    (tmp_path / "patches" / "evil.patch").write_text("x\n")
    (pdir / "series").write_text("../evil.patch\n")
    with pytest.raises(BadInput, match="not a patch file name"):
        P.load_series("6.12", tmp_path / "patches")


# --- the pipeline's apply step next to the tests' series worktree ---------------------

def carries(tree, base):
    return git(tree, "log", "--format=%s", f"{base}..HEAD").splitlines() == [
        "sched/fair: three", "sched/fair: two", "x86/kvm: one"]


@pytest.mark.parametrize("tests_branch", [
    "vnuma-series-6.12",          # what the tests' worktree held before (an old cache)
    "vnuma-series-test-6.12",     # what it holds now
])
def test_pipeline_apply_step_works_beside_the_tests_worktree(repo_and_series, tmp_path,
                                                             tests_branch):
    """'make test' then 'make demo', repeatedly, in either order, on one cache."""
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    cache = tmp_path / "cache"
    tests_tree = cache / "series-test" / "6.12" / "linux"
    P.series_worktree(repo, series, tests_tree, Runner(), print, branch=tests_branch)
    for _ in range(2):
        work = pipeline.apply_step(repo, series, cache, Runner(), print)
        assert work == cache / "series" / "linux-6.12" and carries(work, base)
        again = P.series_worktree(repo, series, tests_tree, Runner(), print,
                                  branch=tests_branch)
        assert carries(again, base)
    assert git(repo, "status", "--porcelain") == "" and git(repo, "rev-parse", "HEAD") == base


def test_pipeline_apply_step_first_then_the_tests(repo_and_series, tmp_path):
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    cache = tmp_path / "cache"
    work = pipeline.apply_step(repo, series, cache, Runner(), print)
    tests_tree = P.series_worktree(repo, series, cache / "series-test" / "6.12" / "linux",
                                   Runner(), print, branch="vnuma-series-test-6.12")
    assert carries(work, base) and carries(tests_tree, base)
    assert carries(pipeline.apply_step(repo, series, cache, Runner(), print), base)


def test_series_worktree_recreates_a_stale_one(repo_and_series, tmp_path):
    """A worktree left behind without the series (say an interrupted apply) is redone."""
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    dest = tmp_path / "cache" / "series" / "linux-6.12"
    git(repo, "worktree", "add", "-q", "--detach", str(dest), base)
    msgs = []
    assert carries(P.series_worktree(repo, series, dest, Runner(), msgs.append), base)
    assert any("stale" in m for m in msgs)


def test_main_and_debug_worktrees_live_side_by_side(repo_and_series, tmp_path):
    """The pipeline's worktree carries the debug series, on a branch and in a directory
    of its own, next to one with the series alone; each is reused only as itself."""
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    debug = P.load_series("6.12", tmp_path / "patches", debug=True)
    cache = tmp_path / "cache"
    work = pipeline.apply_step(repo, debug, cache, Runner(), print)
    main_tree = P.series_worktree(repo, series, cache / "main", Runner(), print)
    assert work == cache / "series" / "linux-6.12-debug"
    assert git(work, "log", "--format=%s", f"{base}..HEAD").splitlines() == [
        "x86/debug: four", *MAIN_SUBJECTS[::-1]]
    assert carries(main_tree, base)
    branches = git(repo, "branch", "--list", "--format=%(refname:short)").splitlines()
    assert {"vnuma-series-6.12", "vnuma-series-6.12-debug"} <= set(branches)
    msgs = []
    assert pipeline.apply_step(repo, debug, cache, Runner(), msgs.append) == work
    assert any("series already applied" in m for m in msgs)


@pytest.mark.parametrize("first_debug", [True, False])
def test_a_worktree_with_the_other_series_is_not_reused(repo_and_series, tmp_path,
                                                        first_debug):
    """All patches of the main series are applied in a main+debug tree too: reuse must
    ask for exactly the series, or the main-only build would carry the debug patch."""
    repo, series = repo_and_series
    base = git(repo, "rev-parse", "HEAD")
    debug = P.load_series("6.12", tmp_path / "patches", debug=True)
    first, then = (debug, series) if first_debug else (series, debug)
    dest = tmp_path / "cache" / "w"
    P.series_worktree(repo, first, dest, Runner(), print, branch="first")
    msgs = []
    P.series_worktree(repo, then, dest, Runner(), msgs.append, branch="then")
    assert any("stale, recreating" in m for m in msgs)
    subjects = git(dest, "log", "--format=%s", f"{base}..HEAD").splitlines()
    assert subjects[::-1] == [p.subject for p in then.patches]


def test_pipeline_guest_command_prints_the_series_switches(tmp_path):
    """The default guest command of 'pipeline' greps the module parameters and picks the
    series' features (set or NO_) out of the features file."""
    script = kernel_cli.gates_command()[2]
    for gate, path in facts.PATCH_GATES.items():
        if not gate.startswith(facts.FEATURE_GATE):
            assert f"{os.path.dirname(path)}/*" in script
    assert f"{facts.DEBUG_PARAMS_DIR}/*" in script
    words = shlex.split(script)
    assert words[-1] == facts.SCHED_FEATURES and words[-4:-2] == ["-Hwo", "-E"]
    features = tmp_path / "features"
    features.write_text("WA_IDLE NO_NUMA_WAKE_PREV XNUMA_WAKE_PREV NUMA_WAKE_PREVS\n")
    out = subprocess.run(["grep", *words[-4:-1], str(features)], capture_output=True,
                         text=True, check=True).stdout
    assert out.split() == [f"{features}:NO_NUMA_WAKE_PREV"]


def test_series_worktree_refuses_a_held_branch_without_the_series(repo_and_series, tmp_path):
    repo, series = repo_and_series
    other = tmp_path / "other"
    git(repo, "worktree", "add", "-q", "-b", "vnuma-series-6.12", str(other))
    with pytest.raises(BadInput, match="is checked out in .* does not carry"):
        P.series_worktree(repo, series, tmp_path / "cache" / "w", Runner(), print)


def test_interrupt_between_patches_restores_in_process(repo_and_series):
    """The same rollback without a subprocess: Ctrl-C right after patch 1."""
    repo, series = repo_and_series
    before = snapshot(repo)

    def progress(msg):
        if msg.startswith("0001"):
            raise KeyboardInterrupt
    with pytest.raises(Interrupted, match="restored to main") as err:
        P.apply(repo, series, "vnuma", Runner(), progress)
    assert err.value.exit_code == 130
    assert snapshot(repo) == before


def test_a_failed_restore_says_what_to_run(repo_and_series, monkeypatch):
    repo, series = repo_and_series

    def broken_restore(*args):
        raise BadInput("index.lock exists")
    monkeypatch.setattr(P, "_restore", broken_restore)
    monkeypatch.setattr(P, "check", lambda *a: [P.Status(p, P.CLEAN) for p in series.patches])
    series.patches[1].path.write_text("not a patch\n")
    with pytest.raises(P.ApplyFailed) as err:
        P.apply(repo, series, "vnuma", Runner(), lambda m: None)
    msg = str(err.value)
    assert "restoring" in msg and "failed too (index.lock exists)" in msg
    assert "git am --abort" in msg and "git checkout -f main" in msg and "\n" not in msg
