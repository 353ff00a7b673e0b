"""The eBPF probe commands: probes, top, record, report."""

import json as _json
import os
import time

import click

from vnuma_sched.cli.common import (
    emit,
    json_option,
    merge_json,
    need_root,
    progress,
    settings_exit,
)
from vnuma_sched.errors import BadInput
from vnuma_sched.probes import catalog, recorder, report
from vnuma_sched.probes import recording as rec
from vnuma_sched.probes.catalog import PROBES
from vnuma_sched.probes.recording import Sampler
from vnuma_sched.probes.report import top_view
from vnuma_sched.probes.session import Session
from vnuma_sched.render import report_text, table, top_text
from vnuma_sched.runner import sigterm_as_interrupt as _sigterm_as_interrupt
from vnuma_sched.system.topology import read_topology


def _probe_session(settings, names, with_events=False):
    sysroot = settings.sysroot()
    return Session(names, sysroot, os.geteuid(), read_topology(sysroot), with_events,
                   progress(settings))


@click.command("probes")
@json_option
@click.pass_obj
def probes_cmd(settings, as_json):
    """Each probe and whether this kernel can run it, and why not.

    \b
    Example:
      sudo vnuma-sched probes
    """

    settings = merge_json(settings, as_json)
    facts = catalog.KernelFacts(settings.sysroot(), os.geteuid())
    rows = []
    for probe in catalog.PROBES.values():
        a = catalog.availability(probe, facts)
        rows.append({"probe": probe.name, "side": probe.side, "available": a.ok,
                     "reason": a.reason, "notes": a.notes, "unsupported": a.unsupported,
                     "doc": probe.doc})
    emit(settings, {"probes": rows}, table(
        [[r["probe"], r["side"], "yes" if r["available"] else "no",
          r["reason"] or "; ".join(r["notes"]) or r["doc"]] for r in rows],
        ["probe", "side", "ok", "detail"], prose=[3]))


def _split_top_args(args):
    """PROBE... [interval [count]] like bcc tools."""
    names, nums = [], []
    for a in args:
        (nums if a.replace(".", "", 1).isdigit() else names).append(a)
    if len(nums) > 2:
        raise BadInput("expected at most [interval [count]] after the probe names")
    interval = float(nums[0]) if nums else 1.0
    count = int(float(nums[1])) if len(nums) > 1 else None
    if interval <= 0 or (count is not None and count < 1):
        raise BadInput("interval must be > 0 and count >= 1")
    return names, interval, count


@click.command("top")
@click.argument("args", nargs=-1)
@click.option("-C", "per_cpu", is_flag=True, help="One row per CPU instead of per node.")
@json_option
@click.pass_obj
def top_cmd(settings, args, per_cpu, as_json):
    """Live counters per node (or CPU): [PROBE...] [interval [count]].

    \b
    Ctrl-C prints the last interval and detaches. --json prints one JSON
    object per interval. Columns: resch/csq reschedule and call-function-
    single IPIs received, noipi wake-ups without IPI, idle/idlems idle
    entries and time, rejpre idle CPUs rejected as preempted, stealms steal
    time, migin/xnodein migrations into the node (from other nodes); then
    migrations by cause and the cross-node avoidable ones (moved off a node
    that had an idle CPU the task was allowed on).
    \b
    Examples:
      sudo vnuma-sched top                 all probes, every second
      sudo vnuma-sched top migrate ipi 2 5
    """

    settings = merge_json(settings, as_json)
    names, interval, count = _split_top_args(args)
    if catalog.needs_bpf(names):
        need_root(settings, "loading BPF probes")
    session = _probe_session(settings, names).start()
    for line in catalog.unsupported_lines(session.status):
        progress(settings)(line)
    if not session.running():
        raise BadInput("no probe can run here (see 'vnuma-sched probes')")
    sampler, n = Sampler(session), 0
    with _sigterm_as_interrupt():
        try:
            while count is None or n < count:
                time.sleep(interval)
                rec = sampler.interval()
                n += 1
                click.echo(_json.dumps(rec) if settings.json else
                           top_text(top_view(rec, session.topology, per_cpu)) + "\n")
        except KeyboardInterrupt:
            rec = sampler.interval()
            click.echo(_json.dumps(rec) if settings.json else
                       top_text(top_view(rec, session.topology, per_cpu)))
        finally:
            session.close()


class _RecordCommand(click.Command):
    """Everything after the first '--' is the command to record, untouched by option
    parsing; without '--' there is no command (a stray word is not run)."""

    def parse_args(self, ctx, args):
        if "--" in args:
            cut = args.index("--")
            args, ctx.meta[_COMMAND] = args[:cut], list(args[cut + 1:])
        else:
            ctx.meta[_COMMAND] = None
        return super().parse_args(ctx, args)


_COMMAND = "vnuma_sched.record.command"


@click.command("record", cls=_RecordCommand)
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite OUTPUT if it exists.")
@click.option("--duration", type=click.FloatRange(0.1), default=10.0, show_default=True,
              help="Seconds to record when no command is given.")
@click.option("--interval", type=click.FloatRange(0.05), default=1.0, show_default=True)
@click.option("--events", "with_events", is_flag=True,
              help="Also record every migration as an event line.")
@click.argument("names", nargs=-1, metavar="[PROBE]... [-- CMD...]")
@click.pass_obj
def record_cmd(settings, output, force, duration, interval, with_events, names):
    """Record probe counters to JSON lines: [PROBE...] [-- CMD...].

    \b
    With CMD (after '--'), records exactly while CMD runs and exits with
    CMD's exit code. OUTPUT is not overwritten without --force.
    \b
    Examples:
      sudo vnuma-sched record -o run.jsonl --duration 30
      sudo vnuma-sched record -o run.jsonl migrate ipi -- ./omp-barrier
      vnuma-sched record -o steal.jsonl steal      (no root needed)
    """

    command = click.get_current_context().meta[_COMMAND]
    names = check_record_args(names, command)
    recorder.check_output(output, force)
    if catalog.needs_bpf(names):
        need_root(settings, "loading BPF probes")
    session = _probe_session(settings, names, with_events).start()
    with _sigterm_as_interrupt():
        code = recorder.record(session, settings.sysroot(), output, interval, duration,
                               command, progress(settings), force)
    settings_exit(code)


def check_record_args(names, command):
    """The probe names (each one known), after checking the command after '--'."""
    for name in names:
        if name not in PROBES:
            raise catalog.unknown_probe(name, " (a command to record goes after '--')")
    if command is not None:
        recorder.check_command(command)
    return list(names)


@click.command("report")
@click.argument("recording", type=click.Path(dir_okay=False))
@json_option
@click.pass_obj
def report_cmd(settings, recording, as_json):
    """Totals, rates, migration matrices by cause and idle histograms of a recording.

    \b
    Example:
      vnuma-sched report run.jsonl
    """

    settings = merge_json(settings, as_json)
    doc = report.summarize(*rec.read(recording))
    emit(settings, doc, report_text(doc))
