"""Kernel trees: Debian's linux-source packages turned into git repositories, and
version detection from a tree's Makefile."""

import os
import re
from dataclasses import dataclass
from pathlib import Path

from vnuma_sched.errors import BadInput, NeedsRoot
from vnuma_sched.kernel import gitargs

SUPPORTED = ("6.1", "6.12")
CACHE_ENV, CACHE_DEFAULT = "VNUMA_SCHED_CACHE", "/var/cache/vnuma_sched"
BASE_NAME, BASE_EMAIL = "vnuma_sched base", "vnuma_sched@localhost"


@dataclass(frozen=True)
class KernelVersion:
    version: int
    patchlevel: int
    sublevel: int

    @property
    def series(self):
        """The patch series this version takes ("6.12")."""
        return f"{self.version}.{self.patchlevel}"

    def __str__(self):
        return f"{self.version}.{self.patchlevel}.{self.sublevel}"


def default_cache(environ):
    """The cache of trees, builds and bisect state: $VNUMA_SCHED_CACHE in ``environ``,
    else /var/cache/vnuma_sched; always an absolute path."""
    return os.path.abspath(environ.get(CACHE_ENV) or CACHE_DEFAULT)


def tree_version(tree):
    """Kernel version from ``tree``/Makefile; BadInput if it is not a kernel tree."""
    makefile = Path(tree) / "Makefile"
    try:
        text = makefile.read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise BadInput(f"{tree}: not a kernel tree (no readable Makefile)") from err
    fields = {}
    for key in ("VERSION", "PATCHLEVEL", "SUBLEVEL"):
        m = re.search(rf"^{key}\s*=\s*(\d+)\s*$", text, re.M)
        if not m:
            raise BadInput(f"{tree}: not a kernel tree (Makefile has no {key})")
        fields[key.lower()] = int(m.group(1))
    return KernelVersion(**fields)


def check_supported(series):
    if series not in SUPPORTED:
        raise BadInput(f"unsupported kernel version {series}: supported are "
                       + ", ".join(SUPPORTED))


def source_tarball(series):
    return Path(f"/usr/src/linux-source-{series}.tar.xz")


def _is_fetched(tree, runner):
    if not (tree / ".git").is_dir() or not (tree / "Makefile").is_file():
        return False
    res = runner.run(["git", "rev-parse", "--verify", "-q", "refs/tags/vnuma-base"],
                     cwd=tree, check=False)
    return res.returncode == 0


def fetch_debian(series, dest, runner, progress, euid, tarball=None):
    """Extract Debian's linux-source-<series> under ``dest`` as a git repo; return its path.

    The base commit has a fixed author, date (the tarball's mtime) and message,
    so it gets the same hash on every machine with the same package.
    Idempotent: an already fetched tree is returned as is.
    """
    check_supported(series)
    dest = Path(dest).absolute()
    tree = dest / f"linux-source-{series}"
    if _is_fetched(tree, runner):
        progress(f"{tree}: already fetched")
        return tree
    tarball = Path(tarball).absolute() if tarball else source_tarball(series)
    if not tarball.exists():
        if euid != 0:
            raise NeedsRoot(f"installing linux-source-{series} (apt-get)")
        progress(f"installing Debian package linux-source-{series}")
        runner.run(["apt-get", "install", "-y", "-q", f"linux-source-{series}"],
                   env={"DEBIAN_FRONTEND": "noninteractive"})
    dest.mkdir(parents=True, exist_ok=True)
    if tree.exists():
        raise BadInput(f"{tree}: exists but is not a tree fetched by vnuma-sched; "
                       "remove it or choose another --dest")
    progress(f"extracting {tarball} (about 15 s)")
    partial = dest / f".linux-source-{series}.partial"
    runner.run(["rm", "-rf", str(partial)])
    partial.mkdir()
    runner.run(["tar", "-xf", str(tarball), "-C", str(partial), "--strip-components=1"])
    progress("creating the base commit (about 30 s)")
    _commit_base(partial, series, tarball, runner)
    os.rename(partial, tree)
    return tree


def _commit_base(tree, series, tarball, runner):
    version = tree_version(tree)
    date = f"@{int(tarball.stat().st_mtime)} +0000"
    env = {"GIT_AUTHOR_NAME": BASE_NAME, "GIT_AUTHOR_EMAIL": BASE_EMAIL, "GIT_AUTHOR_DATE": date,
           "GIT_COMMITTER_NAME": BASE_NAME, "GIT_COMMITTER_EMAIL": BASE_EMAIL,
           "GIT_COMMITTER_DATE": date}
    git = ["git", "-c", "init.defaultBranch=master", "-c", "core.autocrlf=false",
           "-c", "commit.gpgsign=false"]
    runner.run([*git, "init", "-q"], cwd=tree)
    # Debian's top-level .gitignore ignores "/*": force-add everything.
    runner.run([*git, "add", "-f", "-A"], cwd=tree)
    runner.run([*git, "commit", "-q", "--no-verify", "-m",
                f"Debian linux-source-{series} {version}\n\n"
                f"Base tree extracted from {tarball.name}."], cwd=tree, env=env)
    runner.run([*git, "tag", "vnuma-base"], cwd=tree)


GIT_SAFE = ("-c", "protocol.ext.allow=never", "-c", "protocol.fd.allow=never")


def fetch_git(source, ref, dest, runner, progress):
    """Clone (or update) a user's kernel tree and check out ``ref`` detached; return its path.

    ``source`` and ``ref`` are user values: refused when git could read them as
    options, and passed after ``--`` (source) or resolved to a commit id first (ref).
    """
    source = gitargs.source(source, "--git")
    ref = gitargs.ref(ref, "--ref")
    if "://" not in source and ":" not in source.split("/")[0]:
        source = gitargs.path(source)
    name = Path(source.rstrip("/")).name.removesuffix(".git") or "linux"
    tree = Path(dest).absolute() / name
    if (tree / ".git").is_dir():
        dirty = runner.output(["git", "status", "--porcelain", "--untracked-files=no"],
                              cwd=tree)
        if dirty:
            raise BadInput(f"{tree}: uncommitted changes; commit or stash them first")
        progress(f"{tree}: fetching from {source}")
        runner.run(["git", *GIT_SAFE, "fetch", "--quiet", "--tags", "--", source], cwd=tree)
    else:
        tree.parent.mkdir(parents=True, exist_ok=True)
        progress(f"cloning {source} into {tree} (a full kernel history takes a while)")
        runner.run(["git", *GIT_SAFE, "clone", "--quiet", "--", source, str(tree)])
    res = runner.run(["git", "rev-parse", "-q", "--verify", "--end-of-options",
                      f"{ref}^{{commit}}"], cwd=tree, check=False)
    if res.returncode != 0:
        raise BadInput(f"--ref {ref}: not found in {source}")
    runner.run(["git", "checkout", "-q", "--detach", res.stdout.strip()], cwd=tree)
    tree_version(tree)
    return tree
