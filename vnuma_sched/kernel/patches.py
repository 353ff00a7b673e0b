"""The project's kernel patch series: model, per-patch status against a tree, apply.

b4 style: the status check never touches the work tree or the index (it applies
into a throw-away index file), and apply goes patch by patch with ``git am`` on
a new branch; any failure, Ctrl-C or SIGTERM aborts and leaves HEAD, branch and
tree as they were.
"""

import email
import email.policy
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.errors import BadInput, Interrupted, VnumaError
from vnuma_sched.kernel import gitargs
from vnuma_sched.kernel.ktree import SUPPORTED, check_supported
from vnuma_sched.runner import CommandFailed, signals_ignored, sigterm_as_interrupt

CLEAN, APPLIED, CONFLICT = "clean", "already-applied", "conflict"
PROBLEMS = {"1": "halted vCPU reported preempted", "2": "idle-time cross-node migration",
            "1-debug": "test aid for problem 1 (not for upstream)"}
COVER_LETTER = "0000-cover-letter.patch"   # beside the series file, never in it
DEBUG_DIR = "debug"     # <version>/debug/series: test aids, applied on top when asked
_FAILED = re.compile(r"error: patch failed: (\S+):(\d+)")
_NOT_APPLY = re.compile(r"error: (\S+): patch does not apply")
_CREATED = re.compile(r"^diff --git a/\S+ b/(\S+)\nnew file mode ", re.M)
_PATCH_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]*")


@dataclass(frozen=True)
class Patch:
    number: int             # position in the series as loaded (debug patches follow)
    filename: str           # relative to patches/<version>: "debug/..." for a debug patch
    path: Path
    subject: str
    problem: str
    gates: tuple
    debug: bool = False     # from the debug series: a test aid, never for bare metal

    def to_dict(self):
        return {"number": self.number, "file": self.filename, "subject": self.subject,
                "problem": self.problem, "problem_text": PROBLEMS.get(self.problem, ""),
                "gates": list(self.gates), "debug": self.debug}


@dataclass(frozen=True)
class Series:
    """The postable patches of one version, followed by the debug ones when loaded with
    debug=True; ``cover``: the cover letter (not a patch of the series) or None."""

    version: str
    base_commit: str
    patches: tuple
    cover: Path = None

    def __len__(self):
        return len(self.patches)

    @property
    def debug(self):
        """True when the debug series is part of this one (on top of the main series)."""
        return any(p.debug for p in self.patches)

    @property
    def name(self):
        """"6.12", or "6.12-debug" with the debug series: for branch and directory names."""
        return f"{self.version}-debug" if self.debug else self.version


def default_dir():
    return resources.patches_dir()


