"""The project's kernel patch series: model, per-patch status against a tree, apply.

b4 style: the status check never touches the work tree or the index (it applies
into a throw-away index file), and apply goes patch by patch with ``git am`` on
a new branch; any failure aborts and leaves HEAD, branch and tree as they were.
"""

import email
import email.policy
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.kernel.ktree import SUPPORTED, check_supported

CLEAN, APPLIED, CONFLICT = "clean", "already-applied", "conflict"
PROBLEMS = {"1": "halted vCPU reported preempted", "2": "idle-time cross-node migration",
            "1-debug": "test aid for problem 1 (not for upstream)",
            "docs": "documentation"}
_FAILED = re.compile(r"error: patch failed: (\S+):(\d+)")
_NOT_APPLY = re.compile(r"error: (\S+): patch does not apply")


@dataclass(frozen=True)
class Patch:
    number: int
    filename: str
    path: Path
    subject: str
    problem: str
    gates: tuple

    def to_dict(self):
        return {"number": self.number, "file": self.filename, "subject": self.subject,
                "problem": self.problem, "problem_text": PROBLEMS.get(self.problem, ""),
                "gates": list(self.gates)}


@dataclass(frozen=True)
class Series:
    version: str
    base_commit: str
    patches: tuple

    def __len__(self):
        return len(self.patches)


def default_dir():
    return resources.patches_dir()


def _subject(path):
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    subject = str(msg.get("Subject", "")).replace("\n", " ")
    return re.sub(r"^\[PATCH[^\]]*\]\s*", "", subject).strip()


def _parse_meta(comment):
    meta = dict(re.findall(r"(\w+)=(\S*)", comment))
    gates = tuple(g for g in meta.get("gates", "").split(",") if g)
    return meta.get("problem", ""), gates


def load_series(version, patches_dir=None):
    """Read patches/<version>/series; BadInput for an unknown version or missing file."""
    check_supported(version)
    base = Path(patches_dir or default_dir()) / version
    series_file = base / "series"
    if not series_file.is_file():
        raise BadInput(f"no series for {version} ({series_file})")
    base_commit, patches = "", []
    for lineno, line in enumerate(series_file.read_text().splitlines(), 1):
        m = re.match(r"#\s*base-commit:\s*([0-9a-f]{40})", line)
        if m:
            base_commit = m.group(1)
        name, _, comment = line.partition("#")
        name = name.strip()
        if not name:
            continue
        path = base / name
        if not path.is_file():
            raise BadInput(f"{series_file}:{lineno}: {name}: no such patch file")
        problem, gates = _parse_meta(comment)
        patches.append(Patch(len(patches) + 1, name, path, _subject(path), problem, gates))
    return Series(version, base_commit, tuple(patches))


def all_series(patches_dir=None):
    base = Path(patches_dir or default_dir())
    return [load_series(v, base) for v in SUPPORTED if (base / v / "series").is_file()]


@dataclass(frozen=True)
class Status:
    patch: Patch
    state: str
    detail: str = ""

    def to_dict(self):
        return {**self.patch.to_dict(), "status": self.state, "detail": self.detail}


def conflict_detail(stderr):
    """'file:line' of the first failing hunk from git apply's stderr."""
    m = _FAILED.search(stderr)
    if m:
        return f"{m.group(1)}: hunk at line {m.group(2)} does not apply"
    m = _NOT_APPLY.search(stderr)
    if m:
        return f"{m.group(1)}: does not apply"
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    return lines[0][7:] if lines else stderr.strip()[:200]


def _git_apply(tree, runner, env, patch, *flags):
    return runner.run(["git", "apply", "--cached", *flags, str(patch.path)], cwd=tree,
                      env=env, check=False)


def check(tree, series, runner):
    """Per-patch status, computed in throw-away index files (work tree untouched).

    First, from the last patch to the first, each patch that reverse-applies is
    already applied (and is unapplied in the scratch index, so earlier patches
    see their own context). Then the others are applied forward from HEAD.
    """
    with tempfile.TemporaryDirectory(prefix="vnuma-check-") as tmp:
        rev_env = {"GIT_INDEX_FILE": os.path.join(tmp, "reverse")}
        fwd_env = {"GIT_INDEX_FILE": os.path.join(tmp, "forward")}
        for env in (rev_env, fwd_env):
            runner.run(["git", "read-tree", "HEAD"], cwd=tree, env=env)
        applied = {p.number for p in reversed(series.patches)
                   if _git_apply(tree, runner, rev_env, p, "--reverse").returncode == 0}
        out = []
        for patch in series.patches:
            if patch.number in applied:
                out.append(Status(patch, APPLIED))
                continue
            res = _git_apply(tree, runner, fwd_env, patch)
            out.append(Status(patch, CLEAN) if res.returncode == 0 else
                       Status(patch, CONFLICT, conflict_detail(res.stderr)))
        return out


