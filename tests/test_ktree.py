"""Kernel tree fetch against a small tarball laid out like Debian's linux-source."""

import shutil
import subprocess

import pytest
from helpers import FAKE_KERNEL, FAKE_VERSION, git

from vnuma_sched.errors import BadInput, NeedsRoot
from vnuma_sched.kernel.ktree import fetch_debian, fetch_git, tree_version
from vnuma_sched.runner import Runner


@pytest.fixture
def tarball(tmp_path):
    src = tmp_path / "src" / "linux-source-6.12"
    shutil.copytree(FAKE_KERNEL, src)
    (src / ".gitignore").write_text("/*\n")  # Debian's rule: ignores everything
    out = tmp_path / "linux-source-6.12.tar.xz"
    subprocess.run(["tar", "-cJf", str(out), "-C", str(tmp_path / "src"), "linux-source-6.12"],
                   check=True)
    return out


def fetch(dest, tarball, msgs=None):
    return fetch_debian("6.12", dest, Runner(), (msgs if msgs is not None else []).append, 0,
                        tarball=tarball)


def head(tree):
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_fetch_makes_clean_repo_with_every_file(tmp_path, tarball):
    tree = fetch(tmp_path / "a", tarball)
    assert tree == tmp_path / "a" / "linux-source-6.12"
    files = subprocess.run(["git", "ls-files"], cwd=tree, capture_output=True, text=True,
                           check=True).stdout.split()
    assert {"Makefile", ".gitignore", "kernel/configs/kvm_guest.config"} <= set(files)
    status = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=tree,
                            capture_output=True, text=True).stdout
    assert status == ""
    assert str(tree_version(tree)) == FAKE_VERSION


def test_fetch_is_idempotent_and_base_is_deterministic(tmp_path, tarball):
    a = fetch(tmp_path / "a", tarball)
    msgs = []
    again = fetch(tmp_path / "a", tarball, msgs)
    assert again == a and any("already fetched" in m for m in msgs)
    b = fetch(tmp_path / "b", tarball)
    assert head(a) == head(b)


def test_fetch_refuses_foreign_directory(tmp_path, tarball):
    (tmp_path / "a" / "linux-source-6.12").mkdir(parents=True)
    with pytest.raises(BadInput, match="not a tree fetched by vnuma-sched"):
        fetch(tmp_path / "a", tarball)


def test_unsupported_version(tmp_path):
    with pytest.raises(BadInput, match="supported are 6.1, 6.12"):
        fetch_debian("5.10", tmp_path, Runner(), print, 0)


def test_missing_package_needs_root(tmp_path):
    with pytest.raises(NeedsRoot, match="linux-source-6.12"):
        fetch_debian("6.12", tmp_path, Runner(), print, 1000, tarball=tmp_path / "none.tar.xz")


def test_not_a_kernel_tree(tmp_path):
    with pytest.raises(BadInput, match="not a kernel tree"):
        tree_version(tmp_path)
    (tmp_path / "Makefile").write_text("all:\n")
    with pytest.raises(BadInput, match="no VERSION"):
        tree_version(tmp_path)


def test_fetch_git_clones_and_checks_out_ref(tmp_path):
    src = tmp_path / "linux.git"
    shutil.copytree(FAKE_KERNEL, src)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "v1"], ["tag", "v1"]):
        git(src, *args)
    (src / "extra").write_text("x\n")
    for args in (["add", "-A"], ["commit", "-q", "-m", "v2"]):
        git(src, *args)
    tree = fetch_git(str(src), "v1", tmp_path / "dest", Runner(), print)
    assert tree == tmp_path / "dest" / "linux" and not (tree / "extra").exists()
    assert str(tree_version(tree)) == FAKE_VERSION
    again = fetch_git(str(src), "HEAD", tmp_path / "dest", Runner(), print)
    assert again == tree
    with pytest.raises(BadInput, match="--ref nope"):
        fetch_git(str(src), "nope", tmp_path / "dest", Runner(), print)
    (tree / "Makefile").write_text("dirty\n")
    with pytest.raises(BadInput, match="uncommitted changes"):
        fetch_git(str(src), "v1", tmp_path / "dest", Runner(), print)
