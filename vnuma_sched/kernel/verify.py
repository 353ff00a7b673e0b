"""Series verification: every patch, in order, compiles its touched objects in
every build variant (the series is bisectable), and the series adds no W=1
warnings in the files it touches."""

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from vnuma_sched import resources
from vnuma_sched.errors import BadInput
from vnuma_sched.kernel import kbuild, kconfig

VARIANT_DIR = resources.kconfig_dir() / "variants"
_WARN = re.compile(r"^(?:\S*/)?(\S+?):\d+:\d+: warning: (.*)$")


@dataclass
class Cell:
    patch: int
    variant: str
    status: str        # PASS | FAIL | SKIP
    detail: str = ""


def variants(base_fragments):
    """{"default": base, "no-numa": base + variants/no-numa.config, ...}."""
    out = {"default": list(base_fragments)}
    for frag in sorted(VARIANT_DIR.glob("*.config")):
        out[frag.stem] = [*base_fragments, frag]
    return out


def _built_by_kbuild(tree, obj):
    """True when the directory's Makefile names the object (not a .c included elsewhere)."""
    makefile = Path(tree) / Path(obj).parent / "Makefile"
    return makefile.is_file() and Path(obj).name in makefile.read_text(errors="replace")


def enabled(tree, obj, config):
    """Whether kbuild builds ``obj`` with this .config (obj-y or obj-$(CONFIG_X)=y)."""
    makefile = Path(tree) / Path(obj).parent / "Makefile"
    name = re.escape(Path(obj).name)
    for line in makefile.read_text(errors="replace").splitlines():
        m = re.match(r"\s*obj-(y|\$\((CONFIG_\w+)\))\s*[+:]?=.*\b" + name, line)
        if m:
            return m.group(1) == "y" or config.get(m.group(2)) == "y"
    return False


def touched_objects(tree, runner, rev):
    """The .o targets of the .c files a commit touches and kbuild builds."""
    names = runner.output(["git", "diff-tree", "--no-commit-id", "--name-only", "-r", rev],
                          cwd=tree).splitlines()
    return [name[:-2] + ".o" for name in names
            if name.endswith(".c") and (Path(tree) / name).exists()
            and _built_by_kbuild(tree, name[:-2] + ".o")]


def _worktree(tree, work, runner):
    if work.exists():
        runner.run(["git", "worktree", "remove", "--force", str(work)], cwd=tree, check=False)
        shutil.rmtree(work, ignore_errors=True)
        runner.run(["git", "worktree", "prune"], cwd=tree)
    work.parent.mkdir(parents=True, exist_ok=True)
    runner.run(["git", "worktree", "add", "-q", "--detach", str(work), "HEAD"], cwd=tree)


def series_commits(tree, runner, series):
    """The commits of ``series`` on HEAD, oldest first: the last len(series) commits,
    with the patches' subjects in order (so the main series alone is not taken for the
    series with its debug patches, or the reverse)."""
    count = len(series)
    revs = runner.output(["git", "rev-list", "--reverse", f"--max-count={count}", "HEAD"],
                         cwd=tree).split()
    if len(revs) != count:
        raise BadInput(f"--tree {tree}: expected the {count} series commits on HEAD")
    for rev, patch in zip(revs, series.patches):
        found = runner.output(["git", "log", "-1", "--format=%s", rev], cwd=tree)
        if found != patch.subject:
            raise BadInput(f"--tree {tree}: HEAD does not end with the {series.name} series "
                           f"({rev[:12]} is {found[:60]!r}, expected {patch.filename}); "
                           "apply that series, or choose the one the tree carries with "
                           "--debug/--no-debug")
    return revs


def objects_so_far(tree, runner, revs):
    """For each commit of the series, the objects touched by it and the commits before."""
    out, objs = [], []
    for rev in revs:
        objs = objs + [o for o in touched_objects(tree, runner, rev) if o not in objs]
        out.append(objs)
    return out


def _fail_detail(err):
    """A FAIL cell's detail: the compiler's first error when make failed, else the message."""
    if err.log is None:
        return str(err)
    return err.errors[0].strip() if err.errors else ""


def run_matrix(tree, series, base_fragments, workdir, runner, progress, jobs=2):
    """Build, for each patch and variant, every object the series has touched so far."""
    for frags in variants(base_fragments).values():
        for frag in frags:
            kconfig.read_fragment(frag)  # BadInput before any worktree or build
    revs = series_commits(tree, runner, series)  # BadInput before any worktree too
    workdir = Path(workdir).absolute()
    work = workdir / "tree"
    _worktree(tree, work, runner)
    runner.run(["git", "checkout", "-q", "--detach", revs[-1]], cwd=work)
    so_far = objects_so_far(work, runner, revs)
    cells = []
    for name, frags in variants(base_fragments).items():
        for i, rev in enumerate(revs):
            runner.run(["git", "checkout", "-q", "--detach", rev], cwd=work)
            out = workdir / f"out-{name}"
            if i == 0 or not (out / ".config").exists():
                kbuild.configure(kbuild.BuildRequest(work, out, frags, jobs, True), runner,
                                 kbuild.build_env(work, runner))
            config = kconfig.parse((out / ".config").read_text(), strict=False)
            objs = [o for o in so_far[i] if enabled(work, o, config)]
            if not objs:
                cells.append(Cell(i + 1, name, kbuild.SKIP, "nothing to build"))
                continue
            req = kbuild.BuildRequest(work, out, frags, jobs, allow_dropped=True,
                                      targets=tuple(objs))
            progress(f"patch {i + 1}/{len(revs)} [{name}]: {' '.join(objs)}")
            try:
                res = kbuild.build(req, runner, lambda m: None)
                cells.append(Cell(i + 1, name, kbuild.PASS, res.steps[-1].detail))
            except kbuild.BuildFailed as err:
                cells.append(Cell(i + 1, name, kbuild.FAIL, _fail_detail(err)))
    return cells


def warning_set(log_text):
    """Warnings keyed by file basename and message (line numbers move between commits)."""
    return {m.groups() for m in map(_WARN.match, log_text.splitlines()) if m}


def w1_new_warnings(tree, series, base_fragments, workdir, runner, progress, jobs=2):
    """W=1 warnings in the series' touched objects that the base tree does not have."""
    workdir = Path(workdir).absolute()
    work = workdir / "tree"
    if not work.exists():
        _worktree(tree, work, runner)
    revs = series_commits(tree, runner, series)
    runner.run(["git", "checkout", "-q", "--detach", revs[-1]], cwd=work)
    objs = objects_so_far(work, runner, revs)[-1]
    found = {}
    for label, rev in (("base", f"{revs[0]}~1"), ("series", revs[-1])):
        runner.run(["git", "checkout", "-q", "--detach", rev], cwd=work)
        present = [o for o in objs if (work / (o[:-2] + ".c")).exists()]
        out = workdir / "out-w1"
        shutil.rmtree(out, ignore_errors=True)
        progress(f"W=1 {label}: {' '.join(present)}")
        req = kbuild.BuildRequest(work, out, list(base_fragments), jobs, allow_dropped=True,
                                  targets=tuple(present), make_vars=("W=1",))
        try:
            kbuild.build(req, runner, lambda m: None)
        except kbuild.BuildFailed:
            pass  # W=1 may turn warnings into errors only with WERROR; the log is what counts
        found[label] = warning_set((out / "build.log").read_text(errors="replace"))
    return sorted(found["series"] - found["base"])