class ApplyFailed(VnumaError):
    pass


def _in_progress(git_dir):
    for name, what in (("rebase-apply", "a git am or rebase"), ("rebase-merge", "a rebase"),
                       ("MERGE_HEAD", "a merge"), ("CHERRY_PICK_HEAD", "a cherry-pick"),
                       ("BISECT_LOG", "a bisect")):
        if (Path(git_dir) / name).exists():
            return what
    return None


def _identity_env(repo):
    """A committer identity for git am when the user has none configured."""
    reader = repo.config_reader()
    if reader.get_value("user", "email", "") and reader.get_value("user", "name", ""):
        return {}
    return {"GIT_COMMITTER_NAME": "vnuma-sched", "GIT_COMMITTER_EMAIL": "vnuma-sched@localhost"}


def apply(tree, series, branch, runner, progress):
    """Apply the series on a new branch from HEAD; return the per-patch statuses.

    Refuses dirty trees and unfinished git operations; checks every patch first
    (nothing is touched if one conflicts); if git am still fails, aborts and
    restores the starting branch and HEAD.
    """
    import git  # noqa: PLC0415 - GitPython only where needed

    try:
        repo = git.Repo(tree)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError) as err:
        raise BadInput(f"--tree {tree}: not a git repository") from err
    busy = _in_progress(repo.git_dir)
    if busy:
        raise BadInput(f"--tree {tree}: {busy} is in progress; finish or abort it first")
    if repo.is_dirty(index=True, working_tree=True, untracked_files=False):
        raise BadInput(f"--tree {tree}: uncommitted changes; commit or stash them first")
    if branch in repo.heads:
        raise BadInput(f"--branch {branch}: already exists")
    statuses = check(tree, series, runner)
    bad = [s for s in statuses if s.state == CONFLICT]
    if bad:
        raise ApplyFailed(f"{bad[0].patch.filename}: conflict in {bad[0].detail}; "
                          "nothing was changed")
    start = None if repo.head.is_detached else repo.active_branch.name
    start_sha = repo.head.commit.hexsha
    repo.git.checkout("-q", "-b", branch)
    env = _identity_env(repo)
    for st in statuses:
        if st.state == APPLIED:
            progress(f"{st.patch.filename}: already applied, skipped")
            continue
        try:
            with repo.git.custom_environment(**env):
                repo.git.am("-q", "--committer-date-is-author-date", str(st.patch.path))
        except git.GitCommandError as err:
            _restore(repo, start, start_sha, branch)
            raise ApplyFailed(f"{st.patch.filename}: git am failed "
                              f"({conflict_detail(str(err.stderr))}); repository restored") from err
        progress(f"{st.patch.filename}: applied")
    return statuses


def _restore(repo, start, start_sha, branch):
    import git  # noqa: PLC0415

    try:
        repo.git.am("--abort")
    except git.GitCommandError:
        pass
    repo.git.checkout("-q", "-f", start or start_sha)
    repo.git.branch("-D", branch)


def series_worktree(base_tree, series, dest, runner, progress):
    """A git worktree of ``base_tree`` at its base with the series applied, reused if intact.

    Keeps the fetched tree itself clean: builds of the patched kernel use the
    worktree. Returns its path.
    """
    dest = Path(dest)
    branch = f"vnuma-series-{series.version}"
    if dest.exists():
        if all(s.state == APPLIED for s in check(dest, series, runner)):
            progress(f"{dest}: series already applied")
            return dest
        progress(f"{dest}: stale, recreating")
        runner.run(["git", "worktree", "remove", "--force", str(dest)], cwd=base_tree,
                   check=False)
    runner.run(["git", "worktree", "prune"], cwd=base_tree)
    runner.run(["git", "branch", "-D", branch], cwd=base_tree, check=False)
    dest.parent.mkdir(parents=True, exist_ok=True)
    base = "vnuma-base" if runner.run(["git", "rev-parse", "-q", "--verify", "vnuma-base"],
                                      cwd=base_tree, check=False).returncode == 0 else "HEAD"
    runner.run(["git", "worktree", "add", "-q", "--detach", str(dest), base], cwd=base_tree)
    apply(dest, series, branch, runner, progress)
    return dest
