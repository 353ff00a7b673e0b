"""'bisect run', 'resume' and 'replay': check the inputs, measure both endpoints
and refuse when they do not differ, then let 'git bisect run' drive
'vnuma-sched bisect step' in a --no-checkout bisect (the user's work tree is
never checked out; builds use a private clone). Whatever happens the bisect is
reset at the end, unless asked to stay, and its log is kept for replay."""

import re
import sys
import time
from dataclasses import replace
from pathlib import Path

from vnuma_sched.bisect import source, state, step
from vnuma_sched.bisect import verdict as V
from vnuma_sched.bisect.options import Options, flag, not_an_option
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.kernel import patches, vm
from vnuma_sched.kernel.ktree import tree_version
from vnuma_sched.runner import stream


class BisectFailed(VnumaError):
    pass


def _git(env, *args, check=True):
    return env.runner.run(["git", *args], cwd=env.tree, check=check)


def check_tree(env):
    """The tree's git dir, after refusing what must not be touched."""
    if _git(env, "rev-parse", "--git-dir", check=False).returncode != 0:
        raise BadInput(f"--tree {env.tree}: not a git repository")
    git_dir = source.git_dir(env.tree, env.runner)
    if _git(env, "status", "--porcelain", "--untracked-files=no").stdout.strip():
        raise BadInput(f"--tree {env.tree}: uncommitted changes; commit or stash them first")
    if state.in_progress(git_dir):
        if state.ours(git_dir, state.load(git_dir)):
            raise BadInput(f"--tree {env.tree}: a vnuma-sched bisect is already in progress; "
                           f"'vnuma-sched bisect resume --tree {env.tree}' goes on with it")
        raise BadInput(f"--tree {env.tree}: a bisect that vnuma-sched did not start is in "
                       "progress; finish it or run 'git bisect reset' first")
    return git_dir


def check_log_path(log_path):
    """A --log whose folder is missing is refused before anything runs (never created)."""
    if log_path is not None and not Path(log_path).resolve().parent.is_dir():
        raise BadInput(f"--log {log_path}: its folder does not exist")


def check_backend(opts, host=None):
    """What the guest measurement parses, checked before the tree is touched."""
    if not opts.measure_cmd:
        vm.parse_topology(opts.topology, vm.parse_size_mb(opts.mem), host)


def resolve(env, rev, label):
    not_an_option(rev, label)
    res = _git(env, "rev-parse", "-q", "--verify", f"{rev}^{{commit}}", check=False)
    if res.returncode != 0:
        raise BadInput(f"{label}: no such commit in {env.tree}")
    return res.stdout.strip()


def check_range(env, good, bad, names):
    if good == bad:
        raise BadInput(f"--good {names[0]} and --bad {names[1]} are the same commit")
    if _git(env, "merge-base", "--is-ancestor", good, bad, check=False).returncode != 0:
        raise BadInput(f"--good {names[0]} is not an ancestor of --bad {names[1]}")
    return int(_git(env, "rev-list", "--count", f"{good}..{bad}").stdout)


def start_point(env):
    res = _git(env, "symbolic-ref", "-q", "HEAD", check=False)
    return res.stdout.strip().removeprefix("refs/heads/") if res.returncode == 0 else _git(
        env, "rev-parse", "HEAD").stdout.strip()


def endpoints(opts, env, git_dir, good, bad):
    """Measure both ends (opts.runs each) and derive direction and threshold."""
    meas = step.backend(opts, env)
    vals = {}
    for name, sha in (("good", good), ("bad", bad)):
        env.progress(f"endpoint {name}: {sha[:12]} {step.subject(env.tree, sha, env.runner)}")
        try:
            vals[name] = step.sample(opts, env, meas, sha, git_dir, opts.runs)
        except source.SkipCommit as err:
            raise BisectFailed(f"the {name} endpoint {sha[:12]} cannot be tested: {err}") \
                from err
        env.progress(f"endpoint {name}: {opts.metric} = {vals[name]}")
    try:
        ep = V.endpoints(vals["good"], vals["bad"], opts.threshold, opts.bad_above)
    except V.EndpointsAlike as err:
        c = err.args[0]
        ci = "-" if not c["ci95"] else f"{c['ci95'][0]:.2f}..{c['ci95'][1]:.2f}"
        ratio = "-" if c["ratio"] is None else f"{c['ratio']:.2f}"
        raise BisectFailed(
            f"good and bad do not differ significantly in {opts.metric}: median "
            f"{c['a_median']:g} at {good[:12]}, {c['b_median']:g} at {bad[:12]} (bad/good "
            f"{ratio}, 95% CI {ci}, Mann-Whitney p={c['p']:.3g}, {opts.runs} runs each); "
            "nothing to bisect (more --runs, another metric or workload?)") from err
    except ValueError as err:
        raise BisectFailed(f"endpoints: {err}") from err
    env.progress(f"endpoints differ: {opts.metric} {ep.good_median:g} -> {ep.bad_median:g} "
                 f"(p={ep.p:.3g}); threshold {ep.threshold:g}, bad when "
                 f"{'above' if ep.bad_above else 'below'}")
    return ep, vals


