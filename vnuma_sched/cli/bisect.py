"""The bisect commands: run, step, resume, replay."""

import os
from pathlib import Path

import click

from vnuma_sched.bisect import drive, source, step
from vnuma_sched.bisect.options import ACCELS, RANGES, Options, not_an_option
from vnuma_sched.bisect.step import Env
from vnuma_sched.cli.common import (
    cache_dir,
    default_fragment,
    emit,
    json_option,
    merge_json,
    progress,
    settings_exit,
)
from vnuma_sched.errors import BadInput, VnumaError
from vnuma_sched.probes.spec import metrics_help
from vnuma_sched.render import bisect_text
from vnuma_sched.runner import Runner
from vnuma_sched.system.topology import read_topology

_D = Options.defaults()


def _int(name, **kw):
    """An integer option whose range is the one Options checks."""
    return click.option(f"--{name.replace('_', '-')}", type=click.IntRange(*RANGES[name]),
                        default=_D[name], show_default=True, **kw)

METRICS_HELP = metrics_help()


def measure_options(func):
    """What to measure and how; shared by 'run' and 'step' (same names, same meaning)."""
    opts = [
        click.option("--metric", required=True, help="The metric to bisect by (list below)."),
        _int("runs", help="Workload runs per commit."),
        _int("max_runs", help="Runs at most per commit while undecided."),
        _int("boots", help="Boots a commit's runs are spread over (at most one per "
                           "run): one boot is one sample of the boot-to-boot spread."),
        click.option("--workload", default=_D["workload"], show_default=True,
                     help="omp-barrier, perf-pipe, perf-messaging or cmd:COMMAND."),
        _int("threads"),
        click.option("--spincount", default=_D["spincount"], show_default=True,
                     help="GOMP_SPINCOUNT."),
        _int("iterations"),
        _int("kib"),
        click.option("--topology", default=_D["topology"], show_default=True,
                     help="Guest topology: NxM or a JSON file."),
        click.option("--mem", default=_D["mem"], show_default=True),
        click.option("--append", multiple=True, help="Guest kernel command line word."),
        click.option("--fragment", "fragments", multiple=True,
                     type=click.Path(exists=True, dir_okay=False),
                     help="Kconfig fragment (repeatable) [default: kconfig/vnuma-guest.config]."),
        click.option("--carry-patches", is_flag=True,
                     help="Apply this project's series before building each commit."),
        click.option("--measure-cmd", default=None,
                     help="Measure with this command instead of a guest here (image in "
                          "$VNUMA_SCHED_IMAGE; one JSON object per run on stdout)."),
        click.option("--workdir", type=click.Path(exists=True, file_okay=False), default=None,
                     help="Where --measure-cmd runs [run: the current directory; step: "
                          "the tree]."),
        click.option("--accel", type=click.Choice(ACCELS), default=_D["accel"]),
        _int("timeout", help="Seconds per workload run (plus boot)."),
        click.option("--jobs", "-j", type=click.IntRange(*RANGES["jobs"]), default=_D["jobs"],
                     show_default=True),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def _topology_arg(spec):
    """A topology file as an absolute path: each step runs with the tree as its cwd."""
    return os.path.abspath(spec) if os.path.isfile(spec) else spec


def _options(kw, threshold=None, bad_when=None):
    return Options(metric=kw["metric"], runs=kw["runs"], max_runs=kw["max_runs"],
                   boots=kw["boots"],
                   threshold=threshold,
                   bad_above=None if bad_when is None else bad_when == "above",
                   workload=kw["workload"], threads=kw["threads"], spincount=kw["spincount"],
                   iterations=kw["iterations"], kib=kw["kib"], topology=_topology_arg(kw["topology"]),
                   mem=kw["mem"], append=list(kw["append"]),
                   fragments=[os.path.abspath(f) for f in kw["fragments"]],
                   carry_patches=kw["carry_patches"], measure_cmd=kw["measure_cmd"],
                   workdir=kw["workdir"] and os.path.abspath(kw["workdir"]),
                   accel=kw["accel"], timeout=kw["timeout"], jobs=kw["jobs"]).check()


def _env(tree, settings, echo=None):
    not_an_option(str(tree), "--tree")
    say = progress(settings)
    return Env(Path(tree).resolve(), Path(cache_dir()), Runner(), say,
               [default_fragment()], echo or _echo, read_topology(settings.sysroot()))


def _echo(line):
    """git bisect run's lines, without its long 'running <argv>' echo of each step."""
    if not line.startswith("running "):
        click.echo(line, err=True)


@click.group()
def bisect():
    """Find the commit that changed a vNUMA scheduling metric.

    \b
    Each step builds the commit's guest kernel, boots it as a vNUMA guest,
    runs the workload under the metric's probe (--runs, over --boots boots)
    and compares the median with a threshold derived from the two
    endpoints. The work tree is not
    checked out (git bisect --no-checkout; builds use a private clone).
    """


@bisect.command("run", epilog=METRICS_HELP)
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False),
              help="Kernel git repository.")
@click.option("--good", required=True, help="A commit without the regression.")
@click.option("--bad", required=True, help="A later commit with it.")
@measure_options
@click.option("--threshold", type=float, default=None,
              help="Good/bad boundary [default: the middle of the gap between the endpoints' "
                   "runs, or of their medians when the runs overlap].")
@click.option("--auto-threshold", is_flag=True, help="Derive the threshold (the default).")
@click.option("--stay", is_flag=True,
              help="Leave the tree on the first bad commit instead of resetting the bisect.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Write the bisect log here [default: under $VNUMA_SCHED_CACHE/bisect/logs].")
