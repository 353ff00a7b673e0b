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

# What the series and its debug patch touch (6.1 also paravirt.o, through the halt
# paravirt backport), and process.o, whose default_idle() now calls the paravirt halt.
TOUCHED = ("arch/x86/kernel/kvm.o", "arch/x86/kernel/process.o", "arch/x86/kernel/paravirt.o",
           "arch/x86/kernel/paravirt-spinlocks.o", "kernel/sched/fair.o")
# The Debian trees carry no upstream history, so checkpatch cannot look up the upstream
# commits a message cites ("commit c5b0a7eefc70 (...)"); it still checks their form.
NO_HISTORY = re.compile(r"^WARNING: Unknown commit id '[0-9a-f]{12,40}', maybe rebased or not "
                        r"pulled\?$")


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
    """0 errors, 0 warnings, 0 checks on every patch, the debug one too (but for the
    upstream commit ids the Debian tree cannot know); each module parameter a patch
    adds is documented in kernel-parameters.txt by the same patch."""
    tree, series = patched
    assert series.debug
    for patch in series.patches:
        res = subprocess.run(["perl", "scripts/checkpatch.pl", "--strict", "--no-tree",
                              "--quiet", str(patch.path)], cwd=tree, capture_output=True,
                             text=True)
        problems = [m for m in re.findall(r"^(?:ERROR|WARNING|CHECK):.*", res.stdout, re.M)
                    if not NO_HISTORY.match(m)]
        assert not problems, f"{patch.filename}:\n{res.stdout}"
        text = patch.path.read_text()
        for param in re.findall(r"^\+module_param_cb\((\w+),", text, re.M):
            prefix = re.findall(r'^\+#define MODULE_PARAM_PREFIX "(\w+\.)"', text, re.M)
            assert any(f"+\t{p}{param}=" in text for p in prefix), \
                f"{patch.filename}: {param} not documented"


def test_touched_objects_compile(patched, repo_fragment, tmp_path_factory):
    tree, series = patched
    emulate = repo_fragment.parent / "series-test.config"
    out = tree.parent / f"objects-{series.version}"
    req = kbuild.BuildRequest(tree, out, [repo_fragment, emulate], jobs=2,
                              targets=TOUCHED)
    res = kbuild.build(req, Runner(), print)
    assert [s.status for s in res.steps] == ["PASS", "PASS"]
    assert res.steps[1].detail == "", res.steps[1].detail  # no compiler warnings