def run(opts, env, good_rev, bad_rev, stay=False, log_path=None):
    opts.check()
    not_an_option(good_rev, "--good")
    not_an_option(bad_rev, "--bad")
    check_log_path(log_path)
    check_backend(opts, env.host)
    git_dir = check_tree(env)
    good = resolve(env, good_rev, f"--good {good_rev}")
    bad = resolve(env, bad_rev, f"--bad {bad_rev}")
    candidates = check_range(env, good, bad, (good_rev, bad_rev))
    if opts.carry_patches:
        patches.load_series(tree_version(env.tree).series)  # BadInput if none is carried
    doc = {"status": "measuring", "tree": str(env.tree), "start": start_point(env),
           "good": good, "bad": bad, "candidates": candidates,
           "estimate": V.estimate_steps(candidates), "steps": [],
           "options": opts.to_dict(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    ep, vals = endpoints(opts, env, git_dir, good, bad)
    opts.threshold, opts.bad_above = ep.threshold, ep.bad_above
    doc.update(options=opts.to_dict(), endpoints={**ep.to_dict(), **vals})
    _git(env, "bisect", "start", "--no-checkout", bad, good)
    doc["status"] = "bisecting"
    state.save(git_dir, doc)
    return _drive(env, git_dir, doc, stay, log_path)


def resume(env, stay=False, log_path=None):
    """Go on with the tree's interrupted vnuma-sched bisect (or replay its saved log)."""
    check_log_path(log_path)
    git_dir = source.git_dir(env.tree, env.runner)
    doc = state.load(git_dir)
    if state.ours(git_dir, doc):
        state.check(git_dir, doc)
        env.progress(f"resuming the bisect in progress ({len(doc.get('steps', []))} steps "
                     "done)")
        return _drive(env, git_dir, doc, stay, log_path)
    saved = doc and doc.get("log")
    if isinstance(saved, str) and Path(saved).is_file():
        opts = state.check(git_dir, doc)   # the tree's own state: its commands are trusted
        env.progress(f"replaying {saved}")
        return replay(env, saved, stay, log_path, given=opts.commands())
    raise BadInput(f"--tree {env.tree}: no vnuma-sched bisect to resume")


def trusted(opts, log, given=None, trust_log=False):
    """The log's options with the command line's values over them. A command the log
    would run (--measure-cmd, a cmd: workload) must come from the command line, or
    --trust-log must say that the log is trusted: a shared log is data, not code."""
    given = {k: v for k, v in (given or {}).items() if v is not None}
    opts = replace(opts, **given)
    unconfirmed = {k: v for k, v in opts.commands().items() if k not in given}
    if unconfirmed and not trust_log:
        name, value = next(iter(unconfirmed.items()))
        raise BadInput(f"{log}: its header would run {flag(name)} {value!r}; a log is "
                       f"data, not code: give {flag(name)} again (it may differ), or "
                       "--trust-log to run it as written")
    return opts.check(complete=True)


def replay(env, log, stay=False, log_path=None, given=None, trust_log=False):
    """Replay LOG into the tree and go on. Everything is checked first; once git's
    replay has started, any failure resets the bisect back to where the user was."""
    header, opts, _ = state.read_log(log)
    opts = trusted(opts, log, given, trust_log)
    check_log_path(log_path)
    check_backend(opts, env.host)
    git_dir = check_tree(env)
    good = resolve(env, header["good"], f"{log}: good commit {header['good'][:12]}")
    bad = resolve(env, header["bad"], f"{log}: bad commit {header['bad'][:12]}")
    candidates = check_range(env, good, bad, (good, bad))
    start = start_point(env)
    res = _git(env, "bisect", "replay", str(Path(log).resolve()), check=False)
    try:
        if res.returncode != 0:
            why = (res.stderr or res.stdout).strip().splitlines() or [f"exit {res.returncode}"]
            raise BadInput(f"{log}: git bisect replay failed: {why[-1]}")
        old = state.load(git_dir) or {}
        doc = {"status": "bisecting", "tree": str(env.tree), "start": start,
               "good": good, "bad": bad, "candidates": candidates,
               "estimate": V.estimate_steps(candidates), "options": opts.to_dict(),
               "endpoints": header.get("endpoints"), "replayed": str(log),
               "steps": state.steps(old) if old.get("good") == good else [],
               "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        step_argv(opts)   # the step's command line can be made from these options
        state.save(git_dir, doc)
    except BaseException:
        _git(env, "bisect", "reset", check=False)
        raise
    return _drive(env, git_dir, doc, stay, log_path)


def step_argv(opts):
    return [sys.executable, "-m", "vnuma_sched", "bisect", "step", *opts.step_args()]


def _drive(env, git_dir, doc, stay, log_path):
    opts = Options.from_dict(doc["options"])
    argv = ["git", "bisect", "run", *step_argv(opts)]
    finished, code = False, 0
    try:
        if FIRST_BAD.search(_git(env, "bisect", "log", check=False).stdout):
            env.progress("the log already names the first bad commit")
        else:  # git bisect run would test the current commit even then
            env.progress(f"git bisect run {opts.step_command()}")
            code = stream(argv, env.run_log(), env.echo, cwd=env.tree)
        finished = True
    finally:
        log = _git(env, "bisect", "log", check=False).stdout
        doc = state.load(git_dir) or doc
        saved = _save_log(env, doc, log, log_path)
        doc.update(status="done" if finished else "interrupted", log=str(saved),
                   git_log=log)
        if not finished:
            env.progress(f"interrupted; go on with: vnuma-sched bisect resume --tree "
                         f"{env.tree} (log: {saved})")
        _end(env, log, stay)
        state.save(git_dir, doc)
    return report(doc, log, code, stay, env)


def _end(env, log, stay):
    """Reset the bisect: back to the start branch, or with --stay to the first bad
    commit (no first bad commit: the bisect is left in progress for the user)."""
    found = FIRST_BAD.search(log)
    if not stay or found:
        _git(env, "bisect", "reset", check=False)
    if stay and found:
        _git(env, "checkout", "-q", "--detach", found.group(1))


def _save_log(env, doc, log, log_path):
    if log_path:   # its folder was checked before the bisect started
        path = Path(log_path)
    else:
        path = env.work / "logs" / f"{time.strftime('%Y%m%d-%H%M%S')}-{doc['bad'][:12]}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(state.log_text(doc, log))
    return path


FIRST_BAD = re.compile(r"^# first bad commit: \[([0-9a-f]{40})\]", re.M)
POSSIBLE = re.compile(r"^# possible first bad commit: \[([0-9a-f]{40})\]", re.M)


def _measured(doc, sha):
    for entry in doc.get("steps", []):
        if entry["commit"] == sha:
            return entry
    ep = doc.get("endpoints") or {}
    for name in ("good", "bad"):
        if doc.get(name) == sha and ep.get(name):
            iv = V.decide(ep[name], ep["threshold"], ep["bad_above"])
            return {"commit": sha, **iv.to_dict(), "values": ep[name]}
    return None


def report(doc, log, code, stay, env):
    """The result document: first bad commit (or candidates), steps, log."""
    out = {"tree": doc["tree"], "good": doc["good"], "bad": doc["bad"],
           "metric": doc["options"]["metric"], "threshold": doc["options"]["threshold"],
           "bad_when": "above" if doc["options"]["bad_above"] else "below",
           "endpoints": doc.get("endpoints"), "steps": doc.get("steps", []),
           "log_file": doc.get("log"), "git_log": log, "stayed": stay}
    found = FIRST_BAD.search(log)
    if found:
        sha = found.group(1)
        parent = _git(env, "rev-parse", f"{sha}^", check=False).stdout.strip()
        out["first_bad"] = {"commit": sha, "subject": step.subject(env.tree, sha, env.runner),
                            "at": _measured(doc, sha), "parent": parent,
                            "at_parent": _measured(doc, parent) if parent else None}
        return out
    out["candidates"] = POSSIBLE.findall(log)
    out["exit"] = code
    aborted = [s for s in doc.get("steps", []) if s.get("verdict") == "abort"]
    out["error"] = (aborted[-1].get("reason") if aborted else
                    "only skipped commits are left" if out["candidates"] else
                    f"git bisect run exited {code}")
    return out
