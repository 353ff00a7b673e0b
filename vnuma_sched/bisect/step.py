"""One bisect step: the commit under test -> (carried series) -> build -> image
sha256 -> runs (reused when that image was measured) -> verdict, with extra
runs while the verdict is undecided, up to a bound. Exit codes follow
'git bisect run': 0 good, 1 bad, 125 skip, 128 abort."""

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from vnuma_sched.bisect import measure, source, state
from vnuma_sched.bisect import verdict as V
from vnuma_sched.bisect.source import SkipCommit
from vnuma_sched.experiments import ab
from vnuma_sched.kernel import kbuild, vm
from vnuma_sched.render import bisect_step_line

EXIT = {V.GOOD: 0, V.BAD: 1, "skip": 125, "abort": 128}


@dataclass
class Env:
    """Where a bisect works: the user's tree, the cache, how to run and report."""
    tree: Path
    cache: Path
    runner: object
    progress: object
    fragments: list = field(default_factory=list)   # default when Options.fragments is []
    echo: object = print                             # lines of 'git bisect run'
    host: object = None        # the host Topology: '--topology host' and placed guests

    def run_log(self):
        path = self.work / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.out"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def work(self):
        return Path(self.cache) / "bisect"

    def source_dir(self, git_dir):
        return self.work / "src" / hashlib.sha256(str(git_dir).encode()).hexdigest()[:16]


# git exports these to 'git bisect run' commands (GIT_DIR in a linked worktree): left
# in place they would point every git command of the step, including those in the
# private clone, at the user's repository.
GIT_REPO_VARS = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_COMMON_DIR",
                 "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


def without_git_repo_vars(environ):
    """Drop the variables that pin git to one repository (from the process env)."""
    for name in GIT_REPO_VARS:
        environ.pop(name, None)


def commit_under_test(tree, runner):
    """BISECT_HEAD in a --no-checkout bisect, else HEAD."""
    res = runner.run(["git", "rev-parse", "-q", "--verify", "BISECT_HEAD"], cwd=tree,
                     check=False)
    return res.stdout.strip() if res.returncode == 0 else runner.output(
        ["git", "rev-parse", "HEAD"], cwd=tree)


def subject(tree, sha, runner):
    return runner.output(["git", "log", "-1", "--format=%s", sha], cwd=tree)


def backend(opts, env):
    if opts.measure_cmd:
        return measure.Command(opts.measure_cmd, env.runner, opts.timeout, opts.workdir,
                               opts.boots)
    topo = vm.parse_topology(opts.topology, vm.parse_size_mb(opts.mem), env.host)
    wl = ab.workload(opts.workload, str(env.cache), env.runner, opts.threads, opts.spincount,
                     opts.iterations, opts.kib)
    return measure.Guest(wl, topo, opts.metric, env.runner, opts.accel, opts.timeout,
                         opts.append, Path(env.cache) / "accel.json", opts.boots,
                         env.progress)


def kernel(opts, env, sha, git_dir):
    """(image, image sha256, built now?) for commit ``sha``; SkipCommit when it cannot be."""
    frags = [Path(f) for f in opts.fragments] or env.fragments
    tree_id = source.prepare(env.tree, sha, env.source_dir(git_dir), opts.carry_patches,
                             env.runner, env.progress)
    builds = env.work / "builds" / source.config_key(frags)
    kept, reused = source.build(env.source_dir(git_dir), tree_id, frags, builds, opts.jobs,
                                env.runner, env.progress)
    image = kept / "bzImage"
    return image, kbuild.sha256_file(image), not reused


def sample(opts, env, meas, sha, git_dir, n):
    """At least n values of the metric at ``sha`` (built and measured, or reused)."""
    image, image_sha, _ = kernel(opts, env, sha, git_dir)
    results = measure.Results(env.work / "results", meas)
    return measure.measure(meas, results, image, image_sha, sha, n, opts.metric,
                           env.progress)[0]


def evaluate(opts, env, meas, sha, title, git_dir):
    """The step's entry (a dict) with its verdict: good, bad or skip (and why)."""
    t0 = time.monotonic()
    entry = {"commit": sha, "subject": title}
    try:
        image, image_sha, built = kernel(opts, env, sha, git_dir)
        results = measure.Results(env.work / "results", meas)
        n = opts.runs
        while True:
            vals, reused = measure.measure(meas, results, image, image_sha, sha, n,
                                           opts.metric, env.progress)
            v = V.decide(vals, opts.threshold, opts.worse_above())
            if v.verdict != V.UNDECIDED or len(vals) >= opts.max_runs:
                break
            n = min(len(vals) + opts.runs, opts.max_runs)
            env.progress(f"undecided: median {v.median:g} in [{v.low:g}, {v.high:g}] "
                         f"straddles {opts.threshold:g}; {n - len(vals)} more run(s)")
        entry.update(v.to_dict(), values=vals, image_sha256=image_sha, built=built,
                     reused_from=reused)
        if v.verdict == V.UNDECIDED:
            entry.update(verdict="skip", reason=f"too noisy after {len(vals)} runs")
    except SkipCommit as err:
        entry.update(verdict="skip", reason=str(err))
    entry["seconds"] = round(time.monotonic() - t0, 1)
    return entry


def run(opts, env, git_dir):
    """Evaluate the commit under test, record it in the bisect's state; return the entry."""
    sha = commit_under_test(env.tree, env.runner)
    title = subject(env.tree, sha, env.runner)
    doc = state.load(git_dir)
    mine = doc if state.ours(git_dir, doc) else None
    where = (f"step {len(mine.get('steps', [])) + 1} of about {mine['estimate']}"
             if mine else "step")
    env.progress(f"{where}: {sha[:12]} {title}")
    try:
        entry = evaluate(opts, env, backend(opts, env), sha, title, git_dir)
    except Exception as err:
        if mine:
            state.add_step(git_dir, {"commit": sha, "subject": title, "verdict": "abort",
                                     "reason": str(err)})
        raise
    if mine:
        state.add_step(git_dir, entry)
    env.progress(f"{where}: {sha[:12]}: {bisect_step_line(entry, opts.metric)}")
    return entry
