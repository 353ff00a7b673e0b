"""kernel tier: --carry-patches on Debian's real 6.12 tree, in the private clone."""

import pytest

from vnuma_sched.bisect import source
from vnuma_sched.runner import Runner

pytestmark = pytest.mark.kernel


def test_carried_series_gives_the_patched_tree_and_leaves_the_user_tree(tree_612,
                                                                       patched_main_612,
                                                                       tmp_path):
    """--carry-patches carries the series alone, never the debug series."""
    runner = Runner()
    work, series = patched_main_612
    assert not series.debug
    base = runner.output(["git", "rev-parse", "vnuma-base"], cwd=tree_612)
    head_before = runner.output(["git", "rev-parse", "HEAD"], cwd=tree_612)
    src = tmp_path / "src"
    tree_id = source.prepare(tree_612, base, src, True, runner, print)
    # the same source as the series worktree that 'patches apply' made
    assert tree_id == runner.output(["git", "rev-parse", "HEAD^{tree}"], cwd=work)
    subjects = runner.output(["git", "log", "--format=%s", f"{base}..HEAD"],
                             cwd=src).splitlines()
    assert subjects[::-1] == [p.subject for p in series.patches]
    # at a commit that already has the series, carrying changes nothing
    patched_head = runner.output(["git", "rev-parse", "HEAD"], cwd=work)
    assert source.prepare(tree_612, patched_head, src, True, runner, print) == tree_id
    # without carrying, the base itself; and the user's tree never moved
    base_tree = runner.output(["git", "rev-parse", f"{base}^{{tree}}"], cwd=tree_612)
    assert source.prepare(tree_612, base, src, False, runner, print) == base_tree
    assert runner.output(["git", "rev-parse", "HEAD"], cwd=tree_612) == head_before
    assert runner.output(["git", "status", "--porcelain", "--untracked-files=no"],
                         cwd=tree_612) == ""
