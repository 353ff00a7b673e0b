"""patches verify against the fake kernel Makefile: every patch x every variant."""

import shutil

import pytest
from helpers import FAKE_KERNEL, git

from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import verify as V
from vnuma_sched.kernel.patches import Patch, Series
from vnuma_sched.runner import Runner


@pytest.fixture
def tree(tmp_path):
    t = tmp_path / "linux"
    shutil.copytree(FAKE_KERNEL, t)
    (t / "kernel").mkdir(exist_ok=True)
    (t / "kernel" / "a.c").write_text("int a;\n")
    git(t, "init", "-q")
    git(t, "add", "-A")
    git(t, "commit", "-q", "-m", "base")
    (t / "kernel" / "a.c").write_text("int a = 1;\n")
    git(t, "commit", "-q", "-am", "one")
    (t / "kernel" / "b.c").write_text("int b;\n")
    (t / "Documentation.txt").write_text("doc\n")
    git(t, "add", "-A")
    git(t, "commit", "-q", "-m", "two")
    return t


def series(n, subjects=("one", "two")):
    """A series whose patches have the subjects of the tree's last ``n`` commits."""
    return Series("6.12", "", tuple(
        Patch(i + 1, f"{i + 1:04}-{subject}.patch", None, subject, "2", ())
        for i, subject in enumerate(subjects[-n:])))


def test_series_commits_are_the_series_own(tree):
    assert len(V.series_commits(tree, Runner(), series(2))) == 2
    with pytest.raises(BadInput, match=r"HEAD does not end with the 6.12 series .*'one', "
                                       r"expected 0001-other.patch"):
        V.series_commits(tree, Runner(), series(2, ("other", "two")))
    with pytest.raises(BadInput, match="expected the 4 series commits"):  # more than HEAD has
        V.series_commits(tree, Runner(), series(4, ("x", "base", "one", "two")))


def test_touched_objects(tree):
    assert V.touched_objects(tree, Runner(), "HEAD") == ["kernel/b.o"]


def test_matrix_every_patch_every_variant(tree, tmp_path):
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_SMP=y\n")
    cells = V.run_matrix(tree, series(2), [frag], tmp_path / "work", Runner(), lambda m: None)
    names = list(V.variants([frag]))
    assert names[0] == "default" and {"no-numa", "no-smp", "no-kvm-guest"} <= set(names)
    assert [(c.patch, c.variant) for c in cells] == [(p, n) for n in names for p in (1, 2)]
    assert {c.status for c in cells} == {"PASS"}
    assert (tmp_path / "work" / "out-default" / "kernel" / "b.o").exists()


def test_matrix_reports_failures(tree, tmp_path, monkeypatch):
    monkeypatch.setenv("FAIL", "1")
    frag = tmp_path / "f.config"
    frag.write_text("CONFIG_SMP=y\n")
    cells = V.run_matrix(tree, series(2), [frag], tmp_path / "work", Runner(), lambda m: None)
    assert {c.status for c in cells} == {"FAIL"}
    assert "error: expected ';'" in cells[0].detail


def test_warning_set_ignores_line_numbers():
    a = V.warning_set("/x/kernel/sched/fair.c:10:5: warning: unused variable 'x'\n")
    b = V.warning_set("/y/kernel/sched/fair.c:99:5: warning: unused variable 'x'\n")
    assert a == b == {("fair.c", "unused variable 'x'")}


def test_enabled_follows_config(tmp_path):
    (tmp_path / "k").mkdir()
    (tmp_path / "k" / "Makefile").write_text("obj-y += core.o\nobj-$(CONFIG_KVM_GUEST) += kvm.o\n"
                                             "obj-$(CONFIG_FOO)\t+= foo.o bar.o\n")
    cfg = {"CONFIG_KVM_GUEST": "y", "CONFIG_FOO": "n"}
    assert V.enabled(tmp_path, "k/core.o", cfg) and V.enabled(tmp_path, "k/kvm.o", cfg)
    assert not V.enabled(tmp_path, "k/bar.o", cfg) and not V.enabled(tmp_path, "k/none.o", cfg)
