"""kernel tier: Debian's real linux-source trees, fetched as git repos, and a real
guest-kernel build from the project's fragment (cached between runs)."""

import json
import subprocess

import pytest
from helpers import debian_source_version

from vnuma_sched.kernel import kconfig
from vnuma_sched.kernel.ktree import tree_version

pytestmark = pytest.mark.kernel


def git_out(tree, *args):
    return subprocess.run(["git", *args], cwd=tree, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.parametrize("series", ["6.12", "6.1"])
def test_fetch_debian_source(request, series):
    tree = request.getfixturevalue("tree_612" if series == "6.12" else "tree_61")
    assert str(tree_version(tree)) == debian_source_version(series)
    assert git_out(tree, "status", "--porcelain") == ""
    assert git_out(tree, "rev-list", "--count", "HEAD") == "1"
    assert git_out(tree, "rev-parse", "vnuma-base") == git_out(tree, "rev-parse", "HEAD")
    # Debian's "/*" .gitignore must not have hidden the sources
    assert "kernel/sched/fair.c" in git_out(tree, "ls-files", "kernel/sched/fair.c")


def test_guest_kernel_build(guest_build, repo_fragment):
    meta = json.loads((guest_build / "metadata.json").read_text())
    assert meta["kernel_version"] == debian_source_version("6.12")
    assert (guest_build / "arch/x86/boot/bzImage").stat().st_size > 1_000_000
    final = kconfig.parse((guest_build / ".config").read_text(), strict=False)
    assert kconfig.dropped(kconfig.read_fragment(repo_fragment), final) == []
    assert meta["reproducer"].startswith("vnuma-sched build --tree ")
    assert meta["compiler"].startswith("gcc")
