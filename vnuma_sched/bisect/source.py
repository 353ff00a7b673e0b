"""A step's kernel: the commit's source in a private clone (the user's tree is
left alone), the project's series carried on top when asked, and an
incremental build in one O= directory per configuration whose image, .config,
metadata and log are then kept per source tree (git tree id), so a commit is
never built twice and identical sources share one build."""

import fcntl
import hashlib
import os
import shutil
from contextlib import contextmanager
from pathlib import Path

from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.kernel import gitargs, kbuild, patches
from vnuma_sched.kernel.ktree import tree_version

# Every step builds with the same stamp and build number, so commits whose
# sources compile to the same kernel give byte-identical images.
FIXED_ENV = {"KBUILD_BUILD_TIMESTAMP": "Thu Jan  1 00:00:00 UTC 2015",
             "KBUILD_BUILD_VERSION": "1"}
CARRY_BRANCH = "vnuma-carry"
KEPT = ("arch/x86/boot/bzImage", "metadata.json", ".config", "build.log")


class SkipCommit(VnumaError):
    """This commit cannot be tested (build or boot failure, series does not apply, noise)."""


def git_dir(tree, runner):
    """The tree's own git directory (a linked worktree has its own bisect)."""
    return Path(runner.output(["git", "rev-parse", "--absolute-git-dir"], cwd=tree))


def config_key(fragments):
    """Builds are shared between trees and bisects that use the same fragments."""
    h = hashlib.sha256()
    for frag in fragments:
        h.update(Path(frag).read_bytes() + b"\0")
    return h.hexdigest()[:16]


@contextmanager
def locked(path):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def prepare(tree, sha, src, carry, runner, progress):
    """Check out ``sha`` in the private clone ``src`` (made on first use), apply the series
    when ``carry``; return the git tree id of the source that will be built."""
    src = Path(src)
    if not (src / ".git").is_dir():
        progress(f"private clone of {tree} for the builds: {src}")
        src.parent.mkdir(parents=True, exist_ok=True)
        runner.run(["git", "clone", "-q", "--shared", "--no-checkout", str(tree), str(src)])
    runner.run(["git", "am", "--abort"], cwd=src, check=False)
    runner.run(["git", "checkout", "-q", "-f", "--detach", sha], cwd=src)
    if carry:
        _carry(src, sha, runner, progress)
    return runner.output(["git", "rev-parse", "HEAD^{tree}"], cwd=src)


def _carry(src, sha, runner, progress):
    series = patches.load_series(tree_version(src).series)
    states = patches.check(src, series, runner)
    conflict = next((s for s in states if s.state == patches.CONFLICT), None)
    if conflict:
        raise SkipCommit(f"the {series.version} series does not apply at {sha[:12]} "
                         f"({conflict.patch.filename}: {conflict.detail})")
    if all(s.state == patches.APPLIED for s in states):
        return
    runner.run(["git", "branch", "-q", "-D", CARRY_BRANCH], cwd=src, check=False)
    try:
        patches.apply(src, series, CARRY_BRANCH, runner, lambda msg: None)
    except patches.ApplyFailed as err:
        raise SkipCommit(f"the series does not apply at {sha[:12]}: {err}") from err
    progress(f"carried the {series.version} series ({len(series)} patches)")


def _touch_changed(src, out, tree_id, runner):
    """Make sure make sees every file that differs from what ``out`` was last built from."""
    marker = out / ".vnuma-tree"
    last = marker.read_text().strip() if marker.is_file() else ""
    if not last or last == tree_id:
        return
    try:
        gitargs.object_id(last, str(marker))    # a file: never let it reach git as an option
    except BadInput:
        return                                  # unknown: make decides by mtimes alone
    res = runner.run(["git", "diff", "--name-only", "-z", last, tree_id], cwd=src, check=False)
    if res.returncode != 0:  # the last tree is gone: make decides by mtimes alone
        return
    for name in filter(None, res.stdout.split("\0")):
        path = src / name
        if path.is_file():
            os.utime(path)


def _failure_summary(err):
    """One line for the skip reason: the failed step, its first error, else the log."""
    if err.log is None:
        return str(err)
    parts = [f"{err.step}: {err.reason}:"]
    parts += [e.strip() for e in err.errors if e.strip()]
    parts.append(f"full log: {err.log}")
    return "; ".join(parts[:3])


def build(src, tree_id, fragments, builds, jobs, runner, progress):
    """(kept directory, reused?) for this source tree: its bzImage, metadata.json, .config."""
    kept = Path(builds) / "by-tree" / tree_id
    if all((kept / Path(name).name).is_file() for name in KEPT[:3]):
        return kept, True
    with locked(Path(builds) / "lock"):
        out = Path(builds) / "o"
        _touch_changed(Path(src), out, tree_id, runner)
        req = kbuild.BuildRequest(Path(src), out, list(fragments), jobs=jobs,
                                  env=dict(FIXED_ENV))
        try:
            kbuild.build(req, runner, progress)
        except kbuild.BuildFailed as err:
            raise SkipCommit("build failed: " + _failure_summary(err)) from err
        (out / ".vnuma-tree").write_text(tree_id + "\n")
        tmp = kept.with_name(kept.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        for name in KEPT:
            if (out / name).is_file():
                shutil.copy2(out / name, tmp / Path(name).name)
        shutil.rmtree(kept, ignore_errors=True)
        os.replace(tmp, kept)
    return kept, False
