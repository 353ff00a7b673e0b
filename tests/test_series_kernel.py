"""kernel tier: the project's series with its debug series on top, on the real Debian
trees - applies with git am, checkpatch --strict finds no errors or warnings, and the
touched objects compile with the project's fragments (including the debug emulation
option)."""

import re
import subprocess

import pytest

from vnuma_sched.kernel import kbuild
from vnuma_sched.kernel import patches as P
from vnuma_sched.runner import Runner

pytestmark = pytest.mark.kernel

TOUCHED = ("arch/x86/kernel/kvm.o", "arch/x86/kernel/process.o",
           "arch/x86/kernel/paravirt-spinlocks.o", "kernel/sched/core.o",
           "kernel/sched/fair.o")


@pytest.fixture(scope="module", params=["6.12", "6.1"])
def patched(request):
    return request.getfixturevalue(f"patched_{request.param.replace('.', '')}")


def test_series_applies_on_its_own_branch(patched):
    tree, series = patched
    log = subprocess.run(["git", "log", "--format=%s", "vnuma-base..HEAD"], cwd=tree,
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert log[::-1] == [p.subject for p in series.patches]
    assert [s.state for s in P.check(tree, series, Runner())] == [P.APPLIED] * len(series)


def test_checkpatch_strict_clean(patched):
    """No errors or warnings; the only CHECKs are boot parameters that a patch of the
    same series documents."""
    tree, series = patched
    assert series.debug
    docs = "".join(p.path.read_text() for p in series.patches)
    for patch in series.patches:
        res = subprocess.run(["perl", "scripts/checkpatch.pl", "--strict", "--no-tree",
                              "--quiet", str(patch.path)], cwd=tree, capture_output=True,
                             text=True)
        problems = re.findall(r"^(?:ERROR|WARNING):.*", res.stdout, re.M)
        assert not problems, f"{patch.filename}:\n{res.stdout}"
        checks = re.findall(r"^CHECK: (.*)", res.stdout, re.M)
        assert set(checks) <= {"__setup appears un-documented -- check "
                               "Documentation/admin-guide/kernel-parameters.txt"}, res.stdout
        for name in re.findall(r'__setup\("([a-z_]+=)"', res.stdout):
            assert f"\t{name}\n" in docs, f"{name} not documented in {series.version}"


def test_touched_objects_compile(patched, repo_fragment, tmp_path_factory):
    tree, series = patched
    emulate = repo_fragment.parent / "series-test.config"
    out = tree.parent / f"objects-{series.version}"
    req = kbuild.BuildRequest(tree, out, [repo_fragment, emulate], jobs=2,
                              targets=TOUCHED)
    res = kbuild.build(req, Runner(), print)
    assert [s.status for s in res.steps] == ["PASS", "PASS"]
    assert res.steps[1].detail == "", res.steps[1].detail  # no compiler warnings