def subject(path, prefix=False):
    """A patch's (or cover letter's) Subject; without its "[PATCH n/m]" unless ``prefix``."""
    with open(path, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    text = str(msg.get("Subject", "")).replace("\n", " ").strip()
    return text if prefix else re.sub(r"^\[PATCH[^\]]*\]\s*", "", text).strip()


def _parse_meta(comment):
    meta = dict(re.findall(r"(\w+)=(\S*)", comment))
    gates = tuple(g for g in meta.get("gates", "").split(",") if g)
    return meta.get("problem", ""), gates


def _version_dir(version, patches_dir):
    check_supported(version)
    return Path(patches_dir or default_dir()).absolute() / version


def _read_series(series_file, first, debug):
    """(base commit, patches numbered from ``first``) of one series file."""
    base_commit, patches = "", []
    for lineno, line in enumerate(series_file.read_text().splitlines(), 1):
        m = re.match(r"#\s*base-commit:\s*([0-9a-f]{40})", line)
        if m:
            base_commit = m.group(1)
        name, _, comment = line.partition("#")
        name = name.strip()
        if not name:
            continue
        if not _PATCH_NAME.fullmatch(name):
            raise BadInput(f"{series_file}:{lineno}: {name[:60]!r}: not a patch file name")
        if name == COVER_LETTER:
            raise BadInput(f"{series_file}:{lineno}: {name}: the cover letter is not a patch "
                           "of the series (it stays beside it, unlisted)")
        path = series_file.parent / name
        if not path.is_file():
            raise BadInput(f"{series_file}:{lineno}: {name}: no such patch file")
        problem, gates = _parse_meta(comment)
        shown = f"{DEBUG_DIR}/{name}" if debug else name
        patches.append(Patch(first + len(patches), shown, path, subject(path), problem,
                             gates, debug))
    return base_commit, patches


def load_series(version, patches_dir=None, debug=False):
    """Read patches/<version>/series, and with ``debug`` the debug series after it;
    BadInput for an unknown version or a missing file."""
    base = _version_dir(version, patches_dir)
    series_file = base / "series"
    if not series_file.is_file():
        raise BadInput(f"no series for {version} ({series_file})")
    base_commit, patches = _read_series(series_file, 1, False)
    if debug:
        debug_file = base / DEBUG_DIR / "series"
        if not debug_file.is_file():
            raise BadInput(f"no debug series for {version} ({debug_file})")
        patches += _read_series(debug_file, len(patches) + 1, True)[1]
    cover = base / COVER_LETTER
    return Series(version, base_commit, tuple(patches), cover if cover.is_file() else None)


def has_debug(version, patches_dir=None):
    """Whether patches/<version> has a debug series."""
    return (_version_dir(version, patches_dir) / DEBUG_DIR / "series").is_file()


def all_series(patches_dir=None, debug=False):
    """Every version's series; with ``debug``, each with its debug series where it has one."""
    base = Path(patches_dir or default_dir())
    return [load_series(v, base, debug and has_debug(v, base))
            for v in SUPPORTED if (base / v / "series").is_file()]


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


def created_files(patch):
    """Paths a patch creates (``new file mode``), from its text."""
    return _CREATED.findall(Path(patch.path).read_text(encoding="utf-8", errors="replace"))


def _in_the_way(tree, patch):
    """The first file the patch creates that already exists in the work tree."""
    return next((name for name in created_files(patch)
                 if os.path.lexists(Path(tree) / name)), None)


def _forward(tree, runner, env, patch, work_tree):
    res = _git_apply(tree, runner, env, patch)
    if res.returncode != 0:
        return Status(patch, CONFLICT, conflict_detail(res.stderr))
    blocker = _in_the_way(tree, patch) if work_tree else None
    if blocker:
        return Status(patch, CONFLICT, f"{blocker}: an untracked file in the work tree is in "
                                       "the way (git am would refuse to overwrite it)")
    return Status(patch, CLEAN)


def check(tree, series, runner, rev="HEAD"):
    """Per-patch status against ``rev``, computed in throw-away index files (work tree
    untouched).

    First, from the last patch to the first, each patch that reverse-applies is
    already applied (and is unapplied in the scratch index, so earlier patches
    see their own context). Then the others are applied forward from ``rev``.
    Against HEAD, a patch that creates a file the work tree already has (an
    untracked or ignored file) is a conflict naming that file.
    """
    with tempfile.TemporaryDirectory(prefix="vnuma-check-") as tmp:
        rev_env = {"GIT_INDEX_FILE": os.path.join(tmp, "reverse")}
        fwd_env = {"GIT_INDEX_FILE": os.path.join(tmp, "forward")}
        for env in (rev_env, fwd_env):
            runner.run(["git", "read-tree", rev], cwd=tree, env=env)
        applied = {p.number for p in reversed(series.patches)
                   if _git_apply(tree, runner, rev_env, p, "--reverse").returncode == 0}
        return [Status(p, APPLIED) if p.number in applied else
                _forward(tree, runner, fwd_env, p, rev == "HEAD") for p in series.patches]


def dirty_files(tree, runner):
    """Tracked files with uncommitted changes (index or work tree)."""
    entries = iter(runner.run(["git", "status", "--porcelain", "-z", "--untracked-files=no"],
                              cwd=tree).stdout.split("\0"))
    out = []
    for entry in entries:
        if len(entry) > 3:
            out.append(entry[3:])
            if entry[0] in "RC":
                next(entries, None)  # the rename's or copy's source path
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


def _git_out(tree, runner, *args):
    """stdout of a git query, or None when it fails."""
    res = runner.run(["git", *args], cwd=tree, check=False)
    return res.stdout.strip() if res.returncode == 0 else None


def _identity_env(tree, runner):
    """A committer identity for git am when the user has none configured."""
    if _git_out(tree, runner, "config", "user.email") and \
            _git_out(tree, runner, "config", "user.name"):
        return {}
    return {"GIT_COMMITTER_NAME": "vnuma-sched", "GIT_COMMITTER_EMAIL": "vnuma-sched@localhost"}


def branch_exists(tree, branch, runner):
    return runner.run(["git", "show-ref", "-q", "--verify", f"refs/heads/{branch}"],
                      cwd=tree, check=False).returncode == 0


@dataclass(frozen=True)
class _Start:
    """Where the repository was before apply: the branch (None if detached) and HEAD."""

    branch: str
    sha: str

    def __str__(self):
        return self.branch or self.sha[:12]


def _preflight(tree, branch, runner):
    """Refusals before anything changes; returns the starting point."""
    branch = gitargs.check_branch(branch, runner, tree)
    git_dir = _git_out(tree, runner, "rev-parse", "--absolute-git-dir")
    if git_dir is None:
        raise BadInput(f"--tree {tree}: not a git repository")
    busy = _in_progress(git_dir)
    if busy:
        raise BadInput(f"--tree {tree}: {busy} is in progress; finish or abort it first")
    dirty = dirty_files(tree, runner)
    if dirty:
        raise BadInput(f"--tree {tree}: uncommitted changes ({_names(dirty)}); "
                       "commit or stash them first")
    if branch_exists(tree, branch, runner):
        raise BadInput(f"--branch {branch}: already exists")
    # the full ref, not --short: with a tag of the same name --short says "heads/<b>",
    # which checkout would take as a detached HEAD
    current = _git_out(tree, runner, "symbolic-ref", "-q", "HEAD")
    if current is not None:
        current = current.removeprefix("refs/heads/")
        gitargs.not_option(current, f"--tree {tree}: the current branch")
    return _Start(current, _git_out(tree, runner, "rev-parse", "HEAD"))


def _names(files, limit=3):
    return ", ".join(files[:limit]) + (f" and {len(files) - limit} more"
                                       if len(files) > limit else "")


class _AmFailed(Exception):
    def __init__(self, patch, stderr):
        super().__init__(patch.filename)
        self.patch, self.stderr = patch, stderr


def _apply_all(tree, statuses, branch, runner, progress):
    runner.run(["git", "checkout", "-q", "-b", branch], cwd=tree)
    env = _identity_env(tree, runner)
    for st in statuses:
        if st.state == APPLIED:
            progress(f"{st.patch.filename}: already applied, skipped")
            continue
        res = runner.run(["git", "am", "-q", "--committer-date-is-author-date",
                          str(st.patch.path)], cwd=tree, env=env, check=False)
        if res.returncode != 0:
            raise _AmFailed(st.patch, res.stderr or res.stdout)
        progress(f"{st.patch.filename}: applied")


def apply(tree, series, branch, runner, progress):
    """Apply the series on a new branch from HEAD; return the per-patch statuses.

    Refuses invalid branch names, dirty trees and unfinished git operations;
    checks every patch first (nothing is touched if one conflicts); if git am
    still fails, or SIGINT/SIGTERM arrives, aborts and restores the starting
    branch and HEAD and deletes the new branch.
    """
    with sigterm_as_interrupt():
        start = _preflight(tree, branch, runner)
        statuses = check(tree, series, runner)
        bad = [s for s in statuses if s.state == CONFLICT]
        if bad:
            raise ApplyFailed(f"{bad[0].patch.filename}: conflict in {bad[0].detail}; "
                              "nothing was changed")
        try:
            _apply_all(tree, statuses, branch, runner, progress)
        except BaseException as err:
            replacement = _rolled_back(err, tree, start, branch, runner)
            if replacement is err:
                raise
            raise replacement from err
    return statuses


def _rolled_back(err, tree, start, branch, runner):
    """Restore the repository after ``err``; the exception to raise instead."""
    try:
        with signals_ignored():
            _restore(tree, start, branch, runner)
    except VnumaError as failed:
        kind = Interrupted if isinstance(err, KeyboardInterrupt) else ApplyFailed
        return kind(f"{_what_failed(err)}; restoring {tree} failed too ({failed}): "
                    f"run 'git am --abort', 'git checkout -f {start}' and "
                    f"'git branch -D {branch}' there")
    if isinstance(err, KeyboardInterrupt):
        return Interrupted(f"patches apply interrupted; {tree} restored to {start} "
                           f"(branch {branch} removed)")
    if isinstance(err, (_AmFailed, CommandFailed)):
        return ApplyFailed(f"{_what_failed(err)}; repository restored")
    return err


def _what_failed(err):
    if isinstance(err, _AmFailed):
        return f"{err.patch.filename}: git am failed ({conflict_detail(str(err.stderr))})"
    if isinstance(err, KeyboardInterrupt):
        return "patches apply interrupted"
    return str(err)


def _restore(tree, start, branch, runner):
    if (Path(_git_out(tree, runner, "rev-parse", "--absolute-git-dir") or tree)
            / "rebase-apply").exists():
        runner.run(["git", "am", "--abort"], cwd=tree)
    target = start.branch if start.branch else start.sha
    runner.run(["git", "checkout", "-q", "-f", target, "--"], cwd=tree)
    if branch_exists(tree, branch, runner):
        runner.run(["git", "branch", "-q", "-D", branch], cwd=tree)


def series_branch(series):
    """The branch ``series_worktree`` applies a series on by default: one per version,
    and another one for the series with its debug patches."""
    return f"vnuma-series-{series.name}"


def _worktrees(base_tree, runner):
    """{absolute worktree path: branch name or None} of ``base_tree``'s repository."""
    out = runner.output(["git", "worktree", "list", "--porcelain"], cwd=base_tree)
    trees, current = {}, None
    for line in out.splitlines():
        if line.startswith("worktree "):
            current = str(Path(line[9:]).resolve())
            trees[current] = None
        elif line.startswith("branch refs/heads/") and current:
            trees[current] = line[len("branch refs/heads/"):]
    return trees


def _base_rev(base_tree, runner):
    return "vnuma-base" if _git_out(base_tree, runner, "rev-parse", "-q", "--verify",
                                    "vnuma-base^{commit}") else "HEAD"


def carries_series(base_tree, series, base, rev, runner):
    """True when ``rev`` is ``base`` plus exactly the series' commits."""
    if runner.run(["git", "merge-base", "--is-ancestor", base, rev], cwd=base_tree,
                  check=False).returncode != 0:
        return False
    wanted = sum(s.state != APPLIED for s in check(base_tree, series, runner, base))
    count = int(runner.output(["git", "rev-list", "--count", f"{base}..{rev}"], cwd=base_tree))
    return count == wanted and all(s.state == APPLIED
                                   for s in check(base_tree, series, runner, rev))


def _reusable(base_tree, dest, series, base, runner, progress):
    """Whether the worktree at ``dest`` is ``base`` plus exactly this series: a tree with
    the debug patches on top is no tree of the main series alone, and the reverse."""
    head = _git_out(dest, runner, "rev-parse", "HEAD")
    if head and carries_series(base_tree, series, base, head, runner):
        progress(f"{dest}: series already applied")
        return True
    progress(f"{dest}: stale, recreating")
    return False


def series_worktree(base_tree, series, dest, runner, progress, branch=None):
    """A git worktree of ``base_tree`` at its base with the series applied, reused if it
    carries exactly that series.

    Keeps the fetched tree itself clean: builds of the patched kernel use the
    worktree. The series goes on ``branch`` (default series_branch(), which
    differs with and without the debug patches); when another worktree has that
    branch checked out and it carries exactly the series at the base, the new
    worktree is made at its tip instead. Returns the worktree's path.
    """
    dest = Path(dest).absolute()
    branch = gitargs.not_option(branch or series_branch(series), "branch")
    runner.run(["git", "worktree", "prune"], cwd=base_tree)
    trees = _worktrees(base_tree, runner)
    key = str(dest.resolve())
    base = _base_rev(base_tree, runner)
    if key in trees:
        if _reusable(base_tree, dest, series, base, runner, progress):
            return dest
        runner.run(["git", "worktree", "remove", "--force", str(dest)], cwd=base_tree)
        del trees[key]
    elif dest.exists():
        raise BadInput(f"{dest}: exists but is not a worktree of {base_tree}; remove it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    holder = next((path for path, name in trees.items() if name == branch), None)
    if holder is None:
        return _fresh_worktree(base_tree, series, dest, base, branch, runner, progress)
    if not carries_series(base_tree, series, base, branch, runner):
        raise BadInput(f"branch {branch} is checked out in {holder} and does not carry the "
                       f"{series.name} series on {base}; remove that worktree "
                       "('git worktree remove') and try again")
    progress(f"{dest}: at branch {branch} (checked out in {holder})")
    runner.run(["git", "worktree", "add", "-q", "--detach", str(dest), branch], cwd=base_tree)
    return dest


def _fresh_worktree(base_tree, series, dest, base, branch, runner, progress):
    if branch_exists(base_tree, branch, runner):
        if carries_series(base_tree, series, base, branch, runner):
            progress(f"{dest}: branch {branch} already carries the series")
            runner.run(["git", "worktree", "add", "-q", str(dest), branch], cwd=base_tree)
            return dest
        runner.run(["git", "branch", "-q", "-D", branch], cwd=base_tree)
    runner.run(["git", "worktree", "add", "-q", "--detach", str(dest), base], cwd=base_tree)
    apply(dest, series, branch, runner, progress)
    return dest
