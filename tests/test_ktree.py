"""Kernel tree fetch against a small tarball laid out like Debian's linux-source."""

import shutil
import subprocess

import pytest
from click.testing import CliRunner
from helpers import FAKE_KERNEL, FAKE_VERSION, git

from vnuma_sched import runner as runner_module
from vnuma_sched.cli.main import main
from vnuma_sched.errors import BadInput, NeedsRoot
from vnuma_sched.kernel.ktree import default_cache, fetch_debian, fetch_git, tree_version
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


# --- user values never reach git as options -----------------------------------------

@pytest.fixture
def no_subprocess(monkeypatch):
    """Every subprocess the code under test tries to start, refused and recorded."""
    started = []

    def refuse(argv, *args, **kwargs):
        started.append(argv)
        raise AssertionError(f"started {argv}")

    def install():
        monkeypatch.setattr(runner_module.subprocess, "Popen", refuse)
        return started
    return install


def upstream(tmp_path):
    src = tmp_path / "linux.git"
    shutil.copytree(FAKE_KERNEL, src)
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "v1"], ["tag", "v1"]):
        git(src, *args)
    return src


@pytest.mark.parametrize("clone_first", [False, True])
def test_fetch_refuses_a_git_source_that_is_an_option(tmp_path, no_subprocess, clone_first):
    """--git "--upload-pack=touch X": exit 2, one line, nothing run, X not created."""
    dest = tmp_path / "dest"
    marker_dir = tmp_path / "m"
    marker_dir.mkdir()
    if clone_first:   # an existing clone named like the value's last path element
        fetch_git(str(upstream(tmp_path)), "v1", dest, Runner(), print)
    started = no_subprocess()
    res = CliRunner().invoke(main, ["kernel", "fetch", "--dest", str(dest), "--git",
                                    f"--upload-pack=touch {marker_dir / 'linux'}"])
    assert res.exit_code == 2, res.output
    assert "--git" in res.output and len(res.output.strip().splitlines()) == 1
    assert started == [] and not (marker_dir / "linux").exists()
    assert clone_first or not dest.exists()


@pytest.mark.parametrize("args,needle", [
    (["--ref", "--output=/tmp/x"], "--ref"),
    (["--ref", "-b"], "--ref"),
    (["--git", "ext::sh -c touch% /tmp/x"], "ext:: transport"),
    (["--git", "fd::3"], "fd:: transport"),
    (["--git", "-oProxyCommand=touch /tmp/x"], "--git"),
])
def test_fetch_refuses_option_like_values(tmp_path, no_subprocess, args, needle):
    argv = ["kernel", "fetch", "--dest", str(tmp_path / "dest")]
    if "--git" not in args:
        argv += ["--git", str(tmp_path / "src")]
    started = no_subprocess()
    res = CliRunner().invoke(main, argv + args)
    assert res.exit_code == 2 and needle in res.output, res.output
    assert started == [] and not (tmp_path / "dest").exists()


def test_fetch_git_resolves_the_ref_after_end_of_options(tmp_path):
    src = upstream(tmp_path)
    tree = fetch_git(str(src), "v1", tmp_path / "dest", Runner(), print)
    assert head(tree) == git(src, "rev-parse", "v1")
    with pytest.raises(BadInput, match="--ref HEAD~5: not found"):
        fetch_git(str(src), "HEAD~5", tmp_path / "dest", Runner(), print)


def test_fetch_git_takes_a_relative_path(tmp_path, monkeypatch):
    upstream(tmp_path)
    monkeypatch.chdir(tmp_path)
    tree = fetch_git("linux.git", "v1", tmp_path / "dest", Runner(), print)
    assert str(tree_version(tree)) == FAKE_VERSION


def test_cache_is_absolute():
    assert default_cache({"VNUMA_SCHED_CACHE": "-rel"}).startswith("/")
    assert default_cache({}) == "/var/cache/vnuma_sched"
