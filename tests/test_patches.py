"""Series model, status check and apply against small synthetic git repositories."""

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import git, write

from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import patches as P
from vnuma_sched.runner import Runner


@pytest.fixture
def repo_and_series(tmp_path):
    """A repo at its base commit, and a 3-patch series made from it."""
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
    git(repo, "format-patch", "-q", "-o", str(pdir), base)
    names = sorted(p.name for p in pdir.glob("*.patch"))
    (pdir / "series").write_text(f"# base-commit: {base}\n" + "".join(
        f"{n}  # problem=2 gates=kernel.x\n" for n in names))
    git(repo, "reset", "-q", "--hard", base)
    return repo, P.load_series("6.12", tmp_path / "patches")


def states(statuses):
    return [s.state for s in statuses]


def test_series_model(repo_and_series):
    _, series = repo_and_series
    assert [p.subject for p in series.patches] == ["x86/kvm: one", "sched/fair: two",
                                                    "sched/fair: three"]
    assert series.patches[0].gates == ("kernel.x",) and len(series.base_commit) == 40


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


@pytest.mark.parametrize("version", ["6.12", "6.1"])
def test_shipped_series_is_complete(version):
    series = P.load_series(version)
    listed = {p.filename for p in series.patches}
    on_disk = {p.name for p in (P.default_dir() / version).glob("*.patch")}
    assert listed == on_disk and len(series) == 7
    assert len(series.base_commit) == 40
    assert all(p.problem in P.PROBLEMS for p in series.patches)
    assert series.patches[0].gates == ("kvm_guest.idle_halt_hint",)
    for p in series.patches:
        assert "\nSigned-off-by: " in p.path.read_text()
    assert f"base-commit: {series.base_commit}" in series.patches[0].path.read_text()


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