@json_option
@click.pass_obj
def bisect_run(settings, tree, good, bad, threshold, auto_threshold, stay, log_path, as_json,
               **kw):
    """Bisect GOOD..BAD by a metric: endpoints first, then git bisect run.

    \b
    Both endpoints are measured (--runs each); the bisect starts only if
    they differ significantly (Mann-Whitney p <= 0.05; needs 4 runs or
    more). A step is good or bad when the interval of its median lies on
    one side of the threshold; otherwise up to --max-runs runs, then skip.
    \b
    Examples:
      vnuma-sched bisect run --tree ~/linux --good v6.11 --bad v6.12 \\
          --metric cross_node_migrations
      vnuma-sched bisect run --tree ~/linux --good A --bad B --metric workload_score \\
          --workload perf-messaging --runs 7 --carry-patches
    """

    settings = merge_json(settings, as_json)
    if threshold is not None and auto_threshold:
        raise BadInput("--threshold and --auto-threshold exclude each other")
    kw["workdir"] = kw["workdir"] or (os.getcwd() if kw["measure_cmd"] else None)
    opts = _options(kw, threshold)
    doc = drive.run(opts, _env(tree, settings), good, bad, stay, log_path)
    _finish(settings, doc, bisect_text)


def _finish(settings, doc, render):
    emit(settings, doc, render(doc))
    if "first_bad" not in doc:
        settings_exit(1)


class _StepCommand(click.Command):
    """git bisect run takes exit 2 for 'bad': a usage error must abort (128) instead."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as err:
            err.exit_code = 128
            raise


@bisect.command("step", cls=_StepCommand, epilog=METRICS_HELP)
@measure_options
@click.option("--threshold", type=float, required=True, help="Good/bad boundary.")
@click.option("--bad-when", type=click.Choice(["above", "below"]), default=None,
              help="Which side of the threshold is bad [default: below for workload_score, "
                   "above for the others].")
@json_option
@click.pass_obj
def bisect_step(settings, threshold, bad_when, as_json, **kw):
    """Test the commit under bisection; exit 0 good, 1 bad, 125 skip, 128 abort.

    \b
    Run in the kernel tree (BISECT_HEAD in a --no-checkout bisect, else
    HEAD). Build or boot failures and results too noisy after --max-runs are
    skips; a missing tool or bad option aborts the bisect (128).
    \b
    Example (a CI job):
      git bisect start BAD GOOD
      git bisect run vnuma-sched bisect step --metric cross_node_migrations \\
          --threshold 90 --runs 5
    """

    settings = merge_json(settings, as_json)
    step.without_git_repo_vars(os.environ)  # the tree is the current directory
    try:
        opts = _options(kw, threshold, bad_when)
        env = _env(".", settings)
        entry = step.run(opts, env, source.git_dir(env.tree, env.runner))
    except (VnumaError, KeyboardInterrupt) as err:
        click.echo(f"vnuma-sched: error: {err or 'interrupted'} (aborting the bisect)",
                   err=True)
        settings_exit(step.EXIT["abort"])
        return
    emit(settings, entry, f"{entry['commit'][:12]} {entry['verdict']}")
    settings_exit(step.EXIT[entry["verdict"]])


@bisect.command("resume")
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--stay", is_flag=True, help="Leave the tree on the first bad commit.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None)
@json_option
@click.pass_obj
def bisect_resume(settings, tree, stay, log_path, as_json):
    """Go on with an interrupted bisect of TREE (in progress, or from its saved log).

    \b
    Example:
      vnuma-sched bisect resume --tree ~/linux
    """

    settings = merge_json(settings, as_json)
    _finish(settings, drive.resume(_env(tree, settings), stay, log_path), bisect_text)


@bisect.command("replay")
@click.argument("log", type=click.Path(exists=True, dir_okay=False))
@click.option("--tree", required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--measure-cmd", default=None,
              help="Measure with this command (required when LOG's header has one, "
                   "unless --trust-log; it may differ from the header's).")
@click.option("--workload", default=None,
              help="Use this workload instead of LOG's (required for a cmd: workload, "
                   "unless --trust-log).")
@click.option("--workdir", type=click.Path(exists=True, file_okay=False), default=None,
              help="Where --measure-cmd runs [default: LOG's, else the tree].")
@click.option("--trust-log", is_flag=True,
              help="Run the commands LOG's header names as they are written.")
@click.option("--stay", is_flag=True, help="Leave the tree on the first bad commit.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), default=None,
              help="Where to write the new log.")
@json_option
@click.pass_obj
def bisect_replay(settings, log, tree, measure_cmd, workload, workdir, trust_log, stay,
                  log_path, as_json):
    """Replay LOG (written by 'bisect run'; edit it to change verdicts) and go on.

    \b
    The options come from LOG's header line; steps already in LOG are not
    measured again. A log is data: the commands its header names
    (--measure-cmd, a cmd: workload) run only when given again on the
    command line, or with --trust-log.
    \b
    Example:
      vnuma-sched bisect replay /var/cache/vnuma_sched/bisect/logs/X.log --tree ~/linux \\
          --measure-cmd "lab-measure --fast"
    """

    settings = merge_json(settings, as_json)
    given = {"measure_cmd": measure_cmd, "workload": workload,
             "workdir": workdir and os.path.abspath(workdir)}
    doc = drive.replay(_env(tree, settings), log, stay, log_path, given, trust_log)
    _finish(settings, doc, bisect_text)
